-- The in-gateway mode's pure parts (core.lua): the hold estimate from the plan's projected estimate
-- hash (control/projection/gateway_estimate.py), the billing period, the rate-limit headers. The
-- expected figures are tollgate.plans.Plan.estimate_micros and tollgate.periods.period_of's.
local core = require "kong.plugins.tollgate.core"

-- estimate_fields of tests/tenants.plan_doc("0.01") with gpt-4o's output at 0.0000105 and the
-- input at 0.0000000000017 (13 decimals: projected rounded up to 2 picounits)
local prices = {
  requests = "10000000000", ["requests@gpt-4o"] = "10000000000",
  input_tokens = "2", ["input_tokens@gpt-4o"] = "2",
  output_tokens = "15000000", ["output_tokens@gpt-4o"] = "10500000",
}

describe("estimate_micros", function()
  it("sums quantity x price exactly and rounds up once", function()
    assert.equal(10046, core.estimate_micros(prices, nil, { requests = 1, input_tokens = 7, output_tokens = 3 }))
    assert.equal(1, core.estimate_micros(prices, "x", { requests = 0, input_tokens = 1, output_tokens = 0 }))
  end)
  it("takes a model's own price, and the default for a model the plan does not name", function()
    local est = { requests = 1, input_tokens = 10, output_tokens = 100 }
    assert.equal(10000 + 1050 + 1, core.estimate_micros(prices, "gpt-4o", est))  -- 20 picounits in: 1 micro
    assert.equal(10000 + 1500 + 1, core.estimate_micros(prices, "claude", est))
  end)
  it("stays exact at the largest quantities (no product past 2^53)", function()
    local big = { requests = 1, input_tokens = 100000000, output_tokens = 100000000 }
    assert.equal(1050010200, core.estimate_micros(prices, "gpt-4o", big))
  end)
end)

describe("period_of", function()
  it("is the calendar month from the anchor day on, as tollgate.periods.period_of", function()
    assert.equal("202512", core.period_of(1764547200, 1))   -- 2025-12-01 00:00 UTC
    assert.equal("202511", core.period_of(1764547200, 15))
    assert.equal("202512", core.period_of(1765800000, 15))  -- 2025-12-15 12:00 UTC
    assert.equal("202512", core.period_of(1767139200, 5))   -- 2025-12-31
    assert.equal("202512", core.period_of(1767225599, 1))   -- 2025-12-31 23:59:59
    assert.equal("202601", core.period_of(1767225600, 1))
  end)
end)

describe("rate_headers", function()
  it("are the enforcer's", function()
    local h = core.rate_headers(100, 99, 600, 1000, 900)
    assert.equal(100, h["X-RateLimit-Limit"])
    assert.equal(1, h["X-RateLimit-Reset"])
    assert.equal('"requests";q=100;w=60, "tokens";q=1000;qu="tokens";w=60', h["RateLimit-Policy"])
    assert.equal('"requests";r=99;t=1, "tokens";r=900;t=6', h["RateLimit"])
    assert.equal("600ms", h["x-ratelimit-reset-requests"])
    assert.equal("6s", h["x-ratelimit-reset-tokens"])
    assert.equal(1000, h["x-ratelimit-limit-tokens"])
    assert.equal(900, h["x-ratelimit-remaining-tokens"])
  end)
  it("print resets as Go durations, as enforcer/rate_headers.py go_duration does", function()
    local cases = { [0] = "0s", [20] = "20ms", [999] = "999ms", [1000] = "1s", [1500] = "1.5s",
                    [13800] = "13.8s", [60000] = "1m0s", [360000] = "6m0s", [3600000] = "1h0m0s",
                    [3661250] = "1h1m1.25s" }
    for ms, want in pairs(cases) do
      assert.equal(want, core.go_duration(ms))
    end
  end)
end)
