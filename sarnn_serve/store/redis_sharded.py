"""Sessions on a Redis Cluster: the key space of `store.redis` split into shards, each under
one hash tag, so that every script touches one slot and the shards spread over the masters.

A session lives in shard blake2b(id) mod N (N = SARNN_REDIS_SHARDS, 60 by default). Shard k is
a `RedisStore` whose prefix is the hash tag "{P.k.j}" (P = SARNN_REDIS_PREFIX), j chosen so that
the tag's slot is in the k-th of N equal bands of the 16,384 slots: a cluster whose masters hold
equal contiguous slot ranges (as `redis-cli --cluster create` assigns them) gets N / masters
shards each. Within a shard everything is as on one Redis: the record, its tombstone, the
shard's LRU order, deadlines, tag counts and owners are updated together by one script, so
compare-and-set, expiry and eviction keep their exact semantics per session.

What spans shards, and what that costs:

- SARNN_MAX_SESSIONS is kept per shard: each holds at most ceil(max / N) sessions and evicts its
  own least recently used session (of the owner holding the most in that shard). The cluster
  holds at most max + N - 1; a shard can fill, and evict, before the total reaches max: with
  random ids a shard holds Binomial(total, 1/N) sessions, and the first eviction comes at about
  94,500 of 100,000 sessions with N = 60 (8,400 of 10,000; 97,800 of 100,000 with N = 16), in a
  simulation. Tag counts (`active`: one pipelined call per node) and the expiry sweep (one
  script per shard) visit every shard.
- The per-key cap (SARNN_MAX_SESSIONS_PER_KEY) is one sorted set per owner, "{P.owner.<hash>}",
  of the owner's session ids: a create first reserves its id there (one atomic script, refused
  at the cap), then creates in its shard; a failed create and a delete remove the id again. A
  session that expires or is evicted stays in the set until the owner reaches its cap: then ids
  reserved more than a minute ago whose shard no longer holds them for this owner are dropped
  and the reservation is tried again. So a key never holds more than its cap; it is refused
  early only if a replica died between a reservation and its create (for a minute, one id) or
  between a delete and its release (one id, until the key next reaches its cap).
  The set expires after `tombstone_ttl_s` (7 days) without a create by that key: a key whose
  sessions live longer with no new one could then open its cap again (the bound's one gap).
"""

import asyncio
import contextlib
import hashlib
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import RedisError

from sarnn_serve.store import Gone, Stored, session_quota_error
from sarnn_serve.store.redis import RedisStore, _store_error
from sarnn_serve.store.redis_wait import ReplicaWait

TOMBSTONE_TTL_S = 7 * 24 * 3600.0
PRUNE_AFTER_S = 60.0  # a reservation this old whose session is not in its shard is stale

# KEYS[1] = the owner's set; ARGV = id, cap, set TTL (ms), prune age (ms)
# -> {1} reserved, or {0, ids reserved before the prune age} at the cap.
_RESERVE = """#!lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local set, id = KEYS[1], ARGV[1]
if not redis.call('ZSCORE', set, id) and redis.call('ZCARD', set) >= tonumber(ARGV[2]) then
  return {0, redis.call('ZRANGEBYSCORE', set, '-inf', now - tonumber(ARGV[4]))}
end
redis.call('ZADD', set, now, id)
redis.call('PEXPIRE', set, ARGV[3])
return {1}
"""


