-- Unit tests of the tollgate Kong plugin's pure parts (kong.plugins.tollgate.core).
-- Run: busted --lua=luajit --lpath='gateway_plugins/kong/?.lua;tests/gateways/kong_shim/?.lua' tests/gateways/busted
local cjson = require "cjson.safe"
local core = require "kong.plugins.tollgate.core"

describe("runtime", function()
  it("is LuaJIT, as inside nginx", function()
    assert.is_table(jit, "busted must run with --lua=luajit")
  end)
end)

local conf = { bytes_per_token = 4, default_max_tokens = 1024, event_type = "llm.completion" }

describe("extract_api_key", function()
  it("takes a plain header value, trimmed", function()
    assert.equal("tg_live_abc", core.extract_api_key("  tg_live_abc "))
  end)
  it("unwraps Authorization: Bearer, any case", function()
    assert.equal("tg_live_abc", core.extract_api_key("Bearer tg_live_abc"))
    assert.equal("tg_live_abc", core.extract_api_key("bearer   tg_live_abc"))
  end)
  it("uses the first of repeated headers", function()
    assert.equal("a", core.extract_api_key({ "a", "b" }))
  end)
  it("treats blank or missing as absent", function()
    assert.is_nil(core.extract_api_key(nil))
    assert.is_nil(core.extract_api_key("   "))
    assert.is_nil(core.extract_api_key({}))
  end)
end)

describe("parse_url", function()
  it("splits host, port and base path", function()
    local t = assert(core.parse_url("http://127.0.0.1:8080/tollgate/"))
    assert.same({ scheme = "http", host = "127.0.0.1", port = 8080, base_path = "/tollgate",
                  authority = "127.0.0.1:8080" }, t)
  end)
  it("defaults the port by scheme", function()
    assert.equal(80, core.parse_url("http://enforcer").port)
    assert.equal(443, core.parse_url("https://enforcer.internal").port)
  end)
  it("takes IPv6 literals", function()
    local t = assert(core.parse_url("http://[::1]:9000"))
    assert.equal("::1", t.host)
    assert.equal(9000, t.port)
  end)
  it("refuses what it cannot use", function()
    assert.is_nil(core.parse_url("ftp://x"))
    assert.is_nil(core.parse_url("http://"))
    assert.is_nil(core.parse_url("http://h:70000"))
    assert.is_nil(core.parse_url(nil))
  end)
end)

