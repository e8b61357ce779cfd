#!lua
-- Gives claims back: due now, no claim token. Returns how many were still held.
local p, now = ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV, 3 do
  local id, seq, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HGET', p .. ':wh:claims:' .. id, seq) == token then
    redis.call('HDEL', p .. ':wh:claims:' .. id, seq)
    redis.call('ZADD', p .. ':wh:due:' .. id, 'XX', now, seq)
    n = n + 1
  end
end
return n
