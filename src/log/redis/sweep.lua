#!lua
-- Trims one channel index to the log's retained range; drops it (and its set entry) once
-- empty. A script, so an append cannot slip in between the length check and the delete.
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[1])
end
return 0
