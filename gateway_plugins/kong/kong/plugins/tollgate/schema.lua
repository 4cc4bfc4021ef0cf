local typedefs = require "kong.db.schema.typedefs"

-- Configuration of the tollgate plugin (Kong 3.x schema format, as the bundled rate-limiting
-- plugin's). Every field has a default except default_model.
return {
  name = "tollgate",
  fields = {
    { protocols = typedefs.protocols_http },
    { config = {
        type = "record",
        fields = {
          { sidecar_url = typedefs.url {
              required = true, default = "http://127.0.0.1:8080",
              description = "Base URL of the tollgate enforcer (the sidecar): /v1/check and /v1/usage are appended.",
          } },
          { usage_url = typedefs.url {
              required = false,
              description = "Base URL the usage reports go to (/v1/usage appended), when not sidecar_url: e.g. an enforcer of its own for reports in mode redis.",
          } },
          { mode = {
              description = "`sidecar`: ask the enforcer's /v1/check. `redis`: run the enforcer's check.lua on the tollgate Redis from the gateway (in-gateway mode: no sidecar hop on the check; the usage report still goes to sidecar_url).",
              type = "string", required = true, default = "sidecar", one_of = { "sidecar", "redis" },
          } },
          { redis_host = typedefs.host {
              required = true, default = "127.0.0.1",
              description = "mode redis: the tollgate Redis (the enforcer's TOLLGATE_REDIS_URL).",
          } },
          { redis_port = typedefs.port {
              required = true, default = 6379,
          } },
          { redis_password = {
              description = "mode redis: AUTH password, if the Redis has one.",
              type = "string", required = false, referenceable = true, encrypted = true,
          } },
          { redis_database = {
              type = "integer", required = true, default = 0, between = { 0, 15 },
          } },
          { key_cache_ttl_s = {
              description = "mode redis: how long a worker keeps an API key's record and its plan's estimate. A revocation or plan change takes effect within this time (the enforcer's cache listens to invalidations; the plugin does not).",
              type = "number", required = true, default = 5, between = { 0, 3600 },
          } },
          { negative_cache_ttl_s = {
              description = "mode redis: how long an unknown API key is answered 401 without asking Redis.",
              type = "number", required = true, default = 5, between = { 0, 3600 },
          } },
          { idempotency_ttl_ms = {
              description = "mode redis: how long a request id's ALLOW is replayed (the enforcer's TOLLGATE_IDEMPOTENCY_TTL_S).",
              type = "integer", required = true, default = 60000, between = { 1000, 86400000 },
          } },
          { redis_clock_skew_ms = {
              description = "mode redis: how far Redis's clock may be ahead of the gateway's. Redis runs a check only until timeout_ms plus this after it was sent (a later run places no hold).",
              type = "integer", required = true, default = 1000, between = { 0, 60000 },
          } },
          { timeout_ms = {
              description = "Budget of the whole pre-flight check (connect, send, reply), in milliseconds. Past it the request fails open (or closed, see fault_tolerant).",
              type = "integer", required = true, default = 50, between = { 1, 60000 },
          } },
          { usage_timeout_ms = {
              description = "Budget of the usage report, sent after the response from a timer, in milliseconds.",
              type = "integer", required = true, default = 2000, between = { 1, 60000 },
          } },
          { usage_batch_size = {
              description = "Usage reports per POST /v1/usage: each nginx worker buffers them and sends one CloudEvents batch (application/cloudevents-batch+json) when this many wait or usage_flush_ms after the first. A batch the enforcer refuses (4xx) is sent again report by report; 1 sends one plain JSON report per request (with the client's trace context).",
              type = "integer", required = true, default = 50, between = { 1, 100 },
          } },
          { usage_flush_ms = {
              description = "Longest time a usage report waits for its batch to fill, in milliseconds.",
              type = "integer", required = true, default = 100, between = { 1, 60000 },
          } },
          { usage_retries = {
              description = "How often a batch (or a single report) is sent again after a connection error, a timeout or a 5xx, after 0.1, 0.2, 0.4 ... s; then it is dropped with an error log. Safe: the enforcer bills an event id once.",
              type = "integer", required = true, default = 5, between = { 0, 20 },
          } },
          { usage_max_buffered = {
              description = "Most usage reports one nginx worker keeps waiting (while the enforcer is down); past it the oldest is dropped with an error log.",
              type = "integer", required = true, default = 10000, between = { 1, 1000000 },
          } },
          { fault_tolerant = {
              description = "Let requests through when the sidecar is down, slow or answers garbage (fail open). When false such requests get a 500.",
              type = "boolean", required = true, default = true,
          } },
          { api_key_header = typedefs.header_name {
              required = true, default = "x-api-key",
              description = "Request header carrying the consumer's tollgate API key. `Authorization: Bearer <key>` is unwrapped.",
          } },
          { api_key_source = {
              description = "Where the caller's tollgate API key comes from: `header` (api_key_header) or `credential`: the key of the key-auth credential Kong authenticated (so the key-auth credential's key is the tollgate key; key-auth must run first, hide_credentials may be on), or `consumer_custom_id`: the custom_id of the consumer any Kong authentication plugin (JWT, OpenID Connect, basic-auth, key-auth...) authenticated, where the operator put its tollgate key when creating the consumer. A request without one is 401.",
              type = "string", required = true, default = "header", one_of = { "header", "credential", "consumer_custom_id" },
          } },
          { hide_client_headers = {
              description = "Do not add the RateLimit-* / X-RateLimit-* / X-Tollgate-* headers to the client's response.",
              type = "boolean", required = true, default = false,
          } },
          { error_message = {
              description = "Message of a denial whose reason the OpenAI error table (openai_errors.lua) has no row for.",
              type = "string", required = true, default = "API rate limit exceeded",
          } },
          { default_model = {
              description = "Model dimension sent when the request body names none.",
              type = "string", required = false,
          } },
          { default_max_tokens = {
              description = "Output-token estimate when the request sets no max_tokens / max_completion_tokens / max_output_tokens.",
              type = "integer", required = true, default = 1024, between = { 0, 100000000 },
          } },
          { bytes_per_token = {
              description = "Input-token estimate: request body bytes divided by this.",
              type = "number", required = true, default = 4, gt = 0,
          } },
          { max_body_bytes = {
              description = "Largest request body read for the estimate, and largest response body (or stream tail) kept to read the usage block from.",
              type = "integer", required = true, default = 1048576, between = { 1024, 67108864 },
          } },
          { bill_estimate_without_usage = {
              description = "A successful response without a usage block is reported at the estimate (else with zero tokens, which only releases the hold).",
              type = "boolean", required = true, default = false,
          } },
          { event_type = {
              description = "event_type of the usage events.",
              type = "string", required = true, default = "llm.completion",
          } },
          { request_id_prefix = {
              description = "Prefix of the request id sent as request_id / correlation_id (the rest is nginx's $request_id, never the client's).",
              type = "string", required = true, default = "kong_", match = "^[A-Za-z0-9_.%-]*$", len_max = 24,
          } },
          { keepalive_ms = {
              description = "Idle time of pooled sidecar connections; keep it below the sidecar's own keep-alive timeout. 0 closes every connection.",
              type = "integer", required = true, default = 4000, between = { 0, 3600000 },
          } },
          { keepalive_pool_size = {
              type = "integer", required = true, default = 64, between = { 1, 10000 },
          } },
          { ssl_verify = {
              description = "Verify the sidecar's TLS certificate (https sidecar_url).",
              type = "boolean", required = true, default = false,
          } },
        },
    } },
  },
}
