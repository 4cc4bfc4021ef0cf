-- The plugin's schema.lua, validated the way Kong would (through the test shim's schema checker).
local schema = require "kong.plugins.tollgate.schema"
local schema_check = require "schema_check"

describe("tollgate schema", function()
  it("is named after the plugin and limited to HTTP protocols", function()
    assert.equal("tollgate", schema.name)
    local fields = {}
    for _, f in ipairs(schema.fields) do
      local name, def = next(f)
      fields[name] = def
    end
    assert.is_table(fields.protocols)
    assert.same({ "grpc", "grpcs", "http", "https" }, fields.protocols.default)
    assert.equal("record", fields.config.type)
  end)

  it("fills the documented defaults", function()
    local conf = schema_check.configure(schema, {})
    assert.equal("http://127.0.0.1:8080", conf.sidecar_url)
    assert.equal(50, conf.timeout_ms)
    assert.is_true(conf.fault_tolerant)
    assert.equal("x-api-key", conf.api_key_header)
    assert.is_false(conf.hide_client_headers)
    assert.equal(1024, conf.default_max_tokens)
    assert.equal(4, conf.bytes_per_token)
    assert.equal("kong_", conf.request_id_prefix)
    assert.is_nil(conf.default_model)
  end)

  it("refuses bad values and unknown fields", function()
    local bad = {
      { timeout_ms = 0 },
      { timeout_ms = 1.5 },
      { timeout_ms = "50" },
      { sidecar_url = "enforcer:8080" },
      { api_key_header = "x api key" },
      { fault_tolerant = "yes" },
      { bytes_per_token = 0 },
      { request_id_prefix = "a b" },
      { request_id_prefix = string.rep("a", 25) },
      { timeout = 50 },
    }
    for _, c in ipairs(bad) do
      assert.has_error(function() schema_check.configure(schema, c) end)
    end
  end)
end)
