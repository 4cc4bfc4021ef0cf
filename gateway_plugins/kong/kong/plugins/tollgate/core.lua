-- Pure parts of the tollgate plugin: no ngx, no kong, so busted can test them under plain LuaJIT.
--
-- The HTTP contract these functions speak is the enforcer's (/v1/check, /v1/usage) as written in
-- the project's DESIGN.md.
local cjson = require "cjson.safe"
local openai_errors = require "kong.plugins.tollgate.openai_errors"

local type = type
local setmetatable = setmetatable
local tonumber = tonumber
local tostring = tostring
local floor = math.floor
local ceil = math.ceil
local huge = math.huge
local concat = table.concat

local _M = {}

-- Largest token count the plugin ever sends: cjson prints bigger numbers in exponent notation,
-- which the enforcer would refuse as non-integer.
_M.MAX_TOKENS = 100000000

-- Headers of the /v1/check reply that reach the client (and their Kong-style siblings below).
_M.RATE_LIMIT_HEADERS = {
  "X-RateLimit-Limit",
  "X-RateLimit-Remaining",
  "X-RateLimit-Reset",
  "RateLimit-Policy",
  "RateLimit",
  "x-ratelimit-limit-requests",
  "x-ratelimit-remaining-requests",
  "x-ratelimit-reset-requests",
  "x-ratelimit-limit-tokens",
  "x-ratelimit-remaining-tokens",
  "x-ratelimit-reset-tokens",
  "X-Tollgate-Reason",
  "X-Tollgate-Degraded",
}

local function positive_int(v)
  if type(v) ~= "number" or v ~= v or v < 0 or v == huge then
    return nil
  end
  v = floor(v)
  if v > _M.MAX_TOKENS then
    v = _M.MAX_TOKENS
  end
  return v
end
_M.positive_int = positive_int

local function non_negative(v)
  v = tonumber(v)
  if not v or v ~= v or v < 0 or v == huge then
    return nil
  end
  return floor(v)
end

--- The API key from a header value. `Authorization: Bearer <key>` is unwrapped; a repeated header
-- counts by its first value; blank means absent.
function _M.extract_api_key(value)
  if type(value) == "table" then
    value = value[1]
  end
  if type(value) ~= "string" then
    return nil
  end
  value = value:match("^%s*(.-)%s*$")
  local bearer = value:match("^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)$")
  if bearer then
    value = bearer
  end
  if value == "" then
    return nil
  end
  return value
end

--- Splits the sidecar URL once per config: scheme, host, port, base path (no trailing slash).
function _M.parse_url(url)
  if type(url) ~= "string" then
    return nil, "sidecar_url must be a string"
  end
  local scheme, rest = url:match("^(https?)://(.+)$")
  if not scheme then
    return nil, "sidecar_url must start with http:// or https://"
  end
  local authority, path = rest:match("^([^/]+)(.*)$")
  if not authority then
    return nil, "sidecar_url has no host"
  end
  local host, port
  if authority:sub(1, 1) == "[" then
    host, port = authority:match("^%[([^%]]+)%]:?(%d*)$")
  else
    host, port = authority:match("^([^:]+):?(%d*)$")
  end
  if not host or host == "" then
    return nil, "sidecar_url has no host"
  end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  if port < 1 or port > 65535 then
    return nil, "sidecar_url port out of range"
  end
  path = path:gsub("[?#].*$", ""):gsub("/+$", "")
  return { scheme = scheme, host = host, port = port, base_path = path, authority = authority }
end

--- Model and token estimate of a request. `raw_body` may be nil (not read, or too large), then
-- `body_length` (Content-Length) sizes the input. Input tokens are bytes / bytes_per_token,
-- rounded up: deliberately coarse and on the high side (the hold is trued up at settlement).
-- Output tokens are the request's own cap (`max_tokens`, `max_completion_tokens`,
-- `max_output_tokens`, Gemini's `generationConfig.maxOutputTokens`), else conf.default_max_tokens.
function _M.estimate(raw_body, body_length, conf)
  local model, max_out
  if type(raw_body) == "string" and raw_body ~= "" then
    local doc = cjson.decode(raw_body)
    if type(doc) == "table" then
      if type(doc.model) == "string" and doc.model ~= "" then
        model = doc.model
      end
      max_out = positive_int(doc.max_tokens) or positive_int(doc.max_completion_tokens)
        or positive_int(doc.max_output_tokens)
      if not max_out and type(doc.generationConfig) == "table" then
        max_out = positive_int(doc.generationConfig.maxOutputTokens)
      end
    end
    body_length = #raw_body
  end
  body_length = non_negative(body_length) or 0
  local per = tonumber(conf.bytes_per_token) or 4
  if per <= 0 then
    per = 4
  end
  local input = positive_int(ceil(body_length / per)) or 0
  if not max_out then
    max_out = positive_int(conf.default_max_tokens) or 0
  end
  local dimensions = {}
  model = model or conf.default_model
  if type(model) == "string" and model ~= "" then
    dimensions.model = model
  end
  return dimensions, { requests = 1, input_tokens = input, output_tokens = max_out }
