-- bus_publish.lua: append events to the Redis Streams bus; say whether anything published before
-- may be gone.
-- KEYS: 1 the stream (tg:events)  2 its epoch key ({tg:events}:epoch)
--       3 this producer's high-water mark ({tg:events}:producer:<id>); all in one cluster slot
-- ARGV: 1 approximate MAXLEN (0 = none)  2 a fresh random epoch candidate
--       3 ttl of the high-water mark (ms)  then per event: partition key, event JSON
-- Reply: {epoch, id of the last entry added, the producer's high-water mark before (or false)}
-- The epoch is set once per incarnation of the stream (SET NX): a Redis that restarted empty, or
-- a stream deleted, shows a new one. The high-water mark is the id of the producer's latest
-- entry: lower than what the producer was last told means the stream lost its tail (a failover
-- to a replica that had not received it), which the epoch alone cannot show. Either way the
-- producer publishes again, from its write-ahead spool, what it cannot prove was consumed.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
end
redis.call('SET', KEYS[2], ARGV[2], 'NX')
local epoch = redis.call('GET', KEYS[2])
local before = redis.call('GET', KEYS[3])
local maxlen = tonumber(ARGV[1])
local id = false
for i = 4, #ARGV, 2 do
  if maxlen > 0 then
    id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'key', ARGV[i], 'event', ARGV[i + 1])
  else
    id = redis.call('XADD', KEYS[1], '*', 'key', ARGV[i], 'event', ARGV[i + 1])
  end
end
redis.call('SET', KEYS[3], id, 'PX', ARGV[3])
return {epoch, id, before}
