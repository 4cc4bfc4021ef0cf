-- Settlement of N >= 1 rated usage events of one customer, in order, each atomically and at most
-- once per event id: the same as running the one-event settlement once per event, in one script
-- run (the customer's cfg read once, each spend key's TTL set once).
--
-- KEYS: 1 cfg  2 wallet  3 held  4 holds  5 hold_exp                  -- once
--       then per event i (1..N): 4+2i spend(period of event i)  5+2i settled(event id i)
--                                                                    -- all carry the customer hash tag
-- ARGV: 1 settled-marker ttl (ms)  2 spend ttl (ms)                  -- once
--       then per event i, from b = 2 + 5(i-1):
--       b+1 hold id ('' = none, e.g. a fail-open event)  b+2 wallet debit (micros)
--       b+3 spend (micros)  b+4 actual tokens
--       b+5 may promote: 1 when the event's period is the current one (a late event of a closed
--           period must not promote this period's tier)
-- Reply: one entry per event, in order, each
--        {replayed 1|0, hold released (micros), wallet after, spend after, promoted from, to}
--        money as decimal strings (Lua numbers are doubles; the strings come from Redis itself,
--        which counts in 64-bit integers); from/to are '' when there was no promotion.
--        An event already settled (by an earlier call, or earlier in this one: the same event id
--        twice) returns its stored reply with replayed = 1 and changes nothing.
--
-- The key's tokens/min bucket `<tag>:rl:<key id>:t` is named by the hold, so it is not in KEYS;
-- it is built from the same hash tag, hence in the same cluster slot as KEYS[1].

local n = (#KEYS - 5) / 2
if n < 1 or n ~= math.floor(n) or #ARGV ~= 2 + 5 * n then
  return redis.error_reply('ERR settle.lua: 5 + 2N keys and 2 + 5N args for N >= 1 events')
end

local WINDOW = 60000
local marker_ttl, spend_ttl = ARGV[1], ARGV[2]
-- Only the fields used (cfg has ~13: every tier's limits): HGETALL into a table cost Redis ~6 us
-- per event. A missing field is false (nil with HGETALL); both are falsy below. Read once: this
-- script is the only writer of 'tier' while it runs, and keeps it in `tier`.
local cfg = redis.call('HMGET', KEYS[1], 'tier', 'tiers')
local tier, tiers_json = cfg[1], cfg[2]
local tiers             -- cjson.decode(tiers_json), on the first promotion check
local tpm, tpm_tier     -- tpm of tier `tpm_tier`, read on the first hold, again if the tier changed
local now               -- ms, from TIME, on the first tokens/min correction
local wallet_after      -- the wallet as Redis last returned it; nil after a debit
local expiring = {}     -- spend keys whose TTL this run has set

local replies = {}
for i = 1, n do
  local spend_key, settled_key = KEYS[4 + 2 * i], KEYS[5 + 2 * i]
  local b = 2 + 5 * (i - 1)
  local replay = redis.call('GET', settled_key)
  if replay then
    local r = cjson.decode(replay)
    r[1] = 1
    replies[i] = r
  else
    -- 1. Release the hold (if it is still open: the sweeper may have expired it first).
    local released = '0'
    local hold_id = ARGV[b + 1]
    if hold_id ~= '' then
      local hold = redis.call('HGET', KEYS[4], hold_id)
      if hold then
        local amount, est, key_id = string.match(hold, '^(-?%d+):(%d*):(.*)$')
        if not amount then amount, est, key_id = hold, '0', '' end  -- tolerate a bare amount
        redis.call('HDEL', KEYS[4], hold_id)
        redis.call('ZREM', KEYS[5], hold_id)
        redis.call('DECRBY', KEYS[3], amount)
        released = amount

        -- 2. Correct the tokens/min budget by (actual - estimated) tokens, at the current tier's
        -- rate. The bucket is a GCRA TAT: check.lua moved it forward by estimated * interval.
        -- Moving it by the difference leaves it where an exact estimate would have. Giving back
        -- never goes below now: a TAT in the past already means a full bucket, and more than full
        -- is not allowed. Taking more (estimate too low) starts from max(TAT, now), as check.lua
        -- does, and may leave the key in debt: it was really used, so the key waits for it.
        if tpm == nil or tpm_tier ~= tier then
          tpm = tonumber(redis.call('HGET', KEYS[1], 'tpm.' .. (tier or ''))) or 0
          tpm_tier = tier
        end
        local delta_tokens = tonumber(ARGV[b + 4]) - (tonumber(est) or 0)
        if key_id ~= '' and tpm > 0 and delta_tokens ~= 0 then
          local tag = string.sub(KEYS[1], 1, #KEYS[1] - 4)  -- strip ':cfg'
          local tkey = tag .. ':rl:' .. key_id .. ':t'
          if not now then
            local t = redis.call('TIME')
            now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
          end
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
    if ARGV[b + 2] ~= '0' then  -- postpaid: no wallet key
      redis.call('DECRBY', KEYS[2], ARGV[b + 2])
      wallet_after = nil
    end
    if not wallet_after then wallet_after = redis.call('GET', KEYS[2]) or '0' end

    -- 4. Period spend, kept a little longer than two periods so the previous one stays readable
    -- (INCRBY keeps a key's TTL: set once per spend key and run).
    redis.call('INCRBY', spend_key, ARGV[b + 3])
    if not expiring[spend_key] then
      redis.call('PEXPIRE', spend_key, spend_ttl)
      expiring[spend_key] = true
    end
    local spend_after = redis.call('GET', spend_key)

    -- 5. Promotion: the highest tier whose threshold the spend has reached, only upwards, from the
    -- tier as the earlier events of this run left it. Thresholds are compared as numbers (exact
    -- below 2^53 micros, i.e. 9 billion currency units).
    local from, to = '', ''
    if ARGV[b + 5] == '1' and tier and tiers_json then
      tiers = tiers or cjson.decode(tiers_json)
      local spend = tonumber(spend_after)
      local cur, best = 0, 0
      for j, t in ipairs(tiers) do
        if t[1] == tier then cur = j end
        if tonumber(t[2]) <= spend then best = j end
      end
      if best > cur then
        from, to = tier, tiers[best][1]
        redis.call('HSET', KEYS[1], 'tier', to)
        tier = to
      end
    end

    local reply = {0, released, wallet_after, spend_after, from, to}
    redis.call('SET', settled_key, cjson.encode(reply), 'PX', marker_ttl)
    replies[i] = reply
  end
end
return replies
