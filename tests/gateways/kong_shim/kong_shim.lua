-- Test shim: the Kong PDK calls the tollgate plugin makes, on plain lua-nginx-module, and a
-- runner that calls the plugin's phase handlers the way Kong does (`handler:phase(conf)`).
--
-- Not part of the plugin. The configurations are validated against the plugin's own schema.lua
-- (defaults filled, types / between / gt / match / len_max / custom validators checked,
-- unknown fields refused) so a schema mistake fails the tests.
--
-- nginx.conf:
--   init_by_lua_block { require("kong_shim").init("tollgate", "/path/configs.json") }
--   access_by_lua_block { require("kong_shim").run("access", "<instance>") }  -- and the
--   header_filter / body_filter / log phases likewise.
local cjson = require "cjson.safe"
local schema_check = require "schema_check"

local ngx = ngx
local _M = {}

local instances = {}
local handler

-- --------------------------------------------------------------------------------------------
-- PDK

local function plugin_ctx()
  local c = ngx.ctx.__kong_plugin_ctx
  if not c then
    c = {}
    ngx.ctx.__kong_plugin_ctx = c
  end
  return c
end

local function first(v)
  if type(v) == "table" then
    return v[1]
  end
  return v
end

local function header_value(v)
  if type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean" then
    error("invalid header value: " .. type(v), 3)
  end
  return tostring(v)
end

local function log(level)
  return function(...)
    ngx.log(level, "[kong] ", ...)
  end
end

local kong = {
  version = "3.9.0-shim",
  log = {
    err = log(ngx.ERR), warn = log(ngx.WARN), notice = log(ngx.NOTICE),
    info = log(ngx.INFO), debug = log(ngx.DEBUG),
  },
  request = {
    get_header = function(name)
      return first(ngx.req.get_headers()[name])
    end,
    get_method = function()
      return ngx.req.get_method()
    end,
    get_raw_body = function()
      ngx.req.read_body()
      local body = ngx.req.get_body_data()
      if not body then
        if ngx.req.get_body_file() then
          return nil, "request body did not fit into client body buffer, consider raising 'client_body_buffer_size'"
        end
        return ""
      end
      return body
    end,
  },
  service = {
    request = {
      set_header = function(name, value)
        ngx.req.set_header(name, header_value(value))
      end,
      clear_header = function(name)
        ngx.req.clear_header(name)
      end,
    },
  },
  response = {
    get_status = function()
      return ngx.status
    end,
    get_header = function(name)
      return first(ngx.resp.get_headers()[name])
    end,
    set_header = function(name, value)
      ngx.header[name] = header_value(value)
    end,
    set_headers = function(headers)
      for name, value in pairs(headers) do
        ngx.header[name] = header_value(value)
      end
    end,
    exit = function(status, body, headers)
      local phase = ngx.get_phase()
      if phase ~= "rewrite" and phase ~= "access" then
        error("kong.response.exit called in phase " .. phase, 2)
      end
      ngx.status = status
      for name, value in pairs(headers or {}) do
        ngx.header[name] = header_value(value)
      end
      if type(body) == "table" then
        body = cjson.encode(body)
        ngx.header["Content-Type"] = "application/json; charset=utf-8"
      end
      if body then
        ngx.header["Content-Length"] = #body
        ngx.print(body)
      end
      return ngx.exit(status)
    end,
  },
  -- as Kong's: what the authentication plugin (here: _M.key_auth) left in ngx.ctx
  client = {
    get_consumer = function()
      return ngx.ctx.authenticated_consumer
    end,
    get_credential = function()
      return ngx.ctx.authenticated_credential
    end,
  },
  ctx = setmetatable({}, {
    __index = function(_, k)
      if k == "plugin" then
        return plugin_ctx()
      end
    end,
  }),
}

-- --------------------------------------------------------------------------------------------
-- Runner

--- init_by_lua: install the PDK, load the plugin and its configurations ({instance: config}).
function _M.init(plugin, config_path)
  _G.kong = kong
  handler = require("kong.plugins." .. plugin .. ".handler")
  local schema = require("kong.plugins." .. plugin .. ".schema")
  assert(schema.name == plugin, "schema name is not " .. plugin)
  assert(type(handler.PRIORITY) == "number" and type(handler.VERSION) == "string",
         "handler needs PRIORITY and VERSION")
  local f = assert(io.open(config_path, "rb"))
  local configs = assert(cjson.decode(f:read("*a")))
  f:close()
  for name, user_conf in pairs(configs) do
    instances[name] = schema_check.configure(schema, user_conf)
  end
end

function _M.run(phase, instance)
  local conf = instances[instance]
  if not conf then
    error("no plugin configuration named " .. tostring(instance))
  end
  local fn = handler[phase]
  if fn then
    return fn(handler, conf)
  end
end

--- A stand-in for Kong's key-auth (rewrite/access phase, before the plugin): the key in `header`
-- becomes the authenticated credential of a consumer named after it, and the header is removed
-- (key-auth's hide_credentials). It accepts any key: who is a tollgate customer is tollgate's call.
function _M.key_auth(header)
  local key = first(ngx.req.get_headers()[header])
  if not key or key == "" then
    return
  end
  local consumer = { id = "consumer-" .. ngx.md5(key), username = "user-" .. key:sub(-6) }
  ngx.ctx.authenticated_consumer = consumer
  ngx.ctx.authenticated_credential = { id = "cred-" .. ngx.md5(key), consumer = { id = consumer.id }, key = key }
  ngx.req.clear_header(header)
end

--- A stand-in for any other Kong authentication plugin (JWT, OpenID Connect, basic-auth...): the
-- consumer it authenticated is the one the test names in x-test-consumer (its username) and
-- x-test-custom-id (its custom_id, if any); both headers are removed. No header: anonymous.
function _M.consumer_auth()
  local headers = ngx.req.get_headers()
  local username = first(headers["x-test-consumer"])
  ngx.req.clear_header("x-test-consumer")
  ngx.req.clear_header("x-test-custom-id")
  if not username or username == "" then
    return
  end
  ngx.ctx.authenticated_consumer = {
    id = "consumer-" .. ngx.md5(username), username = username, custom_id = first(headers["x-test-custom-id"]),
  }
  ngx.ctx.authenticated_credential = { id = "jwt-" .. ngx.md5(username) }  -- no key: not key-auth
end

_M.pdk = kong
return _M
