-- One customer's hot-path state as rebuilt from PostgreSQL (control.projection.rebuild), written atomically:
-- a check.lua running meanwhile sees the customer entirely as it was or entirely as rebuilt, never
-- a wallet deleted and not yet set. Every value is absolute: running it twice changes nothing.
--
-- KEYS: 1 cfg  2 wallet  3 held  4 holds  5 hold_exp  then 6.. spend(period) of each period rebuilt
--                                                                    -- all carry the customer hash tag
-- ARGV: 1 wallet (micros; '' = no wallet key, e.g. postpaid)  2 held (micros: the holds' sum)
--       3 spend ttl (ms)  4 F, cfg fields  5 H, open holds
--       then one amount per spend key (micros; '' = no spend in that period)
--       then F field, value pairs of cfg
--       then H triples: hold id, hold value ("amount:tokens:key id"), expiry (ms since epoch)
-- Reply: 1
-- Not touched: rate-limit buckets and gateway-retry records (not rebuilt, on purpose), the
-- sweeper's outbox.

local nspend = #KEYS - 5
local nf, nh = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('DEL', unpack(KEYS))

if ARGV[1] ~= '' then redis.call('SET', KEYS[2], ARGV[1]) end
for i = 1, nspend do
  local amount = ARGV[5 + i]
  if amount ~= '' then redis.call('SET', KEYS[5 + i], amount, 'PX', ARGV[3]) end
end

local h = 5 + nspend + 2 * nf
for i = 0, nh - 1 do
  local b = h + 3 * i
  redis.call('HSET', KEYS[4], ARGV[b + 1], ARGV[b + 2])
  redis.call('ZADD', KEYS[5], ARGV[b + 3], ARGV[b + 1])
end
if nh > 0 then redis.call('SET', KEYS[3], ARGV[2]) end

-- cfg last: it is what says "provisioned" to check.lua (atomic anyway; this keeps the intent).
local fields = {}
for i = 6 + nspend, 5 + nspend + 2 * nf do fields[#fields + 1] = ARGV[i] end
if nf > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
return 1
