#!lua
-- Presence and occupancy of a cluster, one script so every operation shares the same
-- join/leave rules and runs atomically. ARGV[1] = key prefix, ARGV[2] = operation.
-- Keys (P = prefix):
--   P:pr:m:<ch>    hash user -> info JSON        (members)
--   P:pr:n:<ch>    hash user -> connections
--   P:pr:u:<ch>    zset of users, score 0        (paging in user order)
--   P:pr:node:<id> hash conn -> "<ch>\n<user>"   (a node's present connections)
--   P:pr:occ:<id>  hash ch -> subscribers        (a node's occupancy)
--   P:pr:occ       hash ch -> subscribers        (the cluster's)
--   P:pr:chans     zset of channels with subscribers or members, score 0
--   P:pr:nodes     zset node -> last heartbeat (ms)
--   P:pr:ver       change counter
-- Each membership change is published on P:pr:changes as
-- {"c":channel,"u":user,"j":joined,"v":version,"n":members,"i":info}; write operations
-- return those changes plus {"o":"occupied"|"vacated","c":channel} for the webhook side.
local p, op = ARGV[1], ARGV[2]
local told = {}

local function key(kind, name) return p .. ':pr:' .. kind .. ':' .. name end

local function listed(ch)
  if redis.call('HEXISTS', p .. ':pr:occ', ch) == 1 or redis.call('EXISTS', key('m', ch)) == 1 then
    redis.call('ZADD', p .. ':pr:chans', 0, ch)
  else
    redis.call('ZREM', p .. ':pr:chans', ch)
  end
end

local function change(ch, user, info, joined)
  local v = redis.call('INCR', p .. ':pr:ver')
  local n = redis.call('HLEN', key('m', ch))
  local msg = '{"c":' .. cjson.encode(ch) .. ',"u":' .. cjson.encode(user) .. ',"j":' ..
    (joined and 'true' or 'false') .. ',"v":' .. v .. ',"n":' .. n .. ',"i":' .. info .. '}'
  redis.call('PUBLISH', p .. ':pr:changes', msg)
  told[#told + 1] = msg
end

local function join(node, conn, ch, user, info)
  if redis.call('HSETNX', key('node', node), conn, ch .. '\n' .. user) == 0 then return end
  if redis.call('HINCRBY', key('n', ch), user, 1) == 1 then
    redis.call('HSET', key('m', ch), user, info)
    redis.call('ZADD', key('u', ch), 0, user)
    listed(ch)
    change(ch, user, info, true)
  end
end

local function leave(node, conn)
  local rec = redis.call('HGET', key('node', node), conn)
  if not rec then return end
  redis.call('HDEL', key('node', node), conn)
  local nl = string.find(rec, '\n', 1, true)
  local ch, user = string.sub(rec, 1, nl - 1), string.sub(rec, nl + 1)
  if redis.call('HINCRBY', key('n', ch), user, -1) <= 0 then
    local info = redis.call('HGET', key('m', ch), user) or 'null'
    redis.call('HDEL', key('n', ch), user)
    redis.call('HDEL', key('m', ch), user)
    redis.call('ZREM', key('u', ch), user)
    listed(ch)
    change(ch, user, info, false)
  end
end

local function occupy(node, ch, delta)
  local mine = tonumber(redis.call('HGET', key('occ', node), ch) or '0')
  if mine + delta < 0 then delta = -mine end
  if delta == 0 then return end
  if mine + delta == 0 then
    redis.call('HDEL', key('occ', node), ch)
  else
    redis.call('HSET', key('occ', node), ch, mine + delta)
  end
  local total = redis.call('HINCRBY', p .. ':pr:occ', ch, delta)
  if total <= 0 then redis.call('HDEL', p .. ':pr:occ', ch) end
  listed(ch)
  if delta > 0 and total == delta then
    told[#told + 1] = '{"o":"occupied","c":' .. cjson.encode(ch) .. '}'
  elseif delta < 0 and total <= 0 then
    told[#told + 1] = '{"o":"vacated","c":' .. cjson.encode(ch) .. '}'
  end
end

-- Everything a node holds leaves: it died (reap) or it is about to say it all again (sync).
local function drop(node, keep_conns, keep_occ)
  for _, conn in ipairs(redis.call('HKEYS', key('node', node))) do
    if not (keep_conns and keep_conns[conn]) then leave(node, conn) end
  end
  local occ = redis.call('HGETALL', key('occ', node))
  for i = 1, #occ, 2 do
    if not (keep_occ and keep_occ[occ[i]]) then occupy(node, occ[i], -tonumber(occ[i + 1])) end
  end
end

if op == 'join' then
  join(ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
elseif op == 'leave' then
  leave(ARGV[3], ARGV[4])
elseif op == 'occupy' then
  occupy(ARGV[3], ARGV[4], tonumber(ARGV[5]))
elseif op == 'beat' then
  -- node, now, timeout, most nodes to reap. Returns {known, changes...}: known = 0 means
  -- this node's state is not here (reaped, or Redis lost it) and it must sync.
  local node, now, timeout = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  local known = redis.call('ZSCORE', p .. ':pr:nodes', node) and 1 or 0
  redis.call('ZADD', p .. ':pr:nodes', now, node)
  local dead = redis.call('ZRANGEBYSCORE', p .. ':pr:nodes', '-inf', now - timeout, 'LIMIT', 0, tonumber(ARGV[6]))
  for _, d in ipairs(dead) do
    drop(d)
    redis.call('DEL', key('node', d), key('occ', d))
    redis.call('ZREM', p .. ':pr:nodes', d)
  end
  table.insert(told, 1, known)
  return told
elseif op == 'sync' then
  -- node, now, n, then n x (conn, ch, user, info), then (ch, subscribers) pairs: makes
  -- Redis hold exactly this node's state, telling only what differs.
  local node, n = ARGV[3], tonumber(ARGV[5])
  local conns, occ = {}, {}
  local i = 6
  for _ = 1, n do
    conns[ARGV[i]] = true
    i = i + 4
  end
  for j = i, #ARGV, 2 do occ[ARGV[j]] = tonumber(ARGV[j + 1]) end
  drop(node, conns, occ)
  for j = 6, 6 + (n - 1) * 4, 4 do
    if n > 0 then join(node, ARGV[j], ARGV[j + 1], ARGV[j + 2], ARGV[j + 3]) end
  end
  for ch, want in pairs(occ) do
    occupy(node, ch, want - tonumber(redis.call('HGET', key('occ', node), ch) or '0'))
  end
  redis.call('ZADD', p .. ':pr:nodes', tonumber(ARGV[4]), node)
elseif op == 'snapshot' then
  -- ch, limit -> {version, count, user, info, connections, ...} (no members above limit)
  local ch, limit = ARGV[3], tonumber(ARGV[4])
  local out = {tonumber(redis.call('GET', p .. ':pr:ver') or '0'), redis.call('HLEN', key('m', ch))}
  if out[2] <= limit then
    local m = redis.call('HGETALL', key('m', ch))
    for j = 1, #m, 2 do
      out[#out + 1] = m[j]
      out[#out + 1] = m[j + 1]
      out[#out + 1] = tonumber(redis.call('HGET', key('n', ch), m[j]) or '0')
    end
  end
  return out
elseif op == 'members' then
  -- ch, after ('' = from the start), limit -> {count, user, info, connections, ...}
  local ch, after, limit = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local from = after == '' and '-' or '(' .. after
  local out = {redis.call('HLEN', key('m', ch))}
  for _, user in ipairs(redis.call('ZRANGEBYLEX', key('u', ch), from, '+', 'LIMIT', 0, limit)) do
    out[#out + 1] = user
    out[#out + 1] = redis.call('HGET', key('m', ch), user) or 'null'
    out[#out + 1] = tonumber(redis.call('HGET', key('n', ch), user) or '0')
  end
  return out
elseif op == 'channels' then
  -- prefix, after, limit -> {channel, subscribers, members, ...}
  local prefix, after, limit = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local from = '[' .. prefix
  if after ~= '' and after >= prefix then from = '(' .. after end
  local out = {}
  for _, ch in ipairs(redis.call('ZRANGEBYLEX', p .. ':pr:chans', from, '+', 'LIMIT', 0, limit)) do
    if string.sub(ch, 1, #prefix) ~= prefix then break end
    out[#out + 1] = ch
    out[#out + 1] = tonumber(redis.call('HGET', p .. ':pr:occ', ch) or '0')
    out[#out + 1] = redis.call('HLEN', key('m', ch))
  end
  return out
end
return told
