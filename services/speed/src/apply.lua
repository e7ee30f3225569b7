-- lambdalake speed layer: apply one micro-batch of one partition, atomically.
--
-- Either every view update of the batch and the partition's new offset are written, or nothing
-- is. The caller computed the new value of every window and session the batch touched (it keeps
-- the partition's state); the script writes them, so Redis spends one command per hash, not per
-- event. The batch covers offsets [first, next). It is refused when the stored offset shows it was
-- already applied ('skip') or when it does not start at the stored offset ('mismatch': the
-- caller seeks to the stored offset and forgets its cached state). The stored offset fences a
-- zombie instance: only the batch that continues the partition exactly is written. Keys are
-- built by the caller (lambdalake_views::keys); the dedupe strings are `{seen_base}:{minute}`.
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

-- n (score, member) pairs from ARGV, added to the sorted set `key`
local function zadd_pairs(key, n)
  local args = {}
  for _ = 1, n do
    args[#args + 1] = nxt()
    args[#args + 1] = nxt()
  end
  chunked('ZADD', key, args)
end

local part = nxt()
local first = num()
local next_off = num()
local max_ts = num() -- nil when the batch had no live event
local wm = num()     -- nil before the first watermark
local now = nxt()
local ttl = num()
local seen_base = nxt()
local gap_ok = nxt() == '1'
local fenced = nxt() == '1' -- off only in the at-least/at-most-once modes

local stored = redis.call('HGET', part, 'offset')
if stored and fenced then
  local s = tonumber(stored)
  if s >= next_off then return {'skip', stored} end
  -- the batch must start exactly where the stored offset says, unless the caller checked that
  -- the records in between no longer exist (retention)
  if s > first or (s < first and not gap_ok) then return {'mismatch', stored} end
end

-- 1. the event ids counted, appended to one string per event-time minute ("id\n" each; ids
--    hold no whitespace): the speed layer keeps them in memory and reads them back on assignment
for _ = 1, num() do
  local minute, ids = nxt(), nxt()
  local key = seen_base .. ':' .. minute
  redis.call('APPEND', key, ids)
  redis.call('PEXPIRE', key, ttl)
  redis.call('ZADD', seen_base, minute, minute)
end

-- 2. hash writes (new values of windows, sessions and card states): key, n, then n field/value
--    pairs, passed to HSET straight from ARGV
local CH = 4000 -- arguments per call, even
for _ = 1, num() do
  local key = nxt()
  local last = i + 2 * num()
  for c = i + 1, last, CH do
    redis.call('HSET', key, unpack(ARGV, c, math.min(c + CH - 1, last)))
  end
  i = last
  redis.call('PEXPIRE', key, ttl)
end

-- 3. hash field deletes (sessions that moved or were absorbed): key, n, fields
for _ = 1, num() do
  local key = nxt()
  local last = i + num()
  for c = i + 1, last, CH do
    redis.call('HDEL', key, unpack(ARGV, c, math.min(c + CH - 1, last)))
  end
  i = last
end

-- 4. the card index (payments partitions): the index key ('' for none), the card-state hash,
--    n, then n (score, card) pairs, score = the last instant the card's state matters (its
--    newest payment or the end of its newest open session). The states whose instant is a view
--    TTL behind the watermark leave the hash and the index, at most 1,000 per call: the speed
--    layer's memory holds only some cards, so Redis decides what is forgotten.
local idx, cards_key = nxt(), nxt()
local n_idx = num()
if n_idx > 0 then
  zadd_pairs(idx, n_idx)
  redis.call('PEXPIRE', idx, ttl)
end
if idx ~= '' and wm then
  local old = redis.call('ZRANGEBYSCORE', idx, '-inf', string.format('(%d', wm - ttl),
    'LIMIT', 0, 1000)
  if #old > 0 then
    chunked('HDEL', cards_key, old)
    chunked('ZREM', idx, old)
  end
end

-- 5. alerts: key, kept, entries (score, json)
local akey, kept = nxt(), num()
local n_alerts = num()
if n_alerts > 0 then
  zadd_pairs(akey, n_alerts)
  redis.call('ZREMRANGEBYRANK', akey, 0, -(kept + 1))
end

-- 6. the partition's state; dedupe sets wholly behind the watermark can no longer be needed
local function maxn(a, b)
  if a == nil then return b end
  if b == nil then return a end
  return math.max(a, b)
end
wm = maxn(wm, tonumber(redis.call('HGET', part, 'watermark') or ''))
max_ts = maxn(max_ts, tonumber(redis.call('HGET', part, 'max_ts') or ''))
local state = {'offset', string.format('%d', next_off), 'updated_ms', now}
if max_ts then
  state[#state + 1] = 'max_ts'
  state[#state + 1] = string.format('%d', max_ts)
end
if wm then
  state[#state + 1] = 'watermark'
  state[#state + 1] = string.format('%d', wm)
end
redis.call('HSET', part, unpack(state))
if not wm then return {'ok'} end
local behind = string.format('(%d', math.floor(wm / 60000))
for _, minute in ipairs(redis.call('ZRANGEBYSCORE', seen_base, '-inf', behind)) do
  redis.call('DEL', seen_base .. ':' .. minute)
end
redis.call('ZREMRANGEBYSCORE', seen_base, '-inf', behind)
return {'ok'}