describe("estimate", function()
  it("reads model and max_tokens from an OpenAI body; input is bytes / 4 rounded up", function()
    local body = cjson.encode({ model = "gpt-4o", max_tokens = 300, messages = { { role = "user", content = "hi" } } })
    local dims, est = core.estimate(body, nil, conf)
    assert.same({ model = "gpt-4o" }, dims)
    assert.same({ requests = 1, input_tokens = math.ceil(#body / 4), output_tokens = 300 }, est)
  end)
  it("knows the other output caps", function()
    local _, est = core.estimate('{"max_completion_tokens": 77}', nil, conf)
    assert.equal(77, est.output_tokens)
    _, est = core.estimate('{"max_output_tokens": 55}', nil, conf)
    assert.equal(55, est.output_tokens)
    _, est = core.estimate('{"generationConfig": {"maxOutputTokens": 33}}', nil, conf)
    assert.equal(33, est.output_tokens)
  end)
  it("falls back to the defaults for a body it cannot read", function()
    local dims, est = core.estimate(nil, 4001, { bytes_per_token = 4, default_max_tokens = 1024, default_model = "m1" })
    assert.same({ model = "m1" }, dims)
    assert.same({ requests = 1, input_tokens = 1001, output_tokens = 1024 }, est)
    dims, est = core.estimate("not json", nil, conf)
    assert.same({}, dims)
    assert.equal(2, est.input_tokens)
    assert.equal(1024, est.output_tokens)
  end)
  it("ignores nonsense caps and clamps huge ones to integers cjson prints as integers", function()
    local _, est = core.estimate('{"max_tokens": -5}', nil, conf)
    assert.equal(1024, est.output_tokens)
    _, est = core.estimate('{"max_tokens": "12"}', nil, conf)
    assert.equal(1024, est.output_tokens)
    _, est = core.estimate('{"max_tokens": 1e30}', nil, conf)
    assert.equal(core.MAX_TOKENS, est.output_tokens)
    assert.matches('"output_tokens":100000000[,}]', core.check_body("k", "r", {}, est))
  end)
end)

describe("check_body", function()
  it("follows the /v1/check contract, empty dimensions as an object", function()
    local doc = cjson.decode(core.check_body("tg_k", "kong_1", {}, { requests = 1, input_tokens = 2, output_tokens = 3 }))
    assert.same({ api_key = "tg_k", request_id = "kong_1", dimensions = {},
                  estimate = { requests = 1, input_tokens = 2, output_tokens = 3 } }, doc)
    assert.matches('"dimensions":{}', core.check_body("k", "r", {}, {}))
  end)
end)

describe("parse_check", function()
  local allow = cjson.encode({ decision = "ALLOW", reason = "ok", hold_id = "h_1", retry_after_ms = 0,
                               remaining = { requests = 9 } })
  it("ALLOW on 200 with a JSON decision", function()
    local d = assert(core.parse_check(200, allow, {}))
    assert.is_true(d.allow)
    assert.equal("h_1", d.hold_id)
  end)
  it("a fail_open ALLOW of the enforcer is an ALLOW with that reason", function()
    local d = assert(core.parse_check(200, '{"decision":"ALLOW","reason":"fail_open","hold_id":""}', {}))
    assert.is_true(d.allow)
    assert.is_nil(d.hold_id)
    assert.equal("fail_open", d.reason)
    d = assert(core.parse_check(200, '{"decision":"ALLOW","reason":"fail_open","hold_id":null}', {}))
    assert.is_nil(d.hold_id)
  end)
  it("garbage on 200 is an error (the caller fails open)", function()
    for _, body in ipairs({ "", "<html>", "[]", '{"decision":"DENY"}', '{"decision":"ALLOW","hold_id":5}' }) do
      local d, err = core.parse_check(200, body, {})
      assert.is_nil(d, body)
      assert.is_string(err)
    end
  end)
  it("DENY on 429 with Retry-After from the header", function()
    local d = assert(core.parse_check(429, '{"decision":"DENY","reason":"rate_limited_tokens","retry_after_ms":2500}',
                                      { ["retry-after"] = "3" }))
    assert.is_false(d.allow)
    assert.equal(429, d.status)
    assert.equal("rate_limited_tokens", d.reason)
    assert.equal(3, d.retry_after)
  end)
  it("DENY on 429 rounds retry_after_ms up when the header is missing, and is a denial even with a broken body", function()
    assert.equal(3, core.parse_check(429, '{"decision":"DENY","reason":"x","retry_after_ms":2001}', {}).retry_after)
    local d = assert(core.parse_check(429, "oops", {}))
    assert.is_false(d.allow)
    assert.is_nil(d.retry_after)
  end)
  it("401/403 and malformed requests are denials, never fail-open", function()
    assert.equal(401, core.parse_check(401, '{"decision":"DENY","reason":"invalid_api_key"}', {}).status)
    assert.equal(403, core.parse_check(403, "", {}).status)
    assert.equal(400, core.parse_check(413, "", {}).status)
    assert.equal(400, core.parse_check(400, "", {}).status)
  end)
  it("5xx and other statuses are errors", function()
    for _, s in ipairs({ 500, 502, 503, 504, 302, 404 }) do
      assert.is_nil(core.parse_check(s, allow, {}))
    end
  end)
end)

describe("retry_after", function()
  it("is at least 1 second when present", function()
    assert.equal(1, core.retry_after({ ["retry-after"] = "0.2" }, nil))
    assert.equal(1, core.retry_after({}, { retry_after_ms = 1 }))
    assert.is_nil(core.retry_after({}, { retry_after_ms = 0 }))
    assert.is_nil(core.retry_after({ ["retry-after"] = "soon" }, { retry_after_ms = -1 }))
  end)
end)

describe("client_headers", function()
  it("copies the enforcer's rate-limit headers and adds Kong's RateLimit-* trio", function()
    local h = core.client_headers({
      ["x-ratelimit-limit"] = "60", ["x-ratelimit-remaining"] = "59", ["x-ratelimit-reset"] = "1",
      ["ratelimit-policy"] = '60;w=60', ["ratelimit"] = 'limit=60, remaining=59, reset=1',
      ["x-tollgate-reason"] = "ok", ["content-type"] = "application/json",
    })
    assert.same({
      ["X-RateLimit-Limit"] = "60", ["X-RateLimit-Remaining"] = "59", ["X-RateLimit-Reset"] = "1",
      ["RateLimit-Policy"] = "60;w=60", ["RateLimit"] = "limit=60, remaining=59, reset=1",
      ["X-Tollgate-Reason"] = "ok",
      ["RateLimit-Limit"] = "60", ["RateLimit-Remaining"] = "59", ["RateLimit-Reset"] = "1",
    }, h)
  end)
end)

describe("deny", function()
  it("answers as OpenAI does: 402 for money, 403 suspended, 429 rate limits with Retry-After", function()
    local status, b, h = core.deny({ status = 429, reason = "insufficient_balance", level = "customer" }, conf)
    assert.equal(402, status)
    assert.same({ message = b.error.message, type = "insufficient_quota", param = cjson.null,
                  code = "insufficient_quota", tollgate_reason = "insufficient_balance",
                  tollgate_level = "customer" }, b.error)
    assert.same({ ["x-should-retry"] = "false" }, h)
    status, b, h = core.deny({ status = 429, reason = "rate_limited_requests", retry_after = 2 }, conf)
    assert.equal(429, status)
    assert.equal("rate_limit_exceeded", b.error.code)
    assert.same({ ["Retry-After"] = 2 }, h)
    status, b = core.deny({ status = 429, reason = "suspended" }, conf)
    assert.equal(403, status)
    assert.equal("account_suspended", b.error.code)
    status, b = core.deny({ status = 401, reason = "revoked" }, conf)
    assert.equal(401, status)
    assert.equal("invalid_api_key", b.error.code)
  end)
  it("gives unknown reasons the default row and the configured message", function()
    local status, b, h = core.deny({ status = 429, reason = "something_new", retry_after = 1 },
                                   { error_message = "slow down" })
    assert.equal(429, status)
    assert.equal("slow down", b.error.message)
    assert.equal("rate_limit_exceeded", b.error.code)
    assert.same({ ["Retry-After"] = 1 }, h)
  end)
end)

describe("parse_usage", function()
  it("reads an OpenAI chat completion, cached prompt tokens apart", function()
    local body = cjson.encode({ id = "chatcmpl-1", choices = {},
      usage = { prompt_tokens = 100, completion_tokens = 20, total_tokens = 120,
                prompt_tokens_details = { cached_tokens = 30 } } })
    assert.same({ input_tokens = 70, output_tokens = 20, cache_read_tokens = 30 }, core.parse_usage(body, false))
  end)
  it("reads an Anthropic message", function()
    local body = cjson.encode({ type = "message",
      usage = { input_tokens = 12, output_tokens = 34, cache_read_input_tokens = 5, cache_creation_input_tokens = 6 } })
    assert.same({ input_tokens = 12, output_tokens = 34, cache_read_tokens = 5, cache_write_tokens = 6 },
                core.parse_usage(body, false))
  end)
  it("reads an OpenAI responses object", function()
    local body = cjson.encode({ object = "response",
      usage = { input_tokens = 50, output_tokens = 9, input_tokens_details = { cached_tokens = 10 } } })
    assert.same({ input_tokens = 40, output_tokens = 9, cache_read_tokens = 10 }, core.parse_usage(body, false))
  end)
  it("reads an Anthropic stream: input from message_start, output from the last message_delta", function()
    local body = table.concat({
      "event: message_start",
      'data: {"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1}}}',
      "",
      "event: content_block_delta",
      'data: {"type":"content_block_delta","delta":{"text":"hi"}}',
      "",
      "event: message_delta",
      'data: {"type":"message_delta","usage":{"output_tokens":15}}',
      "",
    }, "\n")
    assert.same({ input_tokens = 25, output_tokens = 15 }, core.parse_usage(body, true))
  end)
  it("reads an OpenAI stream with include_usage and skips [DONE] and a cut first line", function()
    local body = 'ta: {"choices":[{"delta":{"content":"x"}}]}\n\n'
      .. 'data: {"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":2}}\n\n'
      .. "data: [DONE]\n\n"
    assert.same({ input_tokens = 8, output_tokens = 2 }, core.parse_usage(body, true))
  end)
  it("returns nil without a usage block", function()
    assert.is_nil(core.parse_usage('{"choices":[]}', false))
    assert.is_nil(core.parse_usage("", false))
    assert.is_nil(core.parse_usage(nil, false))
    assert.is_nil(core.parse_usage("<html>", false))
    assert.is_nil(core.parse_usage('{"usage": "lots"}', false))
  end)
end)

describe("usage_body", function()
  local r = { api_key = "tg_k", request_id = "kong_abc", hold_id = "h_1", dimensions = { model = "m" },
              estimate = { requests = 1, input_tokens = 40, output_tokens = 100 } }
  it("follows the /v1/usage contract with the request id as correlation id", function()
    local doc = cjson.decode(core.usage_body(r, 200, { input_tokens = 3, output_tokens = 4, cache_read_tokens = 1 },
                                             "2026-11-21T10:00:00Z", conf))
    assert.same({
      event_id = "evt_kong_abc", api_key = "tg_k", correlation_id = "kong_abc", hold_id = "h_1",
      event_type = "llm.completion", timestamp = "2026-11-21T10:00:00Z",
      properties = { model = "m", request_type = "standard", status = "200", usage_source = "response", gateway = "kong" },
      measurements = { { metric = "input_tokens", value = 3 }, { metric = "output_tokens", value = 4 },
                       { metric = "cache_read_tokens", value = 1 } },
    }, doc)
  end)
  it("without usage: zero tokens by default, the estimate when configured (2xx only)", function()
    local doc = cjson.decode(core.usage_body(r, 200, nil, "t", conf))
    assert.equal("none", doc.properties.usage_source)
    assert.same({ { metric = "input_tokens", value = 0 }, { metric = "output_tokens", value = 0 } }, doc.measurements)
    local billing = { bill_estimate_without_usage = true }
    doc = cjson.decode(core.usage_body(r, 200, nil, "t", billing))
    assert.equal("estimate", doc.properties.usage_source)
    assert.same({ { metric = "input_tokens", value = 40 }, { metric = "output_tokens", value = 100 } }, doc.measurements)
    doc = cjson.decode(core.usage_body(r, 502, nil, "t", billing))
    assert.equal("none", doc.properties.usage_source)
  end)
  it("flags fail-open traffic and omits the hold id it does not have", function()
    local fo = { api_key = "k", request_id = "kong_x", dimensions = {}, estimate = r.estimate, fail_open = true }
    local doc = cjson.decode(core.usage_body(fo, 200, { input_tokens = 1, output_tokens = 1 }, "t", conf))
    assert.equal("true", doc.properties.fail_open)
    assert.is_nil(doc.hold_id)
    assert.is_nil(doc.properties.model)
  end)
end)

describe("iso8601", function()
  it("turns ngx.utctime into RFC 3339 UTC", function()
    assert.equal("2026-11-21T10:00:00Z", core.iso8601("2026-11-21 10:00:00"))
  end)
end)

describe("capture", function()
  it("keeps a JSON body whole up to the limit and drops it past", function()
    local s = { stream = false }
    core.capture(s, "abc", 5)
    core.capture(s, "de", 5)
    assert.equal("abcde", core.captured(s))
    core.capture(s, "f", 5)
    assert.is_nil(core.captured(s))
    core.capture(s, "g", 5)
    assert.is_nil(core.captured(s))
  end)
  it("keeps the tail of a stream", function()
    local s = { stream = true }
    for _, c in ipairs({ "aaa", "bbb", "ccc" }) do
      core.capture(s, c, 6)
    end
    assert.equal("bbbccc", core.captured(s))
  end)
end)

describe("trace_headers", function()
  local tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
  it("passes a W3C traceparent and its tracestate on as header lines", function()
    assert.equal("traceparent: " .. tp .. "\r\n", core.trace_headers(tp, nil))
    assert.equal("traceparent: " .. tp .. "\r\ntracestate: congo=t61rcWkgMzE\r\n",
                 core.trace_headers(tp, "congo=t61rcWkgMzE"))
  end)
  it("drops a traceparent of the wrong shape, and a tracestate alone", function()
    assert.equal("", core.trace_headers(nil, "a=b"))
    assert.equal("", core.trace_headers("00-xyz-01", nil))
    assert.equal("", core.trace_headers(tp:sub(1, 54) .. "\n", nil))
  end)
  it("never copies a control character (header injection) or a huge tracestate", function()
    assert.equal("traceparent: " .. tp .. "\r\n", core.trace_headers(tp, "a=b\r\nx-evil: 1"))
    assert.equal("traceparent: " .. tp .. "\r\n", core.trace_headers(tp, string.rep("a", 513)))
  end)
end)
