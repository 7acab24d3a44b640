"""Session store in Redis, shared by every replica; same semantics as `MemoryStore`.

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

A caller that names an owner (`load`, `delete`) finds only sessions and tombstones of that owner:
anything else answers as an unknown id and is left untouched.

At the session cap, a create evicts the least recently used session of the owner holding the
most sessions (counting the one being opened): that owner is over its share of the cap, so an
owner within its share is never evicted for another's sake. Replicas of the previous release
keep neither P:owners nor P:olru: the index is checked against P:owned before it is trusted, and
while an owner's order misses its sessions, the global LRU order decides.

Failures: a pooled connection that fails or times out is retried (the Redis client resends the
call), so every script is safe to run twice: a compare-and-set carries a random token, and its
resend, finding its own write, answers "written" rather than "stale". At `maxmemory` the scripts
that read or delete (load, delete, sweep) still run (`allow-oom`), so sessions can be read and
memory freed; create and compare-and-set are refused whole (507), before they write anything.

An id whose session key is missing (or past its deadline) but which is still in P:deadline has
expired; it is reported as "expired" at once and by exactly one sweep() across all replicas,
which then leaves a tombstone. Every operation is one Lua script, so it is atomic across replicas
and uses the Redis server's clock (TIME), never the replicas' clocks.

Needs Redis >= 7 (script flags). Configure `maxmemory-policy noeviction`: a
session key evicted by Redis under memory pressure would be reported as "expired". Scripts build
the keys of evicted and swept sessions from the prefix, so every key of one prefix must be in one
slot: on Redis Cluster `store.redis_sharded` runs one RedisStore per shard, its prefix a hash tag.
With `wait`, creates and compare-and-sets also wait for replicas (`store.redis_wait`).
"""

import secrets
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sarnn_serve.errors import SessionNotFound, StoreFull, StoreUnavailable
from sarnn_serve.store import Gone, Stored, session_quota_error
from sarnn_serve.store.redis_wait import ReplicaWait

# A stale pooled connection (Redis restarted) or a timed-out call (Redis stalled) is retried:
# safe, since every script may run twice (a compare-and-set's resend finds its own token).
_RETRY = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3)

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
_CREATE = """
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
_LOAD = """
local id, check, owner = ARGV[3], ARGV[4], ARGV[5]
if not live(id) then return {0, why(id, check, owner)} end
if not owned(id, check, owner) then return {0, 'unknown'} end
local h = redis.call('HMGET', skey(id), 'data', 'version', 'ttl')
touch(id, tonumber(h[3]))
return {1, h[1], tonumber(h[2])}
"""

# ARGV[3..7] = id, expected version, data, ttl (ms), write token -> {1} wrote (or had written:
# a resend of this very call), {0} stale, {-1, reason}.
_CAS = """
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
_DELETE = """
local id, check, owner = ARGV[3], ARGV[4], ARGV[5]
if not live(id) then return {0, why(id, check, owner)} end
if not owned(id, check, owner) then return {0, 'unknown'} end
local h = redis.call('HMGET', skey(id), 'data', 'version')
drop(id, 'deleted')
return {1, h[1], tonumber(h[2])}
"""

