"""The Redis side of `store.redis`: its key layout and the Lua scripts, one per store
operation, that read and write it (the semantics are in `store.redis`).

Key layout (P = `prefix`, e.g. "sarnn"):

    P:s:{id}      hash {data, version, tag, ttl (ms)}; PEXPIREAT = its deadline (idle TTL,
                  moved forward by load and compare_and_set)
    P:lru         sorted set id -> last use (server µs, strictly increasing): LRU order and count
    P:deadline    sorted set id -> deadline (server ms): finds sessions Redis expired by itself
    P:tags        hash id -> tag, so an expired session can still be reported with its tag
    P:active      hash tag -> live sessions (counts those expired but not yet swept, as MemoryStore)
    P:owner       hash id -> owner (the key that opened it)
    P:owned       hash owner -> open sessions (the per-key cap)
    P:owners      sorted set owner -> open sessions (an index of P:owned: the largest holder)
    P:olru:{o}    sorted set id -> last use, of owner o's sessions (whom to evict of o's)
    P:gone:{id}   tombstone = "deleted" | "evicted" | "expired", kept `tombstone_ttl_s`
    P:gowner:{id} the owner of that tombstone's session (absent for owner ""), kept as long

Every script gets KEYS = `shared_keys(prefix)`, then (but for sweep) `session_keys(prefix, id)`'s
own three; ARGV[1..2] = prefix, tombstone TTL (ms), then its own arguments.
"""

# Script flags (Redis 7): scripts that may grow memory are refused whole at maxmemory; those that
# read, refresh or free sessions may run there.
_WRITES = "#!lua\n"
_AT_OOM = "#!lua flags=allow-oom\n"

# KEYS[1..7] = lru, deadline, tags, active, owner, owned, owners; ARGV[1] = prefix, ARGV[2] =
# tombstone TTL (ms).
_PRELUDE = """
local LRU, DEADLINE, TAGS, ACTIVE = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local OWNER, OWNED, OWNERS = KEYS[5], KEYS[6], KEYS[7]
local PREFIX, TOMB_MS = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local NOW = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function num(x) return string.format('%.0f', x) end
local function skey(id) return PREFIX .. ':s:' .. id end
local function olru(owner) return PREFIX .. ':olru:' .. owner end

-- P:owned[owner] += delta, mirrored in the P:owners index
local function count(owner, delta)
  local held = redis.call('HINCRBY', OWNED, owner, delta)
  if held <= 0 then
    redis.call('HDEL', OWNED, owner)
    redis.call('ZREM', OWNERS, owner)
  else
    redis.call('ZADD', OWNERS, held, owner)
  end
end

local function live(id)
  if redis.call('EXISTS', skey(id)) == 0 then return false end
  local d = redis.call('ZSCORE', DEADLINE, id)
  return (not d) or tonumber(d) * 1000 > NOW
end

-- whether a caller may see `id`: anyone unless `check` is '1', else only its `owner`
local function owned(id, check, owner)
  return check ~= '1' or redis.call('HGET', OWNER, id) == owner
end

local function why(id, check, owner)
  local r = redis.call('GET', PREFIX .. ':gone:' .. id)
  if r then
    if check == '1' and redis.call('GET', PREFIX .. ':gowner:' .. id) ~= owner then
      return 'unknown'
    end
    return r
  end
  if redis.call('ZSCORE', DEADLINE, id) and owned(id, check, owner) then return 'expired' end
  return 'unknown'
end

local function touch(id, ttl_ms)
  local score = NOW
  local top = redis.call('ZRANGE', LRU, -1, -1, 'WITHSCORES')
  if top[2] and tonumber(top[2]) >= score then score = tonumber(top[2]) + 1 end
  redis.call('ZADD', LRU, num(score), id)
  local owner = redis.call('HGET', OWNER, id)
  if owner then redis.call('ZADD', olru(owner), num(score), id) end
  local deadline = math.floor(NOW / 1000) + ttl_ms
  redis.call('ZADD', DEADLINE, num(deadline), id)
  redis.call('PEXPIREAT', skey(id), num(deadline))
end

local function drop(id, reason)
  local tag = redis.call('HGET', TAGS, id)
  redis.call('DEL', skey(id))
  redis.call('ZREM', LRU, id)
  redis.call('ZREM', DEADLINE, id)
  redis.call('HDEL', TAGS, id)
  if tag then
    if redis.call('HINCRBY', ACTIVE, tag, -1) <= 0 then redis.call('HDEL', ACTIVE, tag) end
  else
    tag = ''
  end
  local owner = redis.call('HGET', OWNER, id)
  if owner then
    redis.call('HDEL', OWNER, id)
    redis.call('ZREM', olru(owner), id)
    count(owner, -1)
  end
  if reason then
    redis.call('SET', PREFIX .. ':gone:' .. id, reason, 'PX', TOMB_MS)
    if owner and owner ~= '' then
      redis.call('SET', PREFIX .. ':gowner:' .. id, owner, 'PX', TOMB_MS)
    else
      redis.call('DEL', PREFIX .. ':gowner:' .. id)
    end
  end
  return tag
end
"""

