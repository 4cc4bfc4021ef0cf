-- Credit a prepaid wallet once per top-up id (a retried top-up never credits twice).
--
-- KEYS: 1 wallet  2 topup marker (idempotency)         -- both carry the customer hash tag
-- ARGV: 1 amount (micros, > 0)  2 marker ttl (seconds)
-- Reply: {credited 1|0, balance (micros) after}

if redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, tonumber(redis.call('GET', KEYS[1]) or '0')}
end
local balance = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
return {1, balance}
