-- In-gateway mode (config.mode = "redis"): the pre-flight check without the sidecar. The plugin
-- runs the enforcer's own lua/check.lua (beside this file as check.lua, a symlink to it in the
-- repository, the file itself once installed) with EVALSHA on the tollgate Redis, with the KEYS and ARGV the
-- enforcer builds (enforcer/checks.py, enforcer/keycache.py), so the same Redis state results:
-- the same hold value, idempotency record and rate-limit buckets.
--
-- What it reads besides: the key record tg:key:<sha256> (customer, key, plan, status, app path),
-- the projection marker, and the plan's estimate hash tg:plan:<id>:estimate that the control
-- plane projects for gateways (control/projection/gateway_estimate.py). Key and plan are cached
-- per worker for conf.key_cache_ttl_s (no invalidation channel here: a revocation takes effect
-- within that time). Returns a decision shaped like core.parse_check's, with the client headers,
-- or nil and an error when Redis gave no decision: the caller fails open (or closed).
local core = require "kong.plugins.tollgate.core"
-- lua-resty-redis and lua-resty-string: bundled with Kong / OpenResty as resty.*; Debian ships
-- the same libraries as nginx.* (lua-nginx-redis, lua-nginx-string)
local function require_resty(name)
  local ok, mod = pcall(require, "resty." .. name)
  if ok then
    return mod
  end
  return require("nginx." .. name)
end
local redis = require_resty("redis")
local sha256 = require_resty("sha256")

local ngx = ngx
local type = type
local tonumber = tonumber
local tostring = tostring
local floor = math.floor
local ceil = math.ceil
local unpack = unpack
local rawget = rawget
local format = string.format

local _M = {}

-- ------------------------------------------------------------------------------ the script

local function read_script()
  local path = package.searchpath("kong.plugins.tollgate.check", package.path)
  if not path then
    return nil
  end
  local f = io.open(path, "rb")
  local text = f:read("*a")
  f:close()
  return text
end

