-- Undo a check.lua ALLOW that no gateway knows of: its reply reached the enforcer after it had
-- answered the request fail_open, or never reached it (the connection was lost). Release the hold
-- and give back the rate budget the check consumed, so nothing is left that no usage report will
-- settle. Idempotent; a check that placed nothing (refused, expired, never run) is a no-op.
--
-- KEYS: 1 held  2 holds  3 hold_exp  4 request(idem)  5 rate_requests(key)  6 rate_tokens(key)
--       7 cfg  8 inflight (the levels' open holds; optional)  -- all carry the customer hash tag
-- ARGV: 1 hold_id  2 requests  3 tokens (as given to check.lua)
--       4 requests/min  5 tokens/min: the limits check.lua replied with (the interval it charged);
--       '' when there was no reply: the current tier's, as settle.lua does
-- Reply: the amount released (micros); 0 when the hold is gone already (nothing to undo).
-- The levels' rate buckets above the key (app, team, customer) are not given back: an undo is rare
-- and they refill within their minute. Their in-flight counts and held amounts are (KEYS 8).

local hold = redis.call('HGET', KEYS[2], ARGV[1])
if not hold then return 0 end
local amount, levels = string.match(hold, '^(-?%d+):%d*:[^:]*:?(.*)$')
amount = amount or string.match(hold, '^(-?%d+)') or '0'
if KEYS[8] then
  for f in string.gmatch(levels or '', '%S+') do
    if redis.call('HINCRBY', KEYS[8], f, -1) <= 0 then redis.call('HDEL', KEYS[8], f) end
    if amount ~= '0' and redis.call('HINCRBY', KEYS[8], 'held:' .. f, -tonumber(amount)) <= 0 then
      redis.call('HDEL', KEYS[8], 'held:' .. f)
    end
  end
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DECRBY', KEYS[1], amount)
-- The request id's record is this hold's id: a retry of the request must be decided afresh, not replayed.
redis.call('DEL', KEYS[4])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- GCRA: check.lua moved the TAT forward by n * 60000/limit; move it back (a TAT at or before now
-- is a full bucket, the same as no key).
local function give_back(key, limit, n)
  if limit <= 0 or n <= 0 then return end
  local tat = tonumber(redis.call('GET', key))
  if not tat then return end
  local new_tat = tat - n * (60000 / limit)
  if new_tat <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1)
  end
end
local rpm, tpm = tonumber(ARGV[4]), tonumber(ARGV[5])
if not rpm or not tpm then
  local tier = redis.call('HGET', KEYS[7], 'tier') or ''
  local lim = redis.call('HMGET', KEYS[7], 'rpm.' .. tier, 'tpm.' .. tier)
  rpm, tpm = tonumber(lim[1]) or 0, tonumber(lim[2]) or 0
end
give_back(KEYS[5], rpm, tonumber(ARGV[2]) or 0)
give_back(KEYS[6], tpm, tonumber(ARGV[3]) or 0)
return tonumber(amount)
