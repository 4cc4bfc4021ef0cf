-- Release one customer's holds whose expiry has passed (the sweeper, rater/holds.py).
--
-- KEYS: 1 held  2 holds  3 hold_exp  4 hold_released  5 inflight (the levels' open holds)
--                                                              -- all carry the customer hash tag
-- ARGV: 1 now (ms since epoch; '' = Redis TIME, the clock check.lua stamps expiries with)
--       2 at most this many holds per call (a long backlog is released over several calls)
-- Reply: {n released now, then flat hold id, "expiry ms:hold", ... of every hold in the outbox}
--        (hold = "amount:estimated tokens:key id[:levels]"). Atomic with settle.lua: a hold is released
--        by exactly one of them.
--
-- The outbox (KEYS[4]) keeps each released hold until the sweeper has recorded it in PostgreSQL
-- and deleted it (HDEL): a sweeper that dies in between leaves them there, and the next sweep
-- records them. Without it that crash lost the record for good (Redis had released the money).

local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local released = 0
for i = 1, #due, 2 do
  local id = due[i]
  local hold = redis.call('HGET', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  if hold then  -- a zset entry without a hold is only cleaned up: nothing is held for it
    redis.call('HDEL', KEYS[2], id)
    local amount, levels = string.match(hold, '^(-?%d+):%d*:[^:]*:?(.*)$')
    amount = amount or string.match(hold, '^(-?%d+)') or '0'
    redis.call('DECRBY', KEYS[1], amount)
    -- The levels that counted the hold (check.lua): it is no longer in flight nor held.
    for f in string.gmatch(levels or '', '%S+') do
      if redis.call('HINCRBY', KEYS[5], f, -1) <= 0 then redis.call('HDEL', KEYS[5], f) end
      if amount ~= '0' and redis.call('HINCRBY', KEYS[5], 'held:' .. f, -tonumber(amount)) <= 0 then
        redis.call('HDEL', KEYS[5], 'held:' .. f)
      end
    end
    redis.call('HSET', KEYS[4], id, due[i + 1] .. ':' .. hold)
    released = released + 1
  end
end
local out = redis.call('HGETALL', KEYS[4])
table.insert(out, 1, released)
return out
