-- How a DENY (by its reason) reaches an OpenAI-compatible client: status, error.type, error.code,
-- and whether waiting helps (retry = false: x-should-retry: false, no Retry-After).
-- A mirror of gateway_plugins/openai_errors.json, the table every tollgate plugin shares;
-- tests/gateways/test_kong_openai_errors.py keeps the two equal.
return {
  reasons = {
    rate_limited_requests = { status = 429, type = "requests", code = "rate_limit_exceeded", retry = true,
      message = "Rate limit reached for requests per minute. Retry after the time in Retry-After." },
    rate_limited_tokens = { status = 429, type = "tokens", code = "rate_limit_exceeded", retry = true,
      message = "Rate limit reached for tokens per minute. Retry after the time in Retry-After." },
    concurrency_limited = { status = 429, type = "requests", code = "concurrency_limit_exceeded", retry = true,
      message = "Too many requests in flight for this key. Retry after the time in Retry-After." },
    insufficient_balance = { status = 402, type = "insufficient_quota", code = "insufficient_quota", retry = false,
      message = "You exceeded your current quota: the prepaid balance does not cover this request. Top up to continue." },
    spend_cap = { status = 402, type = "insufficient_quota", code = "spend_cap_reached", retry = false,
      message = "The spend cap for this period is reached." },
    suspended = { status = 403, type = "invalid_request_error", code = "account_suspended", retry = false,
      message = "This account is suspended." },
    margin_guard = { status = 429, type = "insufficient_quota", code = "margin_guard_tripped", retry = false,
      message = "Stopped by a margin guard rule of this account; an operator can reset it." },
    invalid_api_key = { status = 401, type = "invalid_request_error", code = "invalid_api_key", retry = false,
      message = "Incorrect API key provided." },
  },
  default = { status = 429, type = "requests", code = "rate_limit_exceeded", retry = true,
    message = "Request refused by the rate limiter." },
}
