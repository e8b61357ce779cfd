#!lua
-- Claims due tasks: each claimed task's due time moves to the end of the lease and the claim
-- token is recorded. Returns `{id, seq, attempts, ...}`.
local p, now, lease_end, token, total = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local out = {}
local taken = 0
for i = 6, #ARGV, 3 do
  if taken >= total then break end
  local id, cap, ordered = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2] == '1'
  cap = math.min(cap, total - taken)
  local due = p .. ':wh:due:' .. id
  local seqs = {}
  if ordered then
    local head = redis.call('ZRANGE', p .. ':wh:pending:' .. id, 0, 0)[1]
    if head then
      local at = redis.call('ZSCORE', due, head)
      if at and tonumber(at) <= now then seqs[1] = head end
    end
  else
    seqs = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, cap)
  end
  for _, s in ipairs(seqs) do
    redis.call('ZADD', due, lease_end, s)
    redis.call('HSET', p .. ':wh:claims:' .. id, s, token)
    out[#out + 1] = id
    out[#out + 1] = s
    out[#out + 1] = redis.call('HGET', p .. ':wh:tasks:' .. id, s) or '0'
    taken = taken + 1
  end
end
return out
