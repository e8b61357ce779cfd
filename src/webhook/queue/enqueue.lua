#!lua
-- Queues the given seqs past the endpoint's stored cursor and moves the cursor, atomically,
-- so each event is queued once whichever node gets there first. -1: no such endpoint.
local p, id, now, cursor = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HEXISTS', p .. ':wh:endpoints', id) == 0 then return -1 end
local cur = tonumber(redis.call('HGET', p .. ':wh:cursor', id) or '0')
local n = 0
for i = 5, #ARGV do
  local s = ARGV[i]
  if cursor == '' or tonumber(s) > cur then
    redis.call('ZADD', p .. ':wh:due:' .. id, now, s)
    redis.call('ZADD', p .. ':wh:pending:' .. id, s, s)
    redis.call('HSET', p .. ':wh:tasks:' .. id, s, 0)
    redis.call('HDEL', p .. ':wh:claims:' .. id, s)
    n = n + 1
  end
end
if cursor ~= '' and tonumber(cursor) > cur then
  redis.call('HSET', p .. ':wh:cursor', id, cursor)
end
return n
