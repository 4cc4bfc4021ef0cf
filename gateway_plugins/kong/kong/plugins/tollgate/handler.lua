-- tollgate: pre-flight quota check and usage reporting for usage-priced LLM APIs.
--
-- access:        POST <sidecar>/v1/check with the consumer's API key, the request id, the model
--                and a token estimate (mode "redis": check.lua straight on Redis, redis_check.lua).
--                ALLOW: forward (hold id to the upstream), DENY: OpenAI's error shape
--                (openai_errors.lua). Sidecar (or Redis) down, slower than timeout_ms, or
--                answering garbage: fail open (fault_tolerant) or 500.
-- header_filter: the rate-limit headers of the check reach the client (as Kong's rate-limiting
--                plugin sets them: computed in access, set here).
-- body_filter:   keeps a bounded copy of the response body (or a stream's tail) for its usage.
-- log:           the usage report (hold id, the request id as correlation id, tokens from the
--                response's usage block) joins this worker's queue (usage_queue.lua): one POST
--                <usage_url>/v1/usage of a CloudEvents batch per usage_batch_size reports or
--                usage_flush_ms, from a timer (never delays the client). usage_batch_size = 1:
--                one plain JSON POST per request from a timer, with the client's trace context.
local core = require "kong.plugins.tollgate.core"
local http = require "kong.plugins.tollgate.http"
local redis_check = require "kong.plugins.tollgate.redis_check"
local usage_queue = require "kong.plugins.tollgate.usage_queue"

local kong = kong
local ngx = ngx
local timer_at = ngx.timer.at
local setmetatable = setmetatable
local tonumber = tonumber

local TollgateHandler = {
  -- after authentication plugins (key-auth is 1250), next to rate-limiting (910)
  PRIORITY = 905,
  VERSION = "0.1.0",
}

local UPSTREAM_HEADERS = { "X-Tollgate-Hold-Id", "X-Tollgate-Request-Id", "X-Tollgate-Degraded" }

-- parsed sidecar (and usage) URLs per plugin configuration (Kong hands the same conf table per instance)
local targets = setmetatable({}, { __mode = "k" })
local usage_targets = setmetatable({}, { __mode = "k" })

local function parsed(cache, conf, url)
  local t = cache[conf]
  if not t then
    local err
    t, err = core.parse_url(url)
    if not t then
      return nil, err
    end
    cache[conf] = t
  end
  return t
end

local function target_of(conf)
  return parsed(targets, conf, conf.sidecar_url)
end

local function usage_target_of(conf)
  return parsed(usage_targets, conf, conf.usage_url or conf.sidecar_url)
end

local function client_opts(conf, timeout_ms, trace_headers)
  return {
    timeout_ms = timeout_ms,
    keepalive_ms = conf.keepalive_ms,
    pool_size = conf.keepalive_pool_size,
    ssl_verify = conf.ssl_verify,
    trace_headers = trace_headers,  -- core.trace_headers: the client's trace context, passed on
  }
end

-- the usage queue's client options per configuration (its timer sets content_type per POST)
local batch_opts = setmetatable({}, { __mode = "k" })

local function batch_opts_of(conf)
  local opts = batch_opts[conf]
  if not opts then
    opts = client_opts(conf, conf.usage_timeout_ms)
    batch_opts[conf] = opts
  end
  return opts
end

local function read_request_body(conf)
  local length = tonumber(kong.request.get_header("Content-Length"))
  if length and length > conf.max_body_bytes then
    return nil, length
  end
  if kong.request.get_method() == "GET" or kong.request.get_method() == "HEAD" then
    return nil, length
  end
  local raw = kong.request.get_raw_body()
  if raw and #raw > conf.max_body_bytes then
    return nil, #raw
  end
  return raw, length
end

-- The decision (the sidecar's /v1/check, or in mode redis check.lua on Redis): decision and the
-- client headers, or nil and an error. In mode redis no enforcer span exists to continue the trace.
local function check(conf, api_key, request_id, dimensions, estimate, trace)
  if conf.mode == "redis" then
    return redis_check.check(conf, api_key, request_id, dimensions, estimate)
  end
  local target, err = target_of(conf)
  if not target then
    return nil, nil, err
  end
  local res
  res, err = http.request(target, "POST", "/v1/check",
                          core.check_body(api_key, request_id, dimensions, estimate),
                          client_opts(conf, conf.timeout_ms, trace))
  if not res then
    return nil, nil, err
  end
  local decision
  decision, err = core.parse_check(res.status, res.body, res.headers)
  return decision, decision and core.client_headers(res.headers), err
end

-- The caller's tollgate API key: from a request header, or (api_key_source = "credential") the
-- key of the credential Kong's key-auth authenticated, which then *is* the tollgate key: it works
-- with key-auth's hide_credentials and whatever key_names it reads; or (api_key_source =
-- "consumer_custom_id") the custom_id of the consumer any Kong auth plugin authenticated (JWT,
-- OIDC, basic-auth...): operators put the caller's tollgate key there when they create it.
local function caller_key(conf)
  local source = conf.api_key_source
  if source == "credential" or source == "consumer_custom_id" then
    local key
    if source == "credential" then
      local credential = kong.client.get_credential()
      key = type(credential) == "table" and credential.key
    else
      local consumer = kong.client.get_consumer()
      key = type(consumer) == "table" and consumer.custom_id
    end
    if type(key) == "string" and key ~= "" then
      return key
    end
    return nil
  end
  return core.extract_api_key(kong.request.get_header(conf.api_key_header))
end

function TollgateHandler:access(conf)
  local ctx = kong.ctx.plugin
  for _, name in ipairs(UPSTREAM_HEADERS) do
    kong.service.request.clear_header(name)  -- never trust a client's copy
  end

  local api_key = caller_key(conf)
  if not api_key then
    return kong.response.exit(401, core.missing_key_body())
  end

  local raw, length = read_request_body(conf)
  local dimensions, estimate = core.estimate(raw, length, conf)
  local request_id = conf.request_id_prefix .. ngx.var.request_id

  local trace = core.trace_headers(kong.request.get_header("traceparent"), kong.request.get_header("tracestate"))
  local decision, headers, err = check(conf, api_key, request_id, dimensions, estimate, trace)
  local report = {
    api_key = api_key, request_id = request_id, dimensions = dimensions, estimate = estimate, trace = trace,
  }
  kong.service.request.set_header("X-Tollgate-Request-Id", request_id)

  if not decision then
    if not conf.fault_tolerant then
      kong.log.err("tollgate check failed (", conf.mode, "), denying (fault_tolerant is off): ", err)
      return kong.response.exit(500, { message = "An unexpected error occurred" })
    end
    kong.log.warn("tollgate check failed (", conf.mode, "), letting the request through: ", err)
    report.fail_open = true
    ctx.report = report
    ctx.headers = { ["X-Tollgate-Degraded"] = "fail-open" }
    kong.service.request.set_header("X-Tollgate-Degraded", "fail-open")
    return
  end

  if not decision.allow then
    if conf.hide_client_headers then
      headers = {}
    end
    local status, body, hint = core.deny(decision, conf)
    for k, v in pairs(hint) do
      headers[k] = v
    end
    return kong.response.exit(status, body, headers)
  end

  report.hold_id = decision.hold_id
  report.fail_open = decision.reason == "fail_open" or nil
  ctx.report = report
  if not conf.hide_client_headers then
    ctx.headers = headers
  end
  if decision.hold_id then
    kong.service.request.set_header("X-Tollgate-Hold-Id", decision.hold_id)
  end
  if report.fail_open then
    kong.service.request.set_header("X-Tollgate-Degraded", "fail-open")
  end
end

function TollgateHandler:header_filter(conf)
  local ctx = kong.ctx.plugin
  if ctx.headers then
    kong.response.set_headers(ctx.headers)
  end
  if ctx.report then
    local ct = kong.response.get_header("Content-Type")
    ctx.report.stream = ct ~= nil and ct:lower():find("text/event-stream", 1, true) ~= nil
    ctx.capture = { stream = ctx.report.stream }
  end
end

function TollgateHandler:body_filter(conf)
  local capture = kong.ctx.plugin.capture
  if capture then
    core.capture(capture, ngx.arg[1], conf.max_body_bytes)
  end
end

-- One plain report (usage_batch_size = 1), retried as a batch is (usage_queue.post); a timer run
-- early because the worker exits (premature) still sends it, without pauses.
local function send_usage(premature, target, opts, body, request_id, retries)
  local res, err = usage_queue.post(target, opts, retries, body, "report of " .. request_id)
  if not res then
    ngx.log(ngx.ERR, "[tollgate] usage report of ", request_id, " dropped (", err, ")")
  elseif res.status ~= 202 and res.status ~= 200 then
    ngx.log(ngx.ERR, "[tollgate] usage report of ", request_id, " refused: HTTP ", res.status, " ", res.body)
  end
end

function TollgateHandler:log(conf)
  local ctx = kong.ctx.plugin
  local report = ctx.report
  if not report then
    return
  end
  local target, err = usage_target_of(conf)
  if not target then
    kong.log.err("tollgate usage report: ", err)
    return
  end
  local usage = ctx.capture and core.parse_usage(core.captured(ctx.capture), report.stream)
  local timestamp = core.iso8601(ngx.utctime())
  local body = core.usage_body(report, kong.response.get_status(), usage, timestamp, conf)
  if (conf.usage_batch_size or 1) > 1 then
    usage_queue.add(conf, target, batch_opts_of(conf), {
      body = body, id = core.event_id(report.request_id), type = conf.event_type, time = timestamp,
      request_id = report.request_id, trace = report.trace,
    })
    return
  end
  local ok
  ok, err = timer_at(0, send_usage, target, client_opts(conf, conf.usage_timeout_ms, report.trace), body,
                     report.request_id, conf.usage_retries or 0)
  if not ok then
    kong.log.err("tollgate usage report of ", report.request_id, " not scheduled: ", err)
  end
end

return TollgateHandler
