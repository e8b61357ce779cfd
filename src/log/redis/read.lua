-- Returns `{head, oldest, complete, last, entry...}`: the entries after `after` on the
-- given channels or matching the given patterns, at most `limit` of them and, past the
-- first, at most `max_bytes` of envelopes; `last` is the last seq the page covers (when it
-- is not complete). Filtering happens here, in Redis, so a read sends back only what it
-- returns: a rare pattern over a large log costs Redis a bounded scan, not the append
-- connection a stream of envelopes nobody asked for.
-- ARGV: prefix, after, limit, max_bytes, scan budget, number of channels, channels...,
-- patterns... Globs are matched by the same linear algorithm as `Pattern::matches` (Lua's
-- own patterns backtrack, which a crafted glob could make exponential).
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local oldest = tonumber(redis.call('GET', KEYS[3]) or '1')
local prefix, after, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_bytes, budget, nch = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local start = string.format('%d-0', math.max(after + 1, oldest))
local out = {head, oldest, 1, after}
local bytes = 0
local function field(e, name)
  local f = e[2]
  for j = 1, #f, 2 do if f[j] == name then return f[j + 1] end end
  return nil
end
-- Adds an entry unless the page is full; returns false when it is.
local function take(e, seq)
  local size = #(field(e, 'e') or '')
  if #out - 4 >= limit or (#out > 4 and bytes + size > max_bytes) then
    out[3] = 0
    return false
  end
  bytes = bytes + size
  out[#out + 1] = e
  out[4] = seq
  return true
end
local function glob(p, s)
  -- Notice channels ('$...') are matched only by notice patterns, as in Rust.
  if string.byte(s, 1) == 36 and string.byte(p, 1) ~= 36 then return false end
  local pi, si, sp, ss = 1, 1, 0, 0
  local pl, sl = #p, #s
  while si <= sl do
    local pc = string.byte(p, pi)
    if pi <= pl and pc == 42 then
      sp, ss, pi = pi, si, pi + 1
    elseif pi <= pl and pc == string.byte(s, si) then
      pi, si = pi + 1, si + 1
    elseif sp > 0 then
      pi, ss = sp + 1, ss + 1
      si = ss
    else
      return false
    end
  end
  while pi <= pl and string.byte(p, pi) == 42 do pi = pi + 1 end
  return pi > pl
end
local channels, patterns = {}, {}
for i = 7, 6 + nch do channels[ARGV[i]] = true end
for i = 7 + nch, #ARGV do patterns[#patterns + 1] = ARGV[i] end
if #patterns > 0 then
  local r = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', budget)
  if #r >= budget then out[3] = 0 end
  for _, e in ipairs(r) do
    local seq = tonumber(string.match(e[1], '^%d+'))
    local c = field(e, 'c') or ''
    local hit = channels[c] or false
    for _, p in ipairs(patterns) do
      if hit then break end
      hit = glob(p, c)
    end
    if hit and not take(e, seq) then return out end
    out[4] = seq
  end
  return out
end
local seqs = {}
for i = 7, 6 + nch do
  local r = redis.call('XRANGE', prefix .. ':ch:' .. ARGV[i], start, '+', 'COUNT', limit + 1)
  if #r > limit then out[3] = 0 end
  for _, e in ipairs(r) do seqs[#seqs + 1] = tonumber(string.match(e[1], '^%d+')) end
end
table.sort(seqs)
local last = nil
for _, s in ipairs(seqs) do
  if s ~= last then
    last = s
    local id = string.format('%d-0', s)
    local r = redis.call('XRANGE', KEYS[2], id, id)
    if r[1] and not take(r[1], s) then return out end
  end
end
return out
