#!lua
-- Records an attempt (id from a counter, spliced into the JSON the node made with id 0) and,
-- if the caller still holds the claim, applies the resolution. Returns `{attempt id, owned}`.
local p, id, seq, token, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local next_at, made, json, keep = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
if redis.call('HEXISTS', p .. ':wh:endpoints', id) == 0 then return {0, 0} end
local claims = p .. ':wh:claims:' .. id
local owned = redis.call('HGET', claims, seq) == token
local n = redis.call('INCR', p .. ':wh:attempt_seq')
redis.call('XADD', p .. ':wh:attempts:' .. id, 'MAXLEN', '~', keep, string.format('%d-0', n),
  'a', '{"id":' .. string.format('%d', n) .. string.sub(json, 8))
if owned then
  redis.call('HDEL', claims, seq)
  if kind == 'delivered' or kind == 'failed' then
    redis.call('ZREM', p .. ':wh:due:' .. id, seq)
    redis.call('ZREM', p .. ':wh:pending:' .. id, seq)
    redis.call('HDEL', p .. ':wh:tasks:' .. id, seq)
  elseif kind == 'retry' then
    redis.call('ZADD', p .. ':wh:due:' .. id, next_at, seq)
    redis.call('HSET', p .. ':wh:tasks:' .. id, seq, made)
  end
end
return {n, owned and 1 or 0}
