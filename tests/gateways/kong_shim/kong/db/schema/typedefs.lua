-- Test shim of kong.db.schema.typedefs: only the typedefs the tollgate schema uses. Like Kong's,
-- each typedef is a field definition that can be called with overrides (`typedefs.url { ... }`).
local function define(base)
  return setmetatable(base, {
    __call = function(self, overrides)
      local t = {}
      for k, v in pairs(self) do t[k] = v end
      for k, v in pairs(overrides or {}) do t[k] = v end
      return t
    end,
  })
end

local function validate_url(v)
  if not v:match("^https?://[^/%s]+") then
    return nil, "missing host in url"
  end
  return true
end

local function validate_header_name(v)
  if not v:match("^[%w%-_]+$") then
    return nil, "bad header name '" .. v .. "', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
  end
  return true
end

return {
  url = define { type = "string", custom_validator = validate_url },
  header_name = define { type = "string", custom_validator = validate_header_name },
  host = define { type = "string", custom_validator = function(v)
    if not v:match("^[%w%.%-:%[%]]+$") then
      return nil, "invalid hostname: " .. v
    end
    return true
  end },
  port = define { type = "integer", between = { 0, 65535 } },
  protocols_http = define {
    type = "set", required = true, default = { "grpc", "grpcs", "http", "https" },
    elements = { type = "string", one_of = { "grpc", "grpcs", "http", "https" } },
  },
}
