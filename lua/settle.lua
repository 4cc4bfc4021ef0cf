-- Settlement of N >= 1 rated usage events of one customer, in their settle sequence order, each
-- atomically and exactly once: the same as running the one-event settlement once per event, in
-- one script run (the customer's cfg read once, each spend key's TTL set once).
--
-- Idempotency without a record per event: the rating transaction gives each of a customer's
-- events the next settle sequence number (processed_events.settle_seq), and `settled` holds the
-- highest number settled. For event i with sequence s:
--   s <= mark      a replay: changes nothing (replied from the outbox if its results are there)
--   s == mark + 1  settled now, and the mark advances
--   s >  mark + 1  a gap: a rater died between its PostgreSQL commit and its settle while this
--                  customer's later events were rated. Nothing is skipped: the run stops here and
--                  replies how far it got; the caller settles the missing numbers first (from
--                  their stored figures) and sends the rest again.
-- The outbox keeps what PostgreSQL must still record (hold released, promotion) of each event
-- that named a hold or promoted, until the rater has recorded it and deletes the field: a crash
-- between this script and that record leaves the results for the redelivery. Memory: the mark
-- per customer, plus outbox fields only for events settled and not yet recorded.
--
-- KEYS: 1 cfg  2 wallet  3 held  4 holds  5 hold_exp  6 settled (mark)  7 outbox
--       8 inflight (the levels' open holds: a released hold leaves them)          -- once
--       then per event i (1..N), in order: its spend (period of event i)
--                                the tokens/min bucket of the event's API key
--                                     (KEYS[1] when the event names no key: never touched)
--                                then L_i level spend keys (period of event i) of the levels of
--                                     the event's key path that count spend (key, app, team)
--                                                                    -- all carry the customer hash tag
-- ARGV: 1 spend ttl (ms)                                             -- once
--       then per event i, from b = 1 + 7(i-1):
--       b+1 settle sequence number (>= 1)  b+2 hold id ('' = none, e.g. a fail-open event)
--       b+3 wallet debit (micros)  b+4 spend (micros)  b+5 actual tokens
--       b+6 may promote: 1 when the event's period is the current one (a late event of a closed
--           period must not promote this period's tier)
--       b+7 L_i: how many level spend keys follow the event's two keys (0 for a key without a path)
-- Reply: {done, mark, r_1 .. r_done}: the first `done` events were handled; done < N means a gap
--        at event done+1 (its sequence > mark + 1, mark = the settled high-water mark now);
--        done = -1: the customer has no cfg (Redis lost its projection): nothing was done, the
--        caller retries once the projection is rebuilt (the rebuild writes the mark from PostgreSQL).
--        Each r_i = {replayed, hold released (micros), wallet after, spend after, promoted from, to}
--        replayed: 0 settled now, 1 a replay with the results of its settlement (from the outbox,
--        still to be recorded), 2 a replay with nothing left to record (figures are today's).
--        Money as decimal strings (Lua numbers are doubles; the strings come from Redis itself,
--        which counts in 64-bit integers); from/to are '' when there was no promotion.
--
-- The tokens/min bucket named by the hold (`amount:tokens:key id`) is corrected only if it is the
-- declared key of the event: a hold naming another key than the event does is not corrected.

local n = (#ARGV - 1) / 7
local nkeys = 8 + 2 * n
if n >= 1 and n == math.floor(n) then
  for i = 1, n do nkeys = nkeys + (tonumber(ARGV[7 * i + 1]) or -1e9) end
end
if n < 1 or n ~= math.floor(n) or #KEYS ~= nkeys then
  return redis.error_reply('ERR settle.lua: 8 + 2N + sum(L_i) keys and 1 + 7N args for N >= 1 events')
end

local WINDOW = 60000
local spend_ttl = ARGV[1]
-- Only the fields used (cfg has ~13: every tier's limits): HGETALL into a table cost Redis ~6 us
-- per event. Read once: this script is the only writer of 'tier' while it runs, and keeps it in
-- `tier`. A cfg always has a tier (check.lua answers not_provisioned without one).
local cfg = redis.call('HMGET', KEYS[1], 'tier', 'tiers')
local tier, tiers_json = cfg[1], cfg[2]
local mark = tonumber(redis.call('GET', KEYS[6]) or '0')
if not tier then
  return {-1, mark}
end
local tag = string.sub(KEYS[1], 1, #KEYS[1] - 4)  -- strip ':cfg'
local tiers             -- cjson.decode(tiers_json), on the first promotion check
local tpm, tpm_tier     -- tpm of tier `tpm_tier`, read on the first hold, again if the tier changed
local now               -- ms, from TIME, on the first tokens/min correction
local wallet_after      -- the wallet as Redis last returned it; nil after a debit
local expiring = {}     -- spend keys whose TTL this run has set
local start_mark = mark

local replies = {0, 0}
local done = 0
local cursor = 8  -- the last KEYS index consumed
for i = 1, n do
  local spend_key, tokens_key = KEYS[cursor + 1], KEYS[cursor + 2]
  local b = 1 + 7 * (i - 1)
  local first_level, nlevels = cursor + 3, tonumber(ARGV[b + 7])
  cursor = cursor + 2 + nlevels
  local seq = tonumber(ARGV[b + 1])
  if seq <= mark then
    local stored = redis.call('HGET', KEYS[7], ARGV[b + 1])
    local r
    if stored then
      r = cjson.decode(stored)
      r[1] = 1
    else
      r = {2, '0', redis.call('GET', KEYS[2]) or '0', redis.call('GET', spend_key) or '0', '', ''}
    end
    replies[#replies + 1] = r
  elseif seq > mark + 1 then
    break  -- a gap: the caller settles mark+1 .. seq-1 first
  else
    -- 1. Release the hold (if it is still open: the sweeper may have expired it first).
    local released = '0'
    local hold_id = ARGV[b + 2]
    if hold_id ~= '' then
      local hold = redis.call('HGET', KEYS[4], hold_id)
      if hold then
        local amount, est, key_id, levels = string.match(hold, '^(-?%d+):(%d*):([^:]*):?(.*)$')
        if not amount then amount, est, key_id, levels = hold, '0', '', '' end  -- tolerate a bare amount
        redis.call('HDEL', KEYS[4], hold_id)
        redis.call('ZREM', KEYS[5], hold_id)
        redis.call('DECRBY', KEYS[3], amount)
        released = amount
        -- The levels that counted the hold (check.lua): it is no longer in flight nor held.
        for f in string.gmatch(levels, '%S+') do
          if redis.call('HINCRBY', KEYS[8], f, -1) <= 0 then redis.call('HDEL', KEYS[8], f) end
          if amount ~= '0' and redis.call('HINCRBY', KEYS[8], 'held:' .. f, -tonumber(amount)) <= 0 then
            redis.call('HDEL', KEYS[8], 'held:' .. f)
          end
        end

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
        local delta_tokens = tonumber(ARGV[b + 5]) - (tonumber(est) or 0)
        if key_id ~= '' and tpm > 0 and delta_tokens ~= 0 and tokens_key == tag .. ':rl:' .. key_id .. ':t' then
          if not now then
            local t = redis.call('TIME')
            now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
          end
          local tat = tonumber(redis.call('GET', tokens_key)) or now
          if tat < now then tat = now end
          local new_tat = tat + delta_tokens * (WINDOW / tpm)
          if new_tat <= now then
            redis.call('DEL', tokens_key)  -- a full bucket, exactly as an absent key
          elseif new_tat ~= tat then
            redis.call('SET', tokens_key, tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1)
          end
        end
      end
    end

    -- 3. Debit the wallet. The rater already split the charge between wallet and invoice; if a
    -- concurrent event raced it below zero, the debit still happens: the money was spent, and the
    -- negative balance makes check.lua refuse further prepaid traffic until a top-up.
    if ARGV[b + 3] ~= '0' then  -- postpaid: no wallet key
      redis.call('DECRBY', KEYS[2], ARGV[b + 3])
      wallet_after = nil
    end
    if not wallet_after then wallet_after = redis.call('GET', KEYS[2]) or '0' end

    -- 4. Period spend, kept a little longer than two periods so the previous one stays readable
    -- (INCRBY keeps a key's TTL: set once per spend key and run).
    redis.call('INCRBY', spend_key, ARGV[b + 4])
    if not expiring[spend_key] then
      redis.call('PEXPIRE', spend_key, spend_ttl)
      expiring[spend_key] = true
    end
    local spend_after = redis.call('GET', spend_key)
    -- The period spend of each level of the event's key path that counts it (budgets per level).
    for j = first_level, first_level + nlevels - 1 do
      redis.call('INCRBY', KEYS[j], ARGV[b + 4])
      if not expiring[KEYS[j]] then
        redis.call('PEXPIRE', KEYS[j], spend_ttl)
        expiring[KEYS[j]] = true
      end
    end

    -- 5. Promotion: the highest tier whose threshold the spend has reached, only upwards, from the
    -- tier as the earlier events of this run left it. Thresholds are compared as numbers (exact
    -- below 2^53 micros, i.e. 9 billion currency units).
    local from, to = '', ''
    if ARGV[b + 6] == '1' and tiers_json then
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
    if hold_id ~= '' or to ~= '' then  -- something PostgreSQL must record: kept until it has
      redis.call('HSET', KEYS[7], ARGV[b + 1], cjson.encode(reply))
    end
    mark = seq
    replies[#replies + 1] = reply
  end
  done = i
end
if mark ~= start_mark then
  redis.call('SET', KEYS[6], mark)
end
replies[1], replies[2] = done, mark
return replies
