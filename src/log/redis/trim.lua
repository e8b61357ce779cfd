#!lua
-- Moves `oldest` forward by count and age (at most `chunk` per call) and deletes what fell
-- out, in one step. Returns how many seqs it moved past.
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local oldest = tonumber(redis.call('GET', KEYS[3]) or '1')
local chunk = tonumber(ARGV[3])
local target = math.max(oldest, head - tonumber(ARGV[1]) + 1)
target = math.min(target, oldest + chunk)
local cutoff = tonumber(ARGV[2])
if target < oldest + chunk then
  local r = redis.call('XRANGE', KEYS[2], string.format('%d-0', target), '+', 'COUNT', chunk)
  local stopped = false
  for _, e in ipairs(r) do
    local seq = tonumber(string.match(e[1], '^%d+'))
    local f = e[2]
    local t = 0
    for j = 1, #f, 2 do if f[j] == 't' then t = tonumber(f[j + 1]) end end
    if t >= cutoff or seq >= oldest + chunk then stopped = true break end
    target = seq + 1
  end
  if not stopped and #r < chunk then target = math.max(target, head + 1) end
  target = math.min(target, oldest + chunk)
end
if target > oldest then
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', target))
  redis.call('SET', KEYS[3], string.format('%d', target))
end
return target - oldest
