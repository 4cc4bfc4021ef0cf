-- bus_floor.lua: what every consumer group of the stream has durably consumed, in which
-- incarnation of the stream, and a producer's high-water mark: one atomic snapshot (read apart,
-- a restart in between could pair an old epoch with a new, empty group and make unconsumed
-- events look consumed).
-- KEYS: 1 the stream (tg:events)  2 its epoch key ({tg:events}:epoch)
--       3 the producer's high-water mark ({tg:events}:producer:<id>)
-- Reply: {epoch or false, high-water mark or false,
--         {group, last-delivered-id, pending count, oldest pending id or false}, ...}
-- An entry is consumed by a group when its id <= last-delivered-id and, if anything is pending,
-- < the oldest pending id (acknowledged after the rater's PostgreSQL commit).
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  return {false, false}
end
local out = {redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3])}
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  local oldest = false
  if f['pending'] > 0 then
    oldest = redis.call('XPENDING', KEYS[1], f['name'])[2]
  end
  out[#out + 1] = {f['name'], f['last-delivered-id'], f['pending'], oldest}
end
return out
