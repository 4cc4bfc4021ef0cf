-- bus_publish.lua: append events to the Redis Streams bus and name the stream's incarnation.
-- KEYS: 1 the stream (tg:events)  2 its epoch key ({tg:events}:epoch, the same cluster slot)
-- ARGV: 1 approximate MAXLEN (0 = none)  2 a fresh random epoch candidate
--       then per event: partition key, event JSON
-- Reply: {epoch, id of the last entry added}
-- The epoch is set once per incarnation of the stream (SET NX) and returned with every publish:
-- a Redis that restarted empty, or a stream deleted, shows a new epoch, and each producer then
-- knows that what it published before may be gone and republishes it from its write-ahead log.
-- A stream that is missing while an epoch is left (the stream alone was deleted) starts a new one.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
end
redis.call('SET', KEYS[2], ARGV[2], 'NX')
local epoch = redis.call('GET', KEYS[2])
local maxlen = tonumber(ARGV[1])
local id = false
for i = 3, #ARGV, 2 do
  if maxlen > 0 then
    id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'key', ARGV[i], 'event', ARGV[i + 1])
  else
    id = redis.call('XADD', KEYS[1], '*', 'key', ARGV[i], 'event', ARGV[i + 1])
  end
end
return {epoch, id}
