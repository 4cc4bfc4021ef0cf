-- Test shim: validates a plugin configuration against the plugin's schema.lua the way Kong's
-- schema library would for the attributes the tollgate schema uses (type, required, default,
-- between, gt, match, len_max, one_of, custom_validator; unknown fields refused). Pure Lua, so
-- busted uses it too.
local cjson = require "cjson.safe"

local _M = {}

local function check_field(path, def, value)
  if value == nil or value == cjson.null then
    if def.default ~= nil then
      return def.default
    end
    if def.required then
      error(path .. ": required field missing", 0)
    end
    return nil
  end
  local t = def.type
  if t == "record" then
    if type(value) ~= "table" then
      error(path .. ": expected a record", 0)
    end
    local out, known = {}, {}
    for _, f in ipairs(def.fields) do
      local name, fdef = next(f)
      known[name] = true
      out[name] = check_field(path .. "." .. name, fdef, value[name])
    end
    for name in pairs(value) do
      if not known[name] then
        error(path .. "." .. name .. ": unknown field", 0)
      end
    end
    return out
  elseif t == "string" then
    if type(value) ~= "string" then
      error(path .. ": expected a string", 0)
    end
    if def.match and not value:match(def.match) then
      error(path .. ": invalid value: " .. value, 0)
    end
    if def.len_max and #value > def.len_max then
      error(path .. ": length must be at most " .. def.len_max, 0)
    end
  elseif t == "integer" or t == "number" then
    if type(value) ~= "number" or (t == "integer" and value ~= math.floor(value)) then
      error(path .. ": expected " .. (t == "integer" and "an integer" or "a number"), 0)
    end
    if def.between and (value < def.between[1] or value > def.between[2]) then
      error(path .. ": value should be between " .. def.between[1] .. " and " .. def.between[2], 0)
    end
    if def.gt and value <= def.gt then
      error(path .. ": value must be greater than " .. def.gt, 0)
    end
  elseif t == "boolean" then
    if type(value) ~= "boolean" then
      error(path .. ": expected a boolean", 0)
    end
  elseif t == "set" or t == "array" then
    if type(value) ~= "table" then
      error(path .. ": expected an array", 0)
    end
    return value
  else
    error(path .. ": shim does not know field type " .. tostring(t), 0)
  end
  if def.one_of then
    local ok = false
    for _, v in ipairs(def.one_of) do
      ok = ok or v == value
    end
    if not ok then
      error(path .. ": expected one of: " .. table.concat(def.one_of, ", "), 0)
    end
  end
  if def.custom_validator then
    local ok, err = def.custom_validator(value)
    if not ok then
      error(path .. ": " .. tostring(err), 0)
    end
  end
  return value
end

--- A plugin configuration as Kong would store it: validated, defaults filled.
function _M.configure(schema, user_conf)
  local config_def
  for _, f in ipairs(schema.fields) do
    local name, def = next(f)
    if name == "config" then
      config_def = def
    end
  end
  assert(config_def, "schema has no config record")
  return check_field("config", config_def, user_conf or {})
end


return _M