# ARGV[3..9] = id, tag, data, ttl (ms), max sessions, owner, max per owner (-1: none)
# -> {0} owner at its cap, or {1, then flat (id, tag, reason) of evicted sessions}.
_CREATE_BODY = """
-- the owner holding the most sessions, `opener` (about to open one more) among equals
local function heaviest(opener)
  local mine = tonumber(redis.call('HGET', OWNED, opener) or '0') + 1
  for _ = 1, 32 do
    local top = redis.call('ZREVRANGE', OWNERS, 0, 0, 'WITHSCORES')
    if not top[1] then break end
    local held = tonumber(redis.call('HGET', OWNED, top[1]) or '0')
    if held == tonumber(top[2]) then
      if held > mine then return top[1] end
      break
    end
    -- an older replica changed this count without the index: set it right, look again
    if held > 0 then
      redis.call('ZADD', OWNERS, held, top[1])
    else
      redis.call('ZREM', OWNERS, top[1])
    end
  end
  return opener
end

-- the least recently used session of `owner`, or false if its order holds none
local function oldest(owner)
  for _ = 1, 32 do
    local first = redis.call('ZRANGE', olru(owner), 0, 0)[1]
    if not first then return false end
    if redis.call('HGET', OWNER, first) == owner then return first end
    redis.call('ZREM', olru(owner), first)  -- dropped by an older replica
  end
  return false
end

local id, tag, data = ARGV[3], ARGV[4], ARGV[5]
local ttl, max = tonumber(ARGV[6]), tonumber(ARGV[7])
local owner, max_owned = ARGV[8], tonumber(ARGV[9])
if redis.call('HEXISTS', TAGS, id) == 1 or redis.call('EXISTS', skey(id)) == 1 then
  drop(id, false)
end
if max_owned >= 0 and tonumber(redis.call('HGET', OWNED, owner) or '0') >= max_owned then
  return {0}
end
local out = {1}
while redis.call('ZCARD', LRU) >= max and redis.call('ZCARD', LRU) > 0 do
  local victim = oldest(heaviest(owner)) or redis.call('ZRANGE', LRU, 0, 0)[1]
  local reason = live(victim) and 'evicted' or 'expired'
  local vtag = drop(victim, reason)
  out[#out + 1] = victim
  out[#out + 1] = vtag
  out[#out + 1] = reason
end
redis.call('HSET', skey(id), 'data', data, 'version', 1, 'tag', tag, 'ttl', ttl)
redis.call('HSET', TAGS, id, tag)
redis.call('HINCRBY', ACTIVE, tag, 1)
redis.call('HSET', OWNER, id, owner)
count(owner, 1)
redis.call('DEL', PREFIX .. ':gone:' .. id, PREFIX .. ':gowner:' .. id)
touch(id, ttl)
return out
"""

# ARGV[3..5] = id, '1' to check the owner, owner -> {1, data, version} or {0, reason}.
_LOAD_BODY = """
local id, check, owner = ARGV[3], ARGV[4], ARGV[5]
if not live(id) then return {0, why(id, check, owner)} end
if not owned(id, check, owner) then return {0, 'unknown'} end
local h = redis.call('HMGET', skey(id), 'data', 'version', 'ttl')
touch(id, tonumber(h[3]))
return {1, h[1], tonumber(h[2])}
"""

# ARGV[3..7] = id, expected version, data, ttl (ms), write token -> {1} wrote (or had written:
# a resend of this very call), {0} stale, {-1, reason}.
_CAS_BODY = """
local id, version, ttl, token = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[6]), ARGV[7]
if not live(id) then return {-1, why(id)} end
local h = redis.call('HMGET', skey(id), 'version', 'token')
local now = tonumber(h[1])
if now == version + 1 and h[2] == token then return {1} end
if now ~= version then return {0} end
redis.call('HSET', skey(id), 'data', ARGV[5], 'version', version + 1, 'ttl', ttl, 'token', token)
touch(id, ttl)
return {1}
"""

# ARGV[3..5] = id, '1' to check the owner, owner -> {1, data, version} or {0, reason}.
_DELETE_BODY = """
local id, check, owner = ARGV[3], ARGV[4], ARGV[5]
if not live(id) then return {0, why(id, check, owner)} end
if not owned(id, check, owner) then return {0, 'unknown'} end
local h = redis.call('HMGET', skey(id), 'data', 'version')
drop(id, 'deleted')
return {1, h[1], tonumber(h[2])}
"""

# ARGV[3] = batch size -> flat list of expired (id, tag).
_SWEEP_BODY = """
local ids = redis.call('ZRANGEBYSCORE', DEADLINE, '-inf', num(math.floor(NOW / 1000)),
                       'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local tag = drop(id, 'expired')
  out[#out + 1] = id
  out[#out + 1] = tag
end
return out
"""


_SHARED_NAMES = ("lru", "deadline", "tags", "active", "owner", "owned", "owners")

CREATE = _WRITES + _PRELUDE + _CREATE_BODY
LOAD = _AT_OOM + _PRELUDE + _LOAD_BODY
CAS = _WRITES + _PRELUDE + _CAS_BODY
DELETE = _AT_OOM + _PRELUDE + _DELETE_BODY
SWEEP = _AT_OOM + _PRELUDE + _SWEEP_BODY


def shared_keys(prefix: str) -> list[str]:
    """KEYS[1..7] of every script: the keys shared by all sessions of `prefix`."""
    return [f"{prefix}:{name}" for name in _SHARED_NAMES]


def session_keys(prefix: str, session_id: str) -> list[str]:
    """KEYS[1..10] of a script on one session: the shared keys, then that session's own."""
    return [
        *shared_keys(prefix),
        f"{prefix}:s:{session_id}",
        f"{prefix}:gone:{session_id}",
        f"{prefix}:gowner:{session_id}",
    ]