local function hex(bin)
  return (bin:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local SCRIPT = read_script()
local SHA = SCRIPT and hex(ngx.sha1_bin(SCRIPT))

-- ------------------------------------------------------------------------------ caches

-- per worker: "k" .. key hash / "p" .. plan id -> {expires, ...}
local cache, cached_count = {}, 0
local MAX_CACHED = 100000  -- a flood of random keys must not grow the worker without limit

local function cached(id)
  local entry = cache[id]
  if entry and entry.expires > ngx.now() then
    return entry
  end
end

local function remember(id, entry, ttl)
  if cached_count >= MAX_CACHED then
    cache, cached_count = {}, 0  -- all forgotten: a lookup each to refill, no more
  end
  entry.expires = ngx.now() + ttl
  cache[id] = entry
  cached_count = cached_count + 1
end

local function sha256_hex(s)
  local h = sha256:new()
  h:update(s)
  return hex(h:final())
end

local function pairs_to_table(list)
  if type(list) ~= "table" then
    return nil
  end
  local t = {}
  for i = 1, #list, 2 do
    t[list[i]] = list[i + 1]
  end
  return t
end

-- ------------------------------------------------------------------------------ Redis

local function connect(conf)
  local red = redis:new()
  -- (older lua-resty-redis, as Debian's 0.27, has only set_timeout; rawget: its __index turns
  -- any other name into a Redis command)
  if rawget(redis, "set_timeouts") then
    red:set_timeouts(conf.timeout_ms, conf.timeout_ms, conf.timeout_ms)
  else
    red:set_timeout(conf.timeout_ms)
  end
  local ok, err = red:connect(conf.redis_host, conf.redis_port,
                              { pool_size = conf.keepalive_pool_size })
  if not ok then
    return nil, "redis connect: " .. tostring(err)
  end
  if red:get_reused_times() == 0 then
    if conf.redis_password and conf.redis_password ~= "" then
      ok, err = red:auth(conf.redis_password)
      if not ok then
        red:close()
        return nil, "redis auth: " .. tostring(err)
      end
    end
    if conf.redis_database and conf.redis_database ~= 0 then
      ok, err = red:select(conf.redis_database)
      if not ok then
        red:close()
        return nil, "redis select: " .. tostring(err)
      end
    end
  end
  return red
end

local function release(red, conf)
  if conf.keepalive_ms > 0 then
    red:set_keepalive(conf.keepalive_ms, conf.keepalive_pool_size)
  else
    red:close()
  end
end

-- Key record and plan estimate, from the cache or Redis. Returns info | "unknown" | nil, err.
local function resolve(red, conf, key_hash)
  local info = cached("k" .. key_hash)
  if info then
    return info
  end
  red:init_pipeline()
  red:hgetall("tg:key:" .. key_hash)
  red:exists("tg:{@projection}")
  local res, err = red:commit_pipeline()
  if not res then
    return nil, "redis: " .. tostring(err)
  end
  local rec = res[1]
  if type(rec) ~= "table" or rec[1] == false then
    return nil, "redis: " .. tostring(type(rec) == "table" and rec[2] or rec)
  end
  if #rec == 0 then
    if res[2] ~= 1 then
      return nil, "not_projected"  -- Redis lost its projection: fail open, never 401
    end
    remember("k" .. key_hash, { unknown = true }, conf.negative_cache_ttl_s)
    return "unknown"
  end
  local f = pairs_to_table(rec)
  info = {
    customer_id = f.customer_id, key_id = f.key_id, plan_id = f.plan_id or "",
    revoked = f.status ~= "active", app_id = f.app_id or "", app_kind = f.app_kind or "",
    team_id = f.team_id or "",
  }
  if not info.customer_id or not info.key_id then
    return nil, "not_provisioned"
  end
  remember("k" .. key_hash, info, conf.key_cache_ttl_s)
  return info
end

local function plan_prices(red, conf, plan_id)
  local p = cached("p" .. plan_id)
  if p then
    return p
  end
  local rec, err = red:hgetall("tg:plan:" .. plan_id .. ":estimate")
  if not rec then
    return nil, "redis: " .. tostring(err)
  end
  if #rec == 0 then
    return nil, "not_provisioned"  -- the plan's estimate was never projected
  end
  p = pairs_to_table(rec)
  p.hold_ttl_ms = tonumber(p.hold_ttl_ms) or 300000
  p.anchor_day = tonumber(p.anchor_day) or 1
  remember("p" .. plan_id, p, conf.key_cache_ttl_s)
  return p
end

-- check.lua's KEYS, as enforcer.keycache.KeyInfo.check_keys
local function check_keys(info, period, request_id)
  local tag = "tg:{" .. info.customer_id .. "}"
  local k, app, team = info.key_id, info.app_id, info.team_id
  local keys = {
    tag .. ":cfg", tag .. ":wallet", tag .. ":held", tag .. ":holds", tag .. ":hold_exp",
    tag .. ":spend:" .. period, tag .. ":req:" .. request_id,
    tag .. ":rl:" .. k .. ":r", tag .. ":rl:" .. k .. ":t",
    tag .. ":limits", tag .. ":guard", tag .. ":inflight",
    tag .. ":lv:key:" .. k .. ":s:" .. period,
    tag .. ":lv:customer:r", tag .. ":lv:customer:t",
  }
  if app ~= "" then
    local a, t = tag .. ":lv:app:" .. app, tag .. ":lv:team:" .. team
    for _, name in ipairs({ a .. ":r", a .. ":t", a .. ":s:" .. period, t .. ":r", t .. ":t", t .. ":s:" .. period }) do
      keys[#keys + 1] = name
    end
  end
  return keys
end

local function evalsha(red, keys, argv)
  local n = #keys
  local args = { SHA, n }
  for i = 1, n do args[#args + 1] = keys[i] end
  for i = 1, #argv do args[#args + 1] = argv[i] end
  local res, err = red:evalsha(unpack(args))
  if not res and err and err:find("NOSCRIPT", 1, true) then
    args[1] = SCRIPT  -- EVAL loads it into the script cache for the next EVALSHA
    res, err = red:eval(unpack(args))
  end
  return res, err
end

-- as enforcer/checks.py: DENYs waiting cannot cure, replies that carry no limits
local NO_RETRY = { insufficient_balance = true, spend_cap = true, suspended = true, margin_guard = true }
local NO_LIMITS = { suspended = true, margin_guard = true }

--- The decision for one request, or nil and an error (the caller fails open or closed).
-- Returns decision, headers (client headers, the same the sidecar sends), err.
function _M.check(conf, api_key, request_id, dimensions, estimate)
  if not SCRIPT then
    return nil, nil, "check.lua is not installed beside the plugin"
  end
  local red, err = connect(conf)
  if not red then
    return nil, nil, err
  end
  local key_hash = sha256_hex(api_key)
  local info
  info, err = resolve(red, conf, key_hash)
  if not info then
    red:close()  -- a timeout leaves the connection in an unknown state
    return nil, nil, err
  end
  if info == "unknown" or info.unknown or info.revoked then
    release(red, conf)
    return { allow = false, status = 401, reason = "invalid_api_key" }, {}
  end
  local prices
  prices, err = plan_prices(red, conf, info.plan_id)
  if not prices then
    red:close()
    return nil, nil, err
  end
  local model = dimensions.model
  local cost = core.estimate_micros(prices, model, estimate)
  local tokens = (estimate.input_tokens or 0) + (estimate.output_tokens or 0)
  local now = ngx.now()
  local period = core.period_of(floor(now), prices.anchor_day)
  local hold_id = "hold_" .. ngx.var.request_id
  -- Redis may run it only until we give up waiting (by our clock, plus the allowed skew): a late
  -- run places nothing (check.lua's 'expired'), so no hold is left without an owner.
  local deadline = floor(now * 1000) + conf.timeout_ms + conf.redis_clock_skew_ms
  -- integers as %d: tostring would write a large one in exponent notation, and the hold's
  -- amount is stored as the text it is given
  local argv = {
    hold_id, format("%d", estimate.requests or 1), format("%d", tokens), format("%d", cost),
    format("%d", prices.hold_ttl_ms), format("%d", conf.idempotency_ttl_ms), info.key_id,
    format("%d", deadline), "", info.app_id, info.app_id ~= "" and info.app_kind or "", info.team_id,
  }
  local r
  r, err = evalsha(red, check_keys(info, period, request_id), argv)
  if not r then
    red:close()
    return nil, nil, "check.lua: " .. tostring(err)
  end
  release(red, conf)
  local allowed, reason, hold, retry_ms = r[1], r[2], r[3], tonumber(r[4]) or 0
  local rem_r, rem_t, tier = r[5], r[6], r[9]
  local rpm, tpm, reset_ms, replayed, level = r[10], r[11], r[12], r[13], r[14]
  if reason == "not_provisioned" or reason == "expired" then
    return nil, nil, reason
  end
  if NO_RETRY[reason] then
    retry_ms = 0
  end
  -- suspended and margin_guard stop before check.lua reads the limits: no rate-limit headers
  local headers = NO_LIMITS[reason] and {} or core.rate_headers(rpm, rem_r, reset_ms, tpm, rem_t)
  headers["X-Tollgate-Reason"] = reason
  if level ~= "" then
    headers["X-Tollgate-Level"] = level
  end
  if replayed == 1 then
    headers["X-Tollgate-Replayed"] = "true"
  end
  if allowed == 1 then
    return { allow = true, hold_id = hold ~= "" and hold or nil, reason = reason, tier = tier }, headers
  end
  return { allow = false, status = 429, reason = reason, level = level ~= "" and level or nil,
           retry_after = retry_ms > 0 and ceil(retry_ms / 1000) or nil }, headers
end

return _M