def shard_tags(prefix: str, shards: int) -> list[str]:
    """The N hash tags "{P.k.j}", the slot of tag k in the k-th of N equal slot bands."""
    base = prefix.replace("{", "").replace("}", "")
    tags = []
    for k in range(shards):
        low = k * REDIS_CLUSTER_HASH_SLOTS // shards
        high = (k + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
        j = 0
        while not low <= key_slot(f"{base}.{k}.{j}".encode()) < max(high, low + 1):
            j += 1
        tags.append(f"{{{base}.{k}.{j}}}")
    return tags


def _hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def shard_index(session_id: str, shards: int) -> int:
    """The shard of a session id: blake2b(id) mod `shards`."""
    return int.from_bytes(_hash(session_id), "big") % shards


class ShardedRedisStore:
    """The SessionStore of a Redis Cluster (see the module docstring)."""

    local = False

    def __init__(
        self,
        client: RedisCluster,
        prefix: str,
        max_sessions: int,
        shards: int,
        wait: tuple[int, int] = (0, 0),
        *,
        tombstone_ttl_s: float = TOMBSTONE_TTL_S,
        sweep_batch: int = 1000,
        prune_after_s: float = PRUNE_AFTER_S,
    ) -> None:
        if max_sessions < 1 or shards < 1:
            raise ValueError("max_sessions and shards must be >= 1")
        self.prefix = prefix
        self.max_sessions = max_sessions
        self.tags = shard_tags(prefix, shards)
        self._redis = client
        self._base = prefix.replace("{", "").replace("}", "")
        self._set_ttl_ms = max(1, round(tombstone_ttl_s * 1000))
        self._prune_after_ms = round(prune_after_s * 1000)
        waiter = ReplicaWait(*wait)
        per_shard = -(-max_sessions // shards)
        self.shards = [
            RedisStore(
                client,
                tag,
                per_shard,
                tombstone_ttl_s=tombstone_ttl_s,
                sweep_batch=sweep_batch,
                wait=waiter,
            )
            for tag in self.tags
        ]
        self.wait = waiter
        self._reserve = client.register_script(_RESERVE)

    def shard(self, session_id: str) -> RedisStore:
        """The shard that holds `session_id`."""
        return self.shards[shard_index(session_id, len(self.shards))]

    def owner_key(self, owner: str) -> str:
        """The key of the owner's set of session ids (its own slot)."""
        return f"{{{self._base}.owner.{_hash(owner).hex()}}}:sessions"

    async def create(
        self,
        session_id: str,
        tag: str,
        data: bytes,
        ttl_s: float,
        owner: str = "",
        max_owned: int | None = None,
    ) -> list[Gone]:
        shard = self.shard(session_id)
        if max_owned is None:
            return await shard.create(session_id, tag, data, ttl_s, owner)
        await self._reserve_id(owner, session_id, max_owned)
        try:
            return await shard.create(session_id, tag, data, ttl_s, owner)
        except BaseException:
            await self._release(owner, session_id)
            raise

    async def load(self, session_id: str, owner: str | None = None) -> Stored:
        return await self.shard(session_id).load(session_id, owner)

    async def compare_and_set(
        self, session_id: str, version: int, data: bytes, ttl_s: float
    ) -> bool:
        return await self.shard(session_id).compare_and_set(session_id, version, data, ttl_s)

    async def delete(self, session_id: str, owner: str | None = None) -> Stored:
        shard = self.shard(session_id)
        holder = owner
        if holder is None:  # an admin's (or keys-off) delete: whose set to release it from
            holder = _text(await self._call(self._redis.hget(f"{shard.prefix}:owner", session_id)))
        stored = await shard.delete(session_id, owner)
        if holder is not None:
            await self._release(holder, session_id)
        return stored

    async def sweep(self) -> list[Gone]:
        swept = await asyncio.gather(*(shard.sweep() for shard in self.shards))
        return [gone for batch in swept for gone in batch]

    async def active(self) -> dict[str, int]:
        pipe = self._redis.pipeline(transaction=False)
        for tag in self.tags:
            pipe.hgetall(f"{tag}:active")
        totals: dict[str, int] = {}
        for counts in await self._call(pipe.execute()):
            for name, n in counts.items():
                totals[_text(name)] = totals.get(_text(name), 0) + int(n)
        return {name: n for name, n in totals.items() if n > 0}

    async def close(self) -> None:
        await self._redis.aclose()

    # the per-key cap -------------------------------------------------------------------

    async def _reserve_id(self, owner: str, session_id: str, cap: int) -> None:
        """Add `session_id` to the owner's set, or raise the quota error at the cap (after
        dropping stale ids once)."""
        key = self.owner_key(owner)
        args = [session_id, cap, self._set_ttl_ms, self._prune_after_ms]
        for attempt in (0, 1):
            res = await self._call(self._reserve(keys=[key], args=args))
            if res[0] == 1:
                return
            old = [_text(i) for i in res[1]]
            if attempt or not old or not await self._prune(owner, key, old):
                break
        raise session_quota_error(cap)

    async def _prune(self, owner: str, key: str, ids: list[str]) -> int:
        """Drop from the owner's set the ids no shard holds for this owner; how many."""
        pipe = self._redis.pipeline(transaction=False)
        for sid in ids:
            pipe.hget(f"{self.shard(sid).prefix}:owner", sid)
        holders = await self._call(pipe.execute())
        stale = [sid for sid, held in zip(ids, holders, strict=True) if _text(held) != owner]
        if stale:
            await self._call(self._redis.zrem(key, *stale))
        return len(stale)

    async def _release(self, owner: str, session_id: str) -> None:
        """Remove an id from its owner's set; a failure leaves it for the next prune."""
        with contextlib.suppress(RedisError):
            await self._redis.zrem(self.owner_key(owner), session_id)

    async def _call(self, call: Any) -> Any:
        try:
            return await call
        except RedisError as exc:
            raise _store_error(exc) from exc


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
