"""The behavioural suite of every SessionStore (tests/store_contract.py) on MemoryStore and
RedisStore, and what only RedisStore does (its key layout, keys Redis expires itself).

RedisStore runs against a real redis-server: the one at $SARNN_TEST_REDIS_URL if set (only keys
under a unique per-test prefix are touched, never FLUSHALL), otherwise one started here on a free
port of 127.0.0.1 in a temporary directory, without persistence. Redis tests are skipped only if
neither is available. MemoryStore runs on a fake clock; RedisStore on real (short) sleeps.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from sarnn_serve.store import Gone, SessionStore, Stored
from sarnn_serve.store.memory import MemoryStore
from tests.store_contract import LONG, Backend, contract_tests, not_found


async def _drop_prefix(url: str, prefix: str) -> None:
    """Delete only this test's keys (the server may be shared)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


# --- the stores under test --------------------------------------------------------------------


class MemoryBackend(Backend):
    kind = "memory"

    def __init__(self) -> None:
        self.now = 1000.0
        self.store: MemoryStore | None = None

    def open(self, max_sessions: int = 100) -> SessionStore:
        if self.store is None:
            self.store = MemoryStore(max_sessions, clock=lambda: self.now)
        return self.store

    async def elapse(self, seconds: float) -> None:
        self.now += seconds


class RedisBackend(Backend):
    kind = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"sarnn-test-{uuid.uuid4().hex[:12]}"
        self.stores: list[SessionStore] = []

    def open(self, max_sessions: int = 100) -> SessionStore:
        from sarnn_serve.store.redis import RedisStore

        store = RedisStore(self.url, self.prefix, max_sessions)
        self.stores.append(store)
        return store

    async def elapse(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def close(self) -> None:
        for store in self.stores:
            await store.close()
        await _drop_prefix(self.url, self.prefix)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.slow)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    redis_backend = RedisBackend(request.getfixturevalue("redis_url"))
    try:
        yield redis_backend
    finally:
        await redis_backend.close()


# the behavioural suite, on both stores
globals().update(contract_tests())


# --- Redis specifics --------------------------------------------------------------------------


@pytest.fixture
async def redis_pair(redis_url: str) -> AsyncIterator[tuple]:
    """(RedisStore, raw redis.asyncio client) on a fresh prefix."""
    import redis.asyncio as aioredis

    from sarnn_serve.store.redis import RedisStore

    prefix = f"sarnn-test-{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix, 100)
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield store, client
    finally:
        await store.close()
        await client.aclose()
        await _drop_prefix(redis_url, prefix)


@pytest.mark.slow
async def test_redis_key_layout(redis_pair: tuple) -> None:
    store, r = redis_pair
    p = store.prefix
    await store.create("a", "gru", b"\x00\xff", 30.0, owner="alice")
    assert await r.hgetall(f"{p}:s:a") == {
        b"data": b"\x00\xff",
        b"version": b"1",
        b"tag": b"gru",
        b"ttl": b"30000",
    }
    assert 29_000 < await r.pttl(f"{p}:s:a") <= 30_000
    assert await r.zrange(f"{p}:lru", 0, -1) == [b"a"]
    assert await r.zrange(f"{p}:deadline", 0, -1) == [b"a"]
    assert await r.hgetall(f"{p}:tags") == {b"a": b"gru"}
    assert await r.hgetall(f"{p}:active") == {b"gru": b"1"}
    assert await r.hgetall(f"{p}:owner") == {b"a": b"alice"}
    assert await r.hgetall(f"{p}:owned") == {b"alice": b"1"}
    assert await r.zrange(f"{p}:owners", 0, -1, withscores=True) == [(b"alice", 1.0)]
    assert await r.zrange(f"{p}:olru:alice", 0, -1) == [b"a"]
    await store.delete("a")
    assert await r.get(f"{p}:gone:a") == b"deleted"
    assert await r.get(f"{p}:gowner:a") == b"alice"
    assert await r.pttl(f"{p}:gone:a") > 6 * 24 * 3600 * 1000
    assert await r.pttl(f"{p}:gowner:a") > 6 * 24 * 3600 * 1000
    left = ("s:a", "lru", "deadline", "tags", "active", "owner", "owned", "owners", "olru:alice")
    assert not await r.exists(*(f"{p}:{name}" for name in left))


@pytest.mark.slow
async def test_redis_session_expired_by_redis_itself(redis_pair: tuple) -> None:
    store, r = redis_pair
    await store.create("a", "m", b"x", 0.1)
    deadline = time.monotonic() + 5
    while await r.exists(f"{store.prefix}:s:a"):  # wait for Redis to drop the key on its own
        assert time.monotonic() < deadline, "Redis never expired the session key"
        await asyncio.sleep(0.05)
    await not_found(store.load("a"), "expired")
    assert await store.sweep() == [Gone("a", "m", "expired")]
    assert await r.get(f"{store.prefix}:gone:a") == b"expired"


@pytest.mark.slow
async def test_redis_prefixes_are_isolated(redis_pair: tuple, redis_url: str) -> None:
    from sarnn_serve.store.redis import RedisStore

    store, _ = redis_pair
    other = RedisStore(redis_url, store.prefix + "-other", 1)
    try:
        await store.create("a", "m", b"x", LONG)
        await other.create("a", "m", b"y", LONG)
        assert await other.create("b", "m", b"z", LONG) == [Gone("a", "m", "evicted")]
        assert await store.load("a") == Stored(b"x", 1)
        assert await store.active() == {"m": 1}
    finally:
        await other.close()
        await _drop_prefix(redis_url, store.prefix + "-other")


@pytest.mark.slow
async def test_redis_survives_a_script_cache_flush(redis_pair: tuple) -> None:
    store, r = redis_pair
    await store.create("a", "m", b"x", LONG)
    await r.script_flush()  # e.g. a Redis restart or failover: EVALSHA falls back to EVAL
    assert await store.compare_and_set("a", 1, b"y", LONG) is True
    assert await store.load("a") == Stored(b"y", 2)
