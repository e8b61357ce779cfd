#!lua
-- Compare-and-set of one endpoint's JSON; a change moves the endpoint set's version
-- (KEYS[2]) in the same step, so a node that sees the old version has not missed it.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('INCR', KEYS[2])
  return 1
end
return 0
