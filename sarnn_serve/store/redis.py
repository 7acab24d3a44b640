"""Session store in Redis, shared by every replica; same semantics as `MemoryStore`.

The key layout and the Lua scripts over it are in `store.redis_scripts`.

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
from sarnn_serve.store import redis_scripts as lua
from sarnn_serve.store.redis_wait import ReplicaWait

# A stale pooled connection (Redis restarted) or a timed-out call (Redis stalled) is retried:
# safe, since every script may run twice (a compare-and-set's resend finds its own token).
_RETRY = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3)


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
        self._keys = lua.shared_keys(prefix)
        self._head = [prefix, _ms(tombstone_ttl_s)]
        self._sweep_batch = sweep_batch
        script = self._redis.register_script
        self._create = script(lua.CREATE)
        self._load = script(lua.LOAD)
        self._cas = script(lua.CAS)
        self._delete = script(lua.DELETE)
        self._sweep = script(lua.SWEEP)

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
        return lua.session_keys(self.prefix, session_id)

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