end

-- (lua-cjson encodes an empty table as {}, which is what an empty `dimensions` must be.)
function _M.check_body(api_key, request_id, dimensions, estimate)
  return cjson.encode({
    api_key = api_key,
    request_id = request_id,
    dimensions = dimensions,
    estimate = estimate,
  })
end

-- The client's W3C Trace Context, as header lines for the enforcer's /v1/check and /v1/usage (so
-- the enforcer's spans join the gateway's trace: docs/ARCHITECTURE.md, "Tracing"); "" when the
-- client sent none or a traceparent of the wrong shape. Never a CR or LF copied into the request.
function _M.trace_headers(traceparent, tracestate)
  if type(traceparent) ~= "string" or #traceparent ~= 55
     or not traceparent:find("^%x%x%-%x+%-%x+%-%x%x$") then
    return ""
  end
  local lines = "traceparent: " .. traceparent .. "\r\n"
  if type(tracestate) == "string" and #tracestate <= 512 and not tracestate:find("%c") then
    lines = lines .. "tracestate: " .. tracestate .. "\r\n"
  end
  return lines
end

local function header(headers, name)
  if not headers then
    return nil
  end
  local v = headers[name:lower()]
  if type(v) == "table" then
    v = v[1]
  end
  return v
end
_M.header = header

--- Retry-After in whole seconds from the reply: the header first, else retry_after_ms rounded up.
-- nil when the enforcer says waiting does not help (or says nothing).
function _M.retry_after(headers, doc)
  local v = tonumber(header(headers, "retry-after"))
  if v and v >= 0 and v == v and v ~= huge then
    v = ceil(v)
    return v < 1 and 1 or v
  end
  if type(doc) == "table" then
    local ms = tonumber(doc.retry_after_ms)
    if ms and ms > 0 and ms ~= huge then
      return ceil(ms / 1000)
    end
  end
  return nil
end

--- The decision from a /v1/check reply: {allow = true, hold_id, reason, doc} or
-- {allow = false, status, reason, retry_after, doc}; nil and an error for anything the contract
-- does not promise (5xx, an ALLOW without a JSON body, unknown statuses): the caller fails open
-- or closed by its configuration. 4xx are decisions: the client or its key is at fault, failing
-- open there would let any malformed key through.
function _M.parse_check(status, body, headers)
  local doc = type(body) == "string" and cjson.decode(body) or nil
  if type(doc) ~= "table" then
    doc = nil
  end
  if status == 200 then
    if not doc or doc.decision ~= "ALLOW" then
      return nil, "invalid ALLOW reply from the sidecar"
    end
    local hold_id = doc.hold_id
    if hold_id == cjson.null then
      hold_id = nil  -- the enforcer's own fail-open ALLOW places no hold
    end
    if hold_id ~= nil and type(hold_id) ~= "string" then
      return nil, "invalid hold_id in the sidecar reply"
    end
    return { allow = true, hold_id = hold_id ~= "" and hold_id or nil,
             reason = type(doc.reason) == "string" and doc.reason or "ok", doc = doc }
  end
  if status == 429 then
    return { allow = false, status = 429,
             reason = doc and type(doc.reason) == "string" and doc.reason or "rate_limited",
             retry_after = _M.retry_after(headers, doc), level = doc and doc.level, doc = doc }
  end
  if status == 401 or status == 403 then
    return { allow = false, status = status,
             reason = doc and type(doc.reason) == "string" and doc.reason or "invalid_api_key", doc = doc }
  end
  if status == 400 or status == 413 or status == 415 or status == 422 then
    return { allow = false, status = 400,
             reason = doc and type(doc.reason) == "string" and doc.reason or "bad_request", doc = doc }
  end
  return nil, "unexpected sidecar status " .. tostring(status)
end

