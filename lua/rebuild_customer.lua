-- One customer's hot-path state as rebuilt from PostgreSQL (control.projection.rebuild), written atomically:
-- a check.lua running meanwhile sees the customer entirely as it was or entirely as rebuilt, never
-- a wallet deleted and not yet set. Every value is absolute: running it twice changes nothing.
--
-- KEYS: 1 cfg  2 wallet  3 held  4 holds  5 hold_exp  6 limits  7 inflight
--       then P spend(period) keys of each period rebuilt
--       then the level spend keys rebuilt (tg:{c}:lv:<level>:s:<period>)
--                                                                    -- all carry the customer hash tag
-- ARGV: 1 wallet (micros; '' = no wallet key, e.g. postpaid)  2 held (micros: the holds' sum)
--       3 spend ttl (ms)  4 F, cfg fields  5 H, open holds  6 P, period spend keys
--       7 M, limits fields  8 I, inflight fields
--       then P amounts, one per spend key (micros; '' = no spend in that period)
--       then F field, value pairs of cfg
--       then H triples: hold id, hold value ("amount:tokens:key id[:levels]"), expiry (ms since epoch)
--       then M field, value pairs of the level limits, then I field, value pairs of inflight
--       then one amount per level spend key (micros)
-- Reply: 1
-- Not touched: rate-limit buckets and gateway-retry records (not rebuilt, on purpose), the
-- sweeper's outbox, the Margin Guard's flags (set by others; not in PostgreSQL here).

local nf, nh, np, nm, ni = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
redis.call('DEL', unpack(KEYS))

if ARGV[1] ~= '' then redis.call('SET', KEYS[2], ARGV[1]) end
for i = 1, np do
  local amount = ARGV[8 + i]
  if amount ~= '' then redis.call('SET', KEYS[7 + i], amount, 'PX', ARGV[3]) end
end

local h = 8 + np + 2 * nf
for i = 0, nh - 1 do
  local b = h + 3 * i
  redis.call('HSET', KEYS[4], ARGV[b + 1], ARGV[b + 2])
  redis.call('ZADD', KEYS[5], ARGV[b + 3], ARGV[b + 1])
end
if nh > 0 then redis.call('SET', KEYS[3], ARGV[2]) end

local function pairs_of(first, count)
  local out = {}
  for i = first, first + 2 * count - 1 do out[#out + 1] = ARGV[i] end
  return out
end
local m = h + 3 * nh
if nm > 0 then redis.call('HSET', KEYS[6], unpack(pairs_of(m + 1, nm))) end
if ni > 0 then redis.call('HSET', KEYS[7], unpack(pairs_of(m + 1 + 2 * nm, ni))) end
local s = m + 2 * nm + 2 * ni
for i = 8 + np, #KEYS do
  redis.call('SET', KEYS[i], ARGV[s + i - 7 - np], 'PX', ARGV[3])
end

-- cfg last: it is what says "provisioned" to check.lua (atomic anyway; this keeps the intent).
if nf > 0 then redis.call('HSET', KEYS[1], unpack(pairs_of(9 + np, nf))) end
return 1
