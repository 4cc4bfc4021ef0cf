-- The end of a rebuild (control.projection.rebuild): the projection marker is written only while the rebuild's
-- own "building" record is still there, i.e. Redis kept every write of this rebuild. A Redis that
-- restarted empty meanwhile lost the record with the first half of the writes: no marker then,
-- and the next rebuild starts over.
--
-- KEYS: 1 building  2 marker                 -- one hash tag: one cluster slot
-- ARGV: 1 the rebuild's generation
-- Reply: 1 marker written, 0 not
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
