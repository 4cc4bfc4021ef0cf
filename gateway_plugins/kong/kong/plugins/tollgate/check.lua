-- The hot-path decision: rate limits, prepaid balance, spend caps, in-flight limits and the Margin
-- Guard at every level of the billing hierarchy (key, app or agent, team, customer), atomically,
-- in one call.
--
-- KEYS: 1 cfg  2 wallet  3 held  4 holds  5 hold_exp  6 spend(period)  7 request(idem)
--       8 rate_requests(key)  9 rate_tokens(key)
--       10 limits  11 guard  12 inflight  13 the key's level spend(period)
--       14 the customer's level rate_requests  15 its rate_tokens
--       when the key has an app (ARGV 10 not ''): 16 app rate_requests  17 app rate_tokens
--       18 app spend(period)  19 team rate_requests  20 team rate_tokens  21 team spend(period)
--                                                          -- all carry the customer hash tag
--       (a caller passing only KEYS 1-9 gets the checks of before the hierarchy: no level limits,
--       no in-flight limits, no Margin Guard; the enforcer always passes them all)
-- ARGV: 1 hold_id  2 requests  3 tokens  4 estimated cost (micros)  5 hold ttl (ms)
--       6 idempotency ttl (ms)  7 key id  8 deadline (ms since epoch in Redis's clock, optional)
--       9 session id ('' = none)  10 app id ('' = none)  11 app kind (app|agent)  12 team id
-- Past the deadline (Redis TIME) the script writes nothing and replies reason 'expired': the
-- enforcer has given up on it (answered fail_open), so a hold placed now would have no owner.
-- That covers a command Redis runs late: after a SIGSTOP/SIGCONT, from a dropped connection.
-- A hold is stored as "amount:estimated tokens:key id", followed by ":<levels>" (space-separated
-- level fields, e.g. "key:k1 app:a1") when levels count their open holds: settlement releases the
-- amount, corrects the key's tokens/min budget by (actual - estimated) tokens, and takes the hold
-- out of each listed level's in-flight count and held amount (KEYS 12).
-- Idempotency: an ALLOW stores only its hold id under the request id (KEYS 7, PX ARGV 6), the
-- one thing a retry cannot recompute. A retry (the record exists) is a replay: the same ALLOW and
-- hold id, nothing charged or written, 'remaining' as it is now, replayed 1. A DENY stores nothing.
-- Levels: 'key', 'app' or 'agent' (the app's kind), 'team', 'customer' ('session' for a guard on
-- the request's session). Level limits (KEYS 10, field key:<id> / app:<id> / team:<id> / customer
-- -> "rpm:tpm:cap micros:max in flight", '' = not set) are absolute; the key's own rpm/tpm replace
-- the plan's per-key limits (cfg), its cap and in-flight come on top. The customer's spend cap
-- stays cfg's cap.<tier>.
-- Reasons, in this order: suspended (cfg `status` not active), margin_guard (a field of KEYS 11 on
-- the request's path or session is set; the most specific level decides), rate_limited_requests /
-- rate_limited_tokens (key, app, team, customer), concurrency_limited (a level's open holds at its
-- max_in_flight), insufficient_balance, spend_cap (key, app, team, then the customer's cap), ok;
-- and not_provisioned/expired (no decision).
-- Reply: {allowed 1|0, reason, hold_id, retry_after_ms, remaining_requests, remaining_tokens,
--         available_balance (micros), remaining_cap (micros; nil when there is no cap; the tightest
--         of the levels' caps), tier, limit_requests, limit_tokens, reset_ms, replayed 1|0,
--         level ('' when the reason has none: ok, not_provisioned, expired)}
-- Rate limits are GCRA (a token bucket with no window edges): the key stores the theoretical
-- arrival time (TAT, ms); a burst of up to the per-minute limit is allowed, then one unit per
-- 60000/limit ms. On DENY nothing is written.

local WINDOW = 60000

local replay = redis.call('GET', KEYS[7])  -- the hold id of this request's ALLOW, if any
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = tonumber(ARGV[8])
if not replay and deadline and now > deadline then  -- a replay writes nothing: no deadline
  return {0, 'expired', '', 0, 0, 0, 0, false, '', 0, 0, 0, 0, ''}
end

-- Only the fields used, with HMGET: cfg holds every tier's limits, and HGETALL into a table
-- cost Redis ~6 us per call (as measured for settle.lua). No tier: never provisioned.
local cfg = redis.call('HMGET', KEYS[1], 'tier', 'mode', 'status')
local tier, mode, status = cfg[1], cfg[2], cfg[3]
if not tier then
  return {0, 'not_provisioned', '', 0, 0, 0, 0, false, '', 0, 0, 0, 0, ''}
end
-- A suspended (or archived) customer is refused before anything else, and nothing is written.
-- No status field (a cfg projected before statuses existed): active.
if status and status ~= 'active' and not replay then
  return {0, 'suspended', '', 0, 0, 0, 0, false, tier, 0, 0, 0, 0, 'customer'}
end

-- The hierarchy: the request's levels, most specific first. Two HMGETs whatever the path (a
-- customer without guards or level limits has neither hash: two lookups of a missing key).
local key_id = ARGV[7]
local levels = {}  -- {name, field, rpm, tpm, cap, max in flight, KEYS index of its rate_requests, rate_tokens, spend}
if #KEYS >= 15 then
  -- No tables and no unpack until a level has limits: the common case (no guard, no level limits)
  -- costs the two HMGETs and nothing else.
  local app, team = ARGV[10] or '', ARGV[12] or ''
  local kf = 'key:' .. key_id
  local af, tf = false, false
  if app ~= '' then af, tf = 'app:' .. app, 'team:' .. team end
  local kind = (app ~= '' and ARGV[11] ~= '' and ARGV[11]) or 'app'
  if not replay then  -- a replay of an earlier ALLOW still replays (as for suspended)
    -- the most specific set flag decides: session, key, app/agent, team, customer
    local g
    if af then
      g = redis.call('HMGET', KEYS[11], 'session:' .. (ARGV[9] or ''), kf, af, tf, 'customer')
    else
      g = redis.call('HMGET', KEYS[11], 'session:' .. (ARGV[9] or ''), kf, 'customer')
    end
    if g[1] and (ARGV[9] or '') ~= '' then
      return {0, 'margin_guard', '', 0, 0, 0, 0, false, tier, 0, 0, 0, 0, 'session'}
    end
    for i = 2, #g do
      if g[i] then
        local names = af and {'key', kind, 'team', 'customer'} or {'key', 'customer'}
        return {0, 'margin_guard', '', 0, 0, 0, 0, false, tier, 0, 0, 0, 0, names[i - 1]}
      end
    end
  end
  local v
  if af then v = redis.call('HMGET', KEYS[10], kf, af, tf, 'customer') else v = redis.call('HMGET', KEYS[10], kf, 'customer') end
  if v[1] or v[2] or v[3] or v[4] then
    levels[1] = {'key', kf, false, false, false, false, 8, 9, 13}
    if af then
      levels[2] = {kind, af, false, false, false, false, 16, 17, 18}
      levels[3] = {'team', tf, false, false, false, false, 19, 20, 21}
    end
    levels[#levels + 1] = {'customer', 'customer', false, false, false, false, 14, 15, false}
    for i = 1, #levels do
      if v[i] then
        local a, b, c, d = string.match(v[i], '^(%d*):(%d*):(%d*):(%d*)$')
        local lv = levels[i]
        lv[3], lv[4], lv[5], lv[6] = tonumber(a) or false, tonumber(b) or false, tonumber(c) or false, tonumber(d) or false
      end
    end
  end
end

local lim = redis.call('HMGET', KEYS[1], 'rpm.' .. tier, 'tpm.' .. tier, 'cap.' .. tier)
local rpm = tonumber(lim[1]) or 0
local tpm = tonumber(lim[2]) or 0
local cap = tonumber(lim[3]) or -1
local key_level = levels[1]
if key_level then  -- the key's own limits replace the plan's per-key limits
  rpm = key_level[3] or rpm
  tpm = key_level[4] or tpm
end

local hold_id = ARGV[1]
local n_req = tonumber(ARGV[2])
local n_tok = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
if replay then n_req, n_tok = 0, 0 end  -- charged once already: read what is left now

-- GCRA for a cost of n against a limit per minute. Returns: allowed, new_tat, retry_ms, remaining, reset_ms
local function gcra(key, limit, n)
  if limit <= 0 then return false, now, -1, 0, 0 end
  local interval = WINDOW / limit
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + n * interval
  local over = new_tat - now - WINDOW
  if over > 0 then
    local remaining = math.floor((WINDOW - (tat - now)) / interval)
    if n > limit then return false, tat, -1, remaining, tat - now end  -- waiting cannot help
    return false, tat, math.ceil(over), remaining, tat - now
  end
  return true, new_tat, 0, math.floor((WINDOW - (new_tat - now)) / interval), new_tat - now
end

local ok_r, tat_r, retry_r, rem_r, reset_r = gcra(KEYS[8], rpm, n_req)
local ok_t, tat_t, retry_t, rem_t = gcra(KEYS[9], tpm, n_tok)
local reason, retry, level = 'ok', 0, ''
if not ok_r then
  reason, retry, level = 'rate_limited_requests', retry_r, 'key'
elseif not ok_t then
  reason, retry, level = 'rate_limited_tokens', retry_t, 'key'
end

-- The levels above the key: their rate limits, then what they count of open holds.
local tats = {}      -- KEYS index -> new TAT, written on ALLOW
local tracked = {}   -- levels whose open holds are counted (in-flight, held)
local open = false   -- the in-flight hash's fields of the tracked levels
for i = 1, #levels do
  local lv = levels[i]
  if i > 1 and not replay then
    for j = 0, 1 do
      local limit, n = lv[3 + j], (j == 0) and n_req or n_tok
      if limit and reason == 'ok' and n > 0 then
        local ok, tat, r = gcra(KEYS[lv[7 + j]], limit, n)
        if ok then
          tats[lv[7 + j]] = tat
        else
          reason, retry, level = (j == 0) and 'rate_limited_requests' or 'rate_limited_tokens', r, lv[1]
        end
      end
    end
  end
  if lv[6] or (lv[5] and lv[9]) then tracked[#tracked + 1] = lv end
end
if #tracked > 0 and not replay then
  local fields = {}
  for i, lv in ipairs(tracked) do fields[2 * i - 1], fields[2 * i] = lv[2], 'held:' .. lv[2] end
  open = redis.call('HMGET', KEYS[12], unpack(fields))
end

local balance = tonumber(redis.call('GET', KEYS[2]) or '0')
local held = tonumber(redis.call('GET', KEYS[3]) or '0')
local available = balance - held
-- false (a nil reply) means no cap: any integer, -1 included, is a real remainder (over cap)
local cap_left = false
if cap >= 0 then cap_left = cap - tonumber(redis.call('GET', KEYS[6]) or '0') - held end
local customer_left = cap_left
-- Each level's spend cap: its period spend and what its open holds hold, as the customer's cap.
local level_left = {}  -- tracked index -> what the level's cap leaves
if open then
  for i, lv in ipairs(tracked) do
    if lv[5] and lv[9] then
      local left = lv[5] - tonumber(redis.call('GET', KEYS[lv[9]]) or '0') - (tonumber(open[2 * i]) or 0)
      level_left[i] = left
      if cap_left == false or left < cap_left then cap_left = left end
    end
  end
end

if replay then
  -- A record of a version that stored the whole reply (JSON) during a rolling upgrade: its hold id.
  if string.byte(replay) == 91 then replay = cjson.decode(replay)[3] end
  return {1, 'ok', replay, 0, rem_r, rem_t, available, cap_left, tier, rpm, tpm, reset_r, 1, ''}
end

if reason == 'ok' and open then
  for i, lv in ipairs(tracked) do
    if lv[6] and (tonumber(open[2 * i - 1]) or 0) >= lv[6] then
      reason, retry, level = 'concurrency_limited', 1000, lv[1]  -- a slot frees when a hold goes
      break
    end
  end
end
if reason == 'ok' and (mode == 'prepaid' or mode == 'hybrid') and available < cost then
  reason, level = 'insufficient_balance', 'customer'
end
if reason == 'ok' then
  for i, lv in ipairs(tracked) do
    if level_left[i] and level_left[i] < cost then
      reason, level = 'spend_cap', lv[1]
      break
    end
  end
end
if reason == 'ok' and customer_left and customer_left < cost then
  reason, level = 'spend_cap', 'customer'
end

if reason ~= 'ok' then
  -- report what is left now, not what would have been left had this request been allowed
  if ok_r then rem_r = rem_r + n_req end
  if ok_t then rem_t = rem_t + n_tok end
  return {0, reason, '', retry, rem_r, rem_t, available, cap_left, tier, rpm, tpm, reset_r, 0, level}
end

-- ALLOW: consume the budgets and place the hold.
if n_req > 0 then redis.call('SET', KEYS[8], tostring(tat_r), 'PX', math.ceil(tat_r - now) + 1) end
if n_tok > 0 then redis.call('SET', KEYS[9], tostring(tat_t), 'PX', math.ceil(tat_t - now) + 1) end
local ttl = tonumber(ARGV[5])
for k, tat in pairs(tats) do redis.call('SET', KEYS[k], tostring(tat), 'PX', math.ceil(tat - now) + 1) end
local value = ARGV[4] .. ':' .. ARGV[3] .. ':' .. key_id
if #tracked > 0 then
  local fields = {}
  for i, lv in ipairs(tracked) do
    fields[i] = lv[2]
    redis.call('HINCRBY', KEYS[12], lv[2], 1)
    if cost ~= 0 then redis.call('HINCRBY', KEYS[12], 'held:' .. lv[2], ARGV[4]) end
  end
  value = value .. ':' .. table.concat(fields, ' ')
end
redis.call('HSET', KEYS[4], hold_id, value)
redis.call('INCRBY', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[5], now + ttl, hold_id)
available = available - cost
if cap_left then cap_left = cap_left - cost end
redis.call('SET', KEYS[7], hold_id, 'PX', ARGV[6])
return {1, 'ok', hold_id, 0, rem_r, rem_t, available, cap_left, tier, rpm, tpm, reset_r, 0, ''}