--- A denial as an OpenAI-compatible client expects it (gateway_plugins/openai_errors.json):
-- status (402 money, 403 suspended, 401 bad key, 429 the rest), the body
-- {"error": {"message", "type", "param", "code", "tollgate_reason", "tollgate_level"}}, and the
-- retry hint: `x-should-retry: false` where waiting cannot cure it, else Retry-After when known.
-- Returns status, body, headers (to merge into the client's headers).
function _M.deny(decision, conf)
  local row
  if decision.status == 400 then
    row = { status = 400, type = "invalid_request_error", code = decision.reason, retry = false,
            message = "The request was refused by the rate limiter as malformed." }
  elseif decision.status == 401 then
    row = openai_errors.reasons.invalid_api_key
  else
    row = openai_errors.reasons[decision.reason]
    if not row then
      row = setmetatable({ message = conf and conf.error_message or openai_errors.default.message },
                         { __index = openai_errors.default })
    end
  end
  local err = { message = row.message, type = row.type, param = cjson.null, code = row.code,
                tollgate_reason = decision.reason }
  if type(decision.level) == "string" and decision.level ~= "" then
    err.tollgate_level = decision.level
  end
  local headers = {}
  if not row.retry then
    headers["x-should-retry"] = "false"
  elseif decision.retry_after then
    headers["Retry-After"] = decision.retry_after
  end
  return row.status, { error = err }, headers
end

--- The 401 of a request without credentials, in the same shape.
function _M.missing_key_body()
  return { error = { message = "No API key found in request", type = "invalid_request_error",
                     param = cjson.null, code = "missing_api_key", tollgate_reason = "missing_api_key" } }
end

--- Milliseconds as Go's time.Duration prints them, OpenAI's reset format (enforcer/rate_headers.py
-- go_duration): 0s, 20ms, 1.5s, 6m0s, 1h0m0s.
function _M.go_duration(ms)
  if ms <= 0 then
    return "0s"
  elseif ms < 1000 then
    return string.format("%dms", ms)
  end
  local s, frac = floor(ms / 1000), ms % 1000
  local sec = string.format("%d", s % 60)
  if frac ~= 0 then
    sec = (string.format("%d.%03d", s % 60, frac):gsub("0+$", ""))
  end
  if s < 60 then
    return sec .. "s"
  end
  local m = floor(s / 60)
  if m < 60 then
    return string.format("%dm%ss", m, sec)
  end
  return string.format("%dh%dm%ss", floor(m / 60), m % 60, sec)
end

--- The rate-limit headers the enforcer sends (enforcer/rate_headers.py), from check.lua's reply:
-- X-RateLimit-* for requests, OpenAI's x-ratelimit-*-{requests,tokens}, the IETF draft's
-- RateLimit-Policy / RateLimit (the tokens policy with qu="tokens"), plus the
-- RateLimit-Limit/-Remaining/-Reset trio of Kong's rate-limiting plugin.
function _M.rate_headers(rpm, rem_r, reset_ms, tpm, rem_t)
  local reset_r = ceil(reset_ms / 1000)
  local reset_t_ms = 0
  if tpm > 0 and rem_t < tpm then
    reset_t_ms = ceil((tpm - rem_t) * 60000 / tpm)
  end
  local reset_t = ceil(reset_t_ms / 1000)
  return {
    ["X-RateLimit-Limit"] = rpm, ["X-RateLimit-Remaining"] = rem_r, ["X-RateLimit-Reset"] = reset_r,
    ["RateLimit-Limit"] = rpm, ["RateLimit-Remaining"] = rem_r, ["RateLimit-Reset"] = reset_r,
    ["x-ratelimit-limit-requests"] = rpm, ["x-ratelimit-remaining-requests"] = rem_r,
    ["x-ratelimit-reset-requests"] = _M.go_duration(reset_ms),
    ["x-ratelimit-limit-tokens"] = tpm, ["x-ratelimit-remaining-tokens"] = rem_t,
    ["x-ratelimit-reset-tokens"] = _M.go_duration(reset_t_ms),
    ["RateLimit-Policy"] = string.format('"requests";q=%d;w=60, "tokens";q=%d;qu="tokens";w=60', rpm, tpm),
    ["RateLimit"] = string.format('"requests";r=%d;t=%d, "tokens";r=%d;t=%d', rem_r, reset_r, rem_t, reset_t),
  }
end

--- Headers for the client from the /v1/check reply: the enforcer's own rate-limit headers, plus
-- the RateLimit-Limit/-Remaining/-Reset trio Kong's rate-limiting plugin sets.
function _M.client_headers(headers)
  local out = {}
  for _, name in ipairs(_M.RATE_LIMIT_HEADERS) do
    local v = header(headers, name)
    if v ~= nil and v ~= "" then
      out[name] = v
    end
  end
  for _, suffix in ipairs({ "Limit", "Remaining", "Reset" }) do
    local v = out["X-RateLimit-" .. suffix]
    if v and not header(headers, "ratelimit-" .. suffix) then
      out["RateLimit-" .. suffix] = v
    elseif header(headers, "ratelimit-" .. suffix) then
      out["RateLimit-" .. suffix] = header(headers, "ratelimit-" .. suffix)
    end
  end
  return out
end

-- ---------------------------------------------------------------------------------------------
-- In-gateway mode (redis_check.lua): the hold estimate and the billing period

--- Hold size in micros, as tollgate.plans.Plan.estimate_micros: the sum of quantity x unit price
-- (prices in picounits from the plan's estimate hash), rounded up once. Exact in Lua numbers:
-- each price is split into whole micros and the picounit remainder (< 1e6), so no product or
-- sum passes 2^53 for quantities up to core.MAX_TOKENS.
function _M.estimate_micros(prices, model, estimate)
  local whole, frac = 0, 0
  for _, metric in ipairs({ "requests", "input_tokens", "output_tokens" }) do
    local q = estimate[metric] or 0
    if q > 0 then
      local p = model and prices[metric .. "@" .. model] or prices[metric]
      p = tonumber(p) or 0
      local micros = floor(p / 1000000)
      whole = whole + q * micros
      frac = frac + q * (p - micros * 1000000)
    end
  end
  return whole + ceil(frac / 1000000)
end

--- The billing period id ("202611") of epoch seconds t for a plan anchored on anchor_day, as
-- tollgate.periods.period_of.
function _M.period_of(t, anchor_day)
  local d = os.date("!*t", t)
  local y, m = d.year, d.month
  if d.day < anchor_day then
    if m > 1 then m = m - 1 else y, m = y - 1, 12 end
  end
  return string.format("%04d%02d", y, m)
end

-- ---------------------------------------------------------------------------------------------
-- Usage from the upstream response

-- Merges one provider `usage` object into acc (fields present later win: streams send running
-- totals). OpenAI counts cached prompt tokens inside prompt_tokens; tollgate measures them apart
-- (as Anthropic does), so input_tokens is prompt_tokens - cached_tokens.
local function merge_usage(acc, u)
  if type(u) ~= "table" then
    return false
  end
  local found = false
  local function set(metric, v)
    v = non_negative(v)
    if v then
      acc[metric] = v
      found = true
    end
  end
  -- OpenAI chat/completions
  if u.prompt_tokens ~= nil or u.completion_tokens ~= nil then
    local cached = type(u.prompt_tokens_details) == "table" and non_negative(u.prompt_tokens_details.cached_tokens) or 0
    local prompt = non_negative(u.prompt_tokens)
    if prompt then
      set("input_tokens", prompt - cached >= 0 and prompt - cached or 0)
      if cached > 0 then
        set("cache_read_tokens", cached)
      end
    end
    set("output_tokens", u.completion_tokens)
    return found
  end
  -- Anthropic messages, OpenAI responses
  local cached = type(u.input_tokens_details) == "table" and non_negative(u.input_tokens_details.cached_tokens) or nil
  if u.input_tokens ~= nil then
    local input = non_negative(u.input_tokens)
    if input and cached then
      input = input - cached >= 0 and input - cached or 0
    end
    set("input_tokens", input)
  end
  set("output_tokens", u.output_tokens)
  if cached and cached > 0 then
    set("cache_read_tokens", cached)
  end
  if u.cache_read_input_tokens ~= nil then
    set("cache_read_tokens", u.cache_read_input_tokens)
  end
  if u.cache_creation_input_tokens ~= nil then
    set("cache_write_tokens", u.cache_creation_input_tokens)
  end
  return found
end

local function usage_of(doc, acc)
  if type(doc) ~= "table" then
    return false
  end
  local found = merge_usage(acc, doc.usage)
  -- Anthropic stream: message_start carries message.usage; OpenAI responses stream:
  -- response.completed carries response.usage; Gemini: usageMetadata
  if type(doc.message) == "table" and merge_usage(acc, doc.message.usage) then
    found = true
  end
  if type(doc.response) == "table" and merge_usage(acc, doc.response.usage) then
    found = true
  end
  local g = doc.usageMetadata
  if type(g) == "table" then
    local cached = non_negative(g.cachedContentTokenCount) or 0
    local prompt = non_negative(g.promptTokenCount)
    if prompt then
      acc.input_tokens = prompt - cached >= 0 and prompt - cached or 0
      found = true
    end
    if cached > 0 then
      acc.cache_read_tokens = cached
    end
    local out = non_negative(g.candidatesTokenCount)
    if out then
      acc.output_tokens = out
      found = true
    end
  end
  return found
end

local METRIC_ORDER = { "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens" }

--- Token counts of an upstream response body: a JSON document, or a server-sent-event stream
-- (`data: {...}` lines; the tail of a long stream is enough, partial lines are skipped).
-- Returns a table metric -> count, or nil when the body has no usage block.
function _M.parse_usage(body, is_stream)
  if type(body) ~= "string" or body == "" then
    return nil
  end
  local acc, found = {}, false
  if not is_stream then
    found = usage_of(cjson.decode(body), acc)
    if not found and body:find("^%s*data:") == nil then
      return nil
    end
  end
  if not found then
    for line in body:gmatch("[^\r\n]+") do
      local data = line:match("^data:%s*(.-)%s*$")
      if data and data:sub(1, 1) == "{" and usage_of(cjson.decode(data), acc) then
        found = true
      end
    end
  end
  if not found then
    return nil
  end
  return acc
end

--- The measurements list of /v1/usage, in a stable order.
function _M.measurements(usage)
  local out = {}
  for _, metric in ipairs(METRIC_ORDER) do
    if usage[metric] then
      out[#out + 1] = { metric = metric, value = usage[metric] }
    end
  end
  return out
end

--- "2026-11-21 10:00:00" (ngx.utctime) -> "2026-11-21T10:00:00Z"
function _M.iso8601(utctime)
  return (utctime:gsub(" ", "T", 1)) .. "Z"
end

--- The usage event id of a request (the enforcer and the rater bill an id once).
function _M.event_id(request_id)
  return "evt_" .. request_id
end

--- The /v1/usage body. `r`: api_key, request_id, hold_id, dimensions, estimate, fail_open;
-- `status`: the response status; `usage`: parse_usage's result or nil; `timestamp` ISO 8601.
-- Without a usage block, a successful response is billed at the estimate when
-- conf.bill_estimate_without_usage, and a failed one reports zero tokens (the hold is released).
function _M.usage_body(r, status, usage, timestamp, conf)
  local source = "response"
  if not usage then
    if status and status >= 200 and status < 300 and conf.bill_estimate_without_usage then
      usage = { input_tokens = r.estimate.input_tokens, output_tokens = r.estimate.output_tokens }
      source = "estimate"
    else
      usage = { input_tokens = 0, output_tokens = 0 }
      source = "none"
    end
  end
  local properties = {
    request_type = r.stream and "stream" or "standard",
    status = tostring(status or 0),
    usage_source = source,
    gateway = "kong",
  }
  if r.dimensions and r.dimensions.model then
    properties.model = r.dimensions.model
  end
  if r.fail_open then
    properties.fail_open = "true"
  end
  return cjson.encode({
    event_id = _M.event_id(r.request_id),
    api_key = r.api_key,
    correlation_id = r.request_id,
    hold_id = r.hold_id,
    event_type = conf.event_type or "llm.completion",
    timestamp = timestamp,
    properties = properties,
    measurements = _M.measurements(usage),
  })
end

--- Bounded body capture for the log phase. JSON bodies beyond `max` are dropped (a truncated
-- document cannot be parsed); streams keep their tail, where the final usage event is.
function _M.capture(state, chunk, max)
  if not chunk or chunk == "" or state.dropped then
    return
  end
  local buf = state.buf
  if not buf then
    buf = { n = 0, size = 0 }
    state.buf = buf
  end
  buf.n = buf.n + 1
  buf[buf.n] = chunk
  buf.size = buf.size + #chunk
  while buf.size > max do
    if not state.stream or buf.n <= 1 then
      state.dropped = true
      state.buf = nil
      return
    end
    local first = table.remove(buf, 1)
    buf.n = buf.n - 1
    buf.size = buf.size - #first
  end
end

function _M.captured(state)
  local buf = state.buf
  if not buf or buf.n == 0 then
    return nil
  end
  return concat(buf, "", 1, buf.n)
end

return _M