# ARGV[3] = batch size -> flat list of expired (id, tag).
_SWEEP = """
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


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    """Sessions in Redis (see the module docstring for the key layout); one per process."""

    local = False

    def __init__(
        self,
        url: str | Any,
        prefix: str,
        max_sessions: int,
        *,
        tombstone_ttl_s: float = 7 * 24 * 3600.0,
        sweep_batch: int = 1000,
        max_connections: int = 64,
        socket_timeout: float = 5.0,
        wait: tuple[int, int] | ReplicaWait = (0, 0),
    ) -> None:
        """`url`: a Redis URL, or a client of `store.redis_connect` (max_connections and
        socket_timeout are then its own); `wait`: (replicas, timeout ms) every create and
        compare-and-set waits for (`store.redis_wait`; 0 replicas: none)."""
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        self.max_sessions = max_sessions
        self.prefix = prefix
        if isinstance(url, str):
            # a call waits (up to 5 s) for a free pooled connection rather than failing at once
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=5,
                decode_responses=False,
                socket_connect_timeout=min(2.0, socket_timeout),
                socket_timeout=socket_timeout,
                retry=_RETRY,
            )
            url = aioredis.Redis.from_pool(pool)
        self._redis = url
        self.wait = wait if isinstance(wait, ReplicaWait) else ReplicaWait(*wait)
        self._keys = [
            f"{prefix}:{name}"
            for name in ("lru", "deadline", "tags", "active", "owner", "owned", "owners")
        ]
        self._head = [prefix, _ms(tombstone_ttl_s)]
        self._sweep_batch = sweep_batch
        script = self._redis.register_script
        self._create = script(_WRITES + _PRELUDE + _CREATE)
        self._load = script(_AT_OOM + _PRELUDE + _LOAD)
        self._cas = script(_WRITES + _PRELUDE + _CAS)
        self._delete = script(_AT_OOM + _PRELUDE + _DELETE)
        self._sweep = script(_AT_OOM + _PRELUDE + _SWEEP)

    async def _run(self, script, keys: list[str], args: list) -> list:
        """Run one Lua script; a Redis failure becomes StoreFull (507) or StoreUnavailable."""
        try:
            return await script(keys=keys, args=args)
        except RedisError as exc:
            raise _store_error(exc) from exc

    async def _write(self, script, session_id: str, args: list) -> list:
        """Run a script that writes `session_id`; with replicas to wait for, then WAIT."""
        keys = self._session_keys(session_id)
        if not self.wait.replicas:
            return await self._run(script, keys, args)
        try:
            return await self.wait.run(self._redis, script, keys, args, session_id)
        except RedisError as exc:
            raise _store_error(exc) from exc

    def _session_keys(self, session_id: str) -> list[str]:
        p = self.prefix
        return [
            *self._keys,
            f"{p}:s:{session_id}",
            f"{p}:gone:{session_id}",
            f"{p}:gowner:{session_id}",
        ]

    async def create(
        self,
        session_id: str,
        tag: str,
        data: bytes,
        ttl_s: float,
        owner: str = "",
        max_owned: int | None = None,
    ) -> list[Gone]:
        args = [
            *self._head,
            *(
                session_id,
                tag,
                data,
                _ms(ttl_s),
                self.max_sessions,
                owner,
                -1 if max_owned is None else max_owned,
            ),
        ]
        flat = await self._write(self._create, session_id, args)
        if flat[0] != 1:
            raise session_quota_error(max_owned)
        return [
            Gone(_str(flat[i]), _str(flat[i + 1]), _str(flat[i + 2]))
            for i in range(1, len(flat), 3)
        ]

    async def load(self, session_id: str, owner: str | None = None) -> Stored:
        args = [*self._head, session_id, *_owner_args(owner)]
        res = await self._run(self._load, self._session_keys(session_id), args)
        if res[0] != 1:
            raise SessionNotFound(session_id, _str(res[1]))
        return Stored(bytes(res[1]), int(res[2]))

    async def compare_and_set(
        self, session_id: str, version: int, data: bytes, ttl_s: float
    ) -> bool:
        token = secrets.token_bytes(12)
        args = [*self._head, session_id, version, data, _ms(ttl_s), token]
        res = await self._write(self._cas, session_id, args)
        if res[0] == -1:
            raise SessionNotFound(session_id, _str(res[1]))
        return res[0] == 1

    async def delete(self, session_id: str, owner: str | None = None) -> Stored:
        args = [*self._head, session_id, *_owner_args(owner)]
        res = await self._run(self._delete, self._session_keys(session_id), args)
        if res[0] != 1:
            raise SessionNotFound(session_id, _str(res[1]))
        return Stored(bytes(res[1]), int(res[2]))

    async def sweep(self) -> list[Gone]:
        dropped: list[Gone] = []
        while True:
            flat = await self._run(self._sweep, self._keys, [*self._head, self._sweep_batch])
            dropped += [
                Gone(_str(flat[i]), _str(flat[i + 1]), "expired") for i in range(0, len(flat), 2)
            ]
            if len(flat) < 2 * self._sweep_batch:
                return dropped

    async def active(self) -> dict[str, int]:
        try:
            counts = await self._redis.hgetall(f"{self.prefix}:active")
        except RedisError as exc:
            raise _store_error(exc) from exc
        return {_str(tag): int(n) for tag, n in counts.items() if int(n) > 0}

    async def close(self) -> None:
        await self._redis.aclose()


def _store_error(exc: RedisError) -> StoreFull | StoreUnavailable:
    """The typed error a client gets for a Redis failure (nothing was written)."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return StoreUnavailable(f"session store unreachable: {exc}")
    if isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and "maxmemory" in str(exc)
    ):
        return StoreFull(f"session store is out of memory: {exc}")
    return StoreUnavailable(f"session store failed: {exc}")


def _owner_args(owner: str | None) -> list[str]:
    """The scripts' (check, owner) arguments: '1' and the owner, or '0' for any owner."""
    return ["0", ""] if owner is None else ["1", owner]


def _ms(seconds: float) -> int:
    """Milliseconds, at least 1 (PEXPIREAT and the deadline set work in whole ms)."""
    return max(1, round(seconds * 1000))
