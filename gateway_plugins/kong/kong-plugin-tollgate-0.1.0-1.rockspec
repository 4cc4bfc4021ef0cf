-- Install with `luarocks make` from gateway_plugins/kong (the source is this directory).
package = "kong-plugin-tollgate"
version = "0.1.0-1"
source = {
  url = "file://.",
}
description = {
  summary = "tollgate: gateway-edge quota enforcement for usage-priced LLM APIs (Kong plugin)",
  detailed = "Pre-flight /v1/check against the tollgate enforcer, 429 with Retry-After on DENY, fail open, usage reports to /v1/usage.",
}
dependencies = {
  -- lua-cjson, lua-resty-redis, lua-resty-string and lua-nginx-module cosockets come with Kong
}
build = {
  type = "builtin",
  modules = {
    ["kong.plugins.tollgate.handler"] = "kong/plugins/tollgate/handler.lua",
    ["kong.plugins.tollgate.schema"] = "kong/plugins/tollgate/schema.lua",
    ["kong.plugins.tollgate.core"] = "kong/plugins/tollgate/core.lua",
    ["kong.plugins.tollgate.http"] = "kong/plugins/tollgate/http.lua",
    ["kong.plugins.tollgate.openai_errors"] = "kong/plugins/tollgate/openai_errors.lua",
    ["kong.plugins.tollgate.redis_check"] = "kong/plugins/tollgate/redis_check.lua",
    -- not a Lua module: the enforcer's lua/check.lua (a symlink to it: the file is copied), the Redis
    -- script redis_check.lua runs; installed as a module so it lands beside the plugin
    ["kong.plugins.tollgate.check"] = "kong/plugins/tollgate/check.lua",
  },
}
