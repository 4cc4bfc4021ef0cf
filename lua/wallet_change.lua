-- Change a prepaid wallet once per wallet transaction id (credit grants, adjustments, grant
-- expiries: control/credit_grants.py, control/adjustments.py). The marker makes a retry, or a
-- PostgreSQL commit lost after this ran, change nothing twice.
--
-- KEYS: 1 wallet  2 marker (idempotency, the transaction id)     -- both carry the customer hash tag
-- ARGV: 1 change (micros, signed, non-zero)  2 marker ttl (seconds)
--       3 floor: '' = none, else the lowest balance a debit may leave (micros; a debit that would
--         leave less changes nothing)
-- Reply: {1 changed | 0 already changed (a retry) | -1 refused by the floor, balance (micros) after}

if redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, tonumber(redis.call('GET', KEYS[1]) or '0')}
end
local change = tonumber(ARGV[1])
if ARGV[3] ~= '' and change < 0 then
  local balance = tonumber(redis.call('GET', KEYS[1]) or '0')
  if balance + change < tonumber(ARGV[3]) then
    return {-1, balance}
  end
end
local balance = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
return {1, balance}
