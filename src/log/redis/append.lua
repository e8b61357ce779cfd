#!lua
local p, now, window, floor = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {-1}
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < floor then
  redis.call('SET', KEYS[1], ARGV[4])
  out[1] = cur
end
for i = 5, #ARGV, 4 do
  local channel, kind, id, tail = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local prev = false
  local dkey = false
  if id ~= '' then
    dkey = p .. ':dedup:' .. channel .. '|' .. id
    prev = redis.call('GET', dkey)
  end
  if prev then
    out[#out + 1] = tonumber(prev)
    out[#out + 1] = 1
  else
    local seq = redis.call('INCR', KEYS[1])
    local sid = string.format('%d-0', seq)
    redis.call('XADD', KEYS[2], sid, 'c', channel, 'k', kind, 't', now,
      'e', '{"seq":' .. string.format('%d', seq) .. tail)
    redis.call('XADD', p .. ':ch:' .. channel, sid, 's', '')
    redis.call('SADD', KEYS[3], channel)
    if dkey then redis.call('SET', dkey, seq, 'PX', window) end
    out[#out + 1] = seq
    out[#out + 1] = 0
  end
end
return out
