-- Release one customer's holds whose expiry has passed (the sweeper, rater/holds.py).
--
-- KEYS: 1 held  2 holds  3 hold_exp                         -- all carry the customer hash tag
-- ARGV: 1 now (ms since epoch; '' = Redis TIME, the clock check.lua stamps expiries with)
--       2 at most this many holds per call (a long backlog is released over several calls)
-- Reply: flat {hold id, hold ("amount:estimated tokens:key id"), expiry ms, ...} of the holds
--        released now. Atomic with settle.lua: a hold is released by exactly one of them.

local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #due, 2 do
  local id = due[i]
  local hold = redis.call('HGET', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  if hold then  -- a zset entry without a hold is only cleaned up: nothing is held for it
    redis.call('HDEL', KEYS[2], id)
    redis.call('DECRBY', KEYS[1], string.match(hold, '^(-?%d+)') or '0')
    out[#out + 1] = id
    out[#out + 1] = hold
    out[#out + 1] = due[i + 1]
  end
end
return out
