-- lambdalake speed layer: apply one micro-batch of one partition, atomically.
--
-- Either every view update of the batch and the partition's new offset are written, or nothing
-- is. The batch covers offsets [first, next). It is refused when the stored offset shows it was
-- already applied ('skip'), when it overlaps what was applied ('mismatch': the caller seeks to the
-- stored offset), or when one of its event ids was already counted ('dup': the caller drops those
-- events and sends the batch again). Keys are built by the caller (lambdalake_views::keys), except
-- the session and dedupe keys whose start / minute the script decides, built from the bases given.
--
-- ARGV is read in order; see services/speed/src/apply.rs, which writes it.

local i = 0
local function nxt()
  i = i + 1
  return ARGV[i]
end
local function num() return tonumber(nxt()) end

-- unpack() is limited to a few thousand values in Redis' Lua: call in chunks
local CHUNK = 1000
local function chunked(cmd, key, list, extra)
  local out = {}
  for s = 1, #list, CHUNK do
    local args = {}
    for k = s, math.min(s + CHUNK - 1, #list) do args[#args + 1] = list[k] end
    local r = redis.call(cmd, key, unpack(args))
    if type(r) == 'table' then
      for _, v in ipairs(r) do out[#out + 1] = v end
    end
  end
  return out
end

local part = nxt()
local first = num()
local next_off = num()
local max_ts = num()
local wm = num()
local now = nxt()
local ttl = num()
local seen_base = nxt()
local gap_ok = nxt() == '1'

local stored = redis.call('HGET', part, 'offset')
if stored then
  local s = tonumber(stored)
  if s >= next_off then return {'skip', stored} end
  -- the batch must start exactly where the stored offset says, unless the caller checked that
  -- the records in between no longer exist (retention)
  if s > first or (s < first and not gap_ok) then return {'mismatch', stored} end
end

-- 1. dedupe: nothing is written if any id was already counted
local buckets = {}
local dups = {}
for b = 1, num() do
  local minute = nxt()
  local n = num()
  local ids = {}
  for k = 1, n do ids[k] = nxt() end
  local key = seen_base .. ':' .. minute
  local found = chunked('SMISMEMBER', key, ids)
  for k = 1, n do
    if found[k] == 1 then dups[#dups + 1] = ids[k] end
  end
  buckets[b] = {key, minute, ids}
end
if #dups > 0 then
  table.insert(dups, 1, 'dup')
  return dups
end
for _, b in ipairs(buckets) do
  chunked('SADD', b[1], b[3])
  redis.call('PEXPIRE', b[1], ttl)
  redis.call('ZADD', seen_base, b[2], b[2])
end

-- 2. sensor windows: key, index, start, end, count, t_sum, t_min, t_max, v_sum, v_min, v_max
for _ = 1, num() do
  local key, idx, start, stop = nxt(), nxt(), nxt(), nxt()
  local count, t_sum, t_min, t_max = nxt(), nxt(), nxt(), nxt()
  local v_sum, v_min, v_max = nxt(), nxt(), nxt()
  local cur = redis.call('HMGET', key, 't_min', 't_max', 'v_min', 'v_max')
  local f = {'start', start, 'end', stop}
  if not cur[1] or tonumber(t_min) < tonumber(cur[1]) then f[#f + 1] = 't_min'; f[#f + 1] = t_min end
  if not cur[2] or tonumber(t_max) > tonumber(cur[2]) then f[#f + 1] = 't_max'; f[#f + 1] = t_max end
  if not cur[3] or tonumber(v_min) < tonumber(cur[3]) then f[#f + 1] = 'v_min'; f[#f + 1] = v_min end
  if not cur[4] or tonumber(v_max) > tonumber(cur[4]) then f[#f + 1] = 'v_max'; f[#f + 1] = v_max end
  redis.call('HSET', key, unpack(f))
  redis.call('HINCRBY', key, 'count', count)
  redis.call('HINCRBY', key, 't_sum', t_sum)
  redis.call('HINCRBY', key, 'v_sum', v_sum)
  redis.call('PEXPIRE', key, ttl)
  redis.call('ZADD', idx, start, start)
  redis.call('PEXPIRE', idx, ttl)
end

local function read_set()
  local n = num()
  local s = {}
  for k = 1, n do s[k] = nxt() end
  return s
end

local function add_set(key, members)
  if #members > 0 then
    chunked('SADD', key, members)
    redis.call('PEXPIRE', key, ttl)
  end
end

-- 3. card windows: key, merchants key, countries key, index, start, end, count, sum, max,
--    merchants, countries
for _ = 1, num() do
  local key, mkey, ckey, idx = nxt(), nxt(), nxt(), nxt()
  local start, stop, count, sum, max = nxt(), nxt(), nxt(), nxt(), nxt()
  local merchants, countries = read_set(), read_set()
  local cur = redis.call('HGET', key, 'amount_max')
  if not cur or tonumber(max) > tonumber(cur) then
    redis.call('HSET', key, 'start', start, 'end', stop, 'amount_max', max)
  end
  redis.call('HINCRBY', key, 'count', count)
  redis.call('HINCRBY', key, 'amount_sum', sum)
  redis.call('PEXPIRE', key, ttl)
  add_set(mkey, merchants)
  add_set(ckey, countries)
  redis.call('ZADD', idx, start, start)
  redis.call('PEXPIRE', idx, ttl)
end

-- 4. card sessions: per card: index, window base, merchants base, countries base, suffix, then
--    partial sessions (start, end, count, sum, max, merchants, countries). A partial session
--    merges with every stored session it overlaps or touches (s.start <= end and start <= s.end).
for _ = 1, num() do
  local idx, wbase, mbase, cbase, suffix = nxt(), nxt(), nxt(), nxt(), nxt()
  for _ = 1, num() do
    local start, stop = num(), num()
    local count, sum, max = num(), num(), num()
    local merchants, countries = read_set(), read_set()
    -- stored sessions are disjoint and sorted: walk back from the last one starting <= stop
    local absorbed = {}
    local cands = redis.call('ZREVRANGEBYSCORE', idx, stop, '-inf')
    for _, st in ipairs(cands) do
      local h = wbase .. st .. suffix
      local v = redis.call('HMGET', h, 'end', 'count', 'amount_sum', 'amount_max')
      if not v[1] then
        redis.call('ZREM', idx, st) -- expired
      else
        local en = tonumber(v[1])
        if en < start then break end
        absorbed[#absorbed + 1] = st
        start = math.min(start, tonumber(st))
        stop = math.max(stop, en)
        count = count + tonumber(v[2])
        sum = sum + tonumber(v[3])
        max = math.max(max, tonumber(v[4]))
      end
    end
    local s = string.format('%d', start)
    local h, mk, ck = wbase .. s .. suffix, mbase .. s .. suffix, cbase .. s .. suffix
    for _, st in ipairs(absorbed) do
      if st ~= s then
        local om, oc = mbase .. st .. suffix, cbase .. st .. suffix
        redis.call('SUNIONSTORE', mk, mk, om)
        redis.call('SUNIONSTORE', ck, ck, oc)
        redis.call('DEL', wbase .. st .. suffix, om, oc)
        redis.call('ZREM', idx, st)
      end
    end
    redis.call('HSET', h, 'start', s, 'end', string.format('%d', stop),
      'count', string.format('%d', count), 'amount_sum', string.format('%d', sum),
      'amount_max', string.format('%d', max))
    redis.call('PEXPIRE', h, ttl)
    add_set(mk, merchants)
    add_set(ck, countries)
    redis.call('PEXPIRE', mk, ttl)
    redis.call('PEXPIRE', ck, ttl)
    redis.call('ZADD', idx, s, s)
  end
  redis.call('PEXPIRE', idx, ttl)
end

-- 5. card fraud history: key, cut (entries before it are dropped), entries (score, member)
for _ = 1, num() do
  local key, cut = nxt(), nxt()
  local n = num()
  local args = {}
  for k = 1, n do
    args[#args + 1] = nxt()
    args[#args + 1] = nxt()
  end
  chunked('ZADD', key, args)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. cut)
  redis.call('PEXPIRE', key, ttl)
end

-- 6. alerts: key, kept, entries (score, json)
local akey, kept = nxt(), num()
local n_alerts = num()
if n_alerts > 0 then
  local args = {}
  for _ = 1, n_alerts do
    args[#args + 1] = nxt()
    args[#args + 1] = nxt()
  end
  chunked('ZADD', akey, args)
  redis.call('ZREMRANGEBYRANK', akey, 0, -(kept + 1))
end

-- 7. the partition's state; dedupe sets wholly behind the watermark can no longer be needed
local old_wm = tonumber(redis.call('HGET', part, 'watermark') or wm)
local old_max = tonumber(redis.call('HGET', part, 'max_ts') or max_ts)
wm = math.max(wm, old_wm)
max_ts = math.max(max_ts, old_max)
redis.call('HSET', part, 'offset', string.format('%d', next_off),
  'max_ts', string.format('%d', max_ts), 'watermark', string.format('%d', wm), 'updated_ms', now)
local behind = string.format('(%d', math.floor(wm / 60000))
for _, minute in ipairs(redis.call('ZRANGEBYSCORE', seen_base, '-inf', behind)) do
  redis.call('DEL', seen_base .. ':' .. minute)
end
redis.call('ZREMRANGEBYSCORE', seen_base, '-inf', behind)
return {'ok'}
