-- Settlement of one rated usage event, atomically and at most once per event id.
--
-- KEYS: 1 cfg  2 wallet  3 held  4 holds  5 hold_exp  6 spend(period of the event)
--       7 settled(event id)                                   -- all carry the customer hash tag
-- ARGV: 1 hold id ('' = none, e.g. a fail-open event)  2 wallet debit (micros)
--       3 spend (micros)  4 actual tokens  5 settled-marker ttl (ms)  6 spend ttl (ms)
--       7 may promote: 1 when the event's period is the current one (a late event of a closed
--         period must not promote this period's tier)
-- Reply: {replayed 1|0, hold released (micros), wallet after, spend after, promoted from, to}
--        money as decimal strings (Lua numbers are doubles; the strings come from Redis itself,
--        which counts in 64-bit integers); from/to are '' when there was no promotion.
--
-- The key's tokens/min bucket `<tag>:rl:<key id>:t` is named by the hold, so it is not in KEYS;
-- it is built from the same hash tag, hence in the same cluster slot as KEYS[1].

local replay = redis.call('GET', KEYS[7])
if replay then
  local r = cjson.decode(replay)
  r[1] = 1
  return r
end

local WINDOW = 60000
-- Only the fields used (cfg has ~13: every tier's limits): HGETALL into a table cost Redis ~6 us
-- per event. A missing field is false (nil with HGETALL); both are falsy below.
local cfg = redis.call('HMGET', KEYS[1], 'tier', 'tiers')
local tier, tiers_json = cfg[1], cfg[2]

-- 1. Release the hold (if it is still open: the sweeper may have expired it first).
local released = '0'
local hold_id = ARGV[1]
if hold_id ~= '' then
  local hold = redis.call('HGET', KEYS[4], hold_id)
  if hold then
    local amount, est, key_id = string.match(hold, '^(-?%d+):(%d*):(.*)$')
    if not amount then amount, est, key_id = hold, '0', '' end  -- tolerate a bare amount
    redis.call('HDEL', KEYS[4], hold_id)
    redis.call('ZREM', KEYS[5], hold_id)
    redis.call('DECRBY', KEYS[3], amount)
    released = amount

    -- 2. Correct the tokens/min budget by (actual - estimated) tokens, at the current tier's rate.
    -- The bucket is a GCRA TAT: check.lua moved it forward by estimated * interval. Moving it by
    -- the difference leaves it where an exact estimate would have. Giving back never goes below
    -- now: a TAT in the past already means a full bucket, and more than full is not allowed.
    -- Taking more (estimate too low) starts from max(TAT, now), as check.lua does, and may leave
    -- the key in debt: it was really used, so the key waits for it.
    local tpm = tonumber(redis.call('HGET', KEYS[1], 'tpm.' .. (tier or ''))) or 0
    local delta_tokens = tonumber(ARGV[4]) - (tonumber(est) or 0)
    if key_id ~= '' and tpm > 0 and delta_tokens ~= 0 then
      local tag = string.sub(KEYS[1], 1, #KEYS[1] - 4)  -- strip ':cfg'
      local tkey = tag .. ':rl:' .. key_id .. ':t'
      local t = redis.call('TIME')
      local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      local tat = tonumber(redis.call('GET', tkey)) or now
      if tat < now then tat = now end
      local new_tat = tat + delta_tokens * (WINDOW / tpm)
      if new_tat <= now then
        redis.call('DEL', tkey)  -- a full bucket, exactly as an absent key
      elseif new_tat ~= tat then
        redis.call('SET', tkey, tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1)
      end
    end
  end
end

-- 3. Debit the wallet. The rater already split the charge between wallet and invoice; if a
-- concurrent event raced it below zero, the debit still happens: the money was spent, and the
-- negative balance makes check.lua refuse further prepaid traffic until a top-up.
if ARGV[2] ~= '0' then redis.call('DECRBY', KEYS[2], ARGV[2]) end  -- postpaid: no wallet key
local wallet_after = redis.call('GET', KEYS[2]) or '0'

-- 4. Period spend, kept a little longer than two periods so the previous one stays readable.
redis.call('INCRBY', KEYS[6], ARGV[3])
redis.call('PEXPIRE', KEYS[6], ARGV[6])
local spend_after = redis.call('GET', KEYS[6])

-- 5. Promotion: the highest tier whose threshold the spend has reached, only upwards. Thresholds
-- are compared as numbers (exact below 2^53 micros, i.e. 9 billion currency units).
local from, to = '', ''
if ARGV[7] == '1' and tier and tiers_json then
  local tiers = cjson.decode(tiers_json)
  local spend = tonumber(spend_after)
  local cur, best = 0, 0
  for i, t in ipairs(tiers) do
    if t[1] == tier then cur = i end
    if tonumber(t[2]) <= spend then best = i end
  end
  if best > cur then
    from, to = tier, tiers[best][1]
    redis.call('HSET', KEYS[1], 'tier', to)
  end
end

local reply = {0, released, wallet_after, spend_after, from, to}
redis.call('SET', KEYS[7], cjson.encode(reply), 'PX', ARGV[5])
return reply
