"""The behavioural suite every SessionStore passes: MemoryStore and RedisStore (test_store), and
RedisStore through the Sentinel client (test_redis_sentinel) and on a Redis Cluster
(test_redis_cluster). Its tests take a `backend` fixture (a `Backend`) that each of those suites
defines, and each collects them with `contract_tests()`.
"""

import asyncio
from collections.abc import Callable

import pytest

from sarnn_serve.errors import SessionNotFound
from sarnn_serve.store import Gone, SessionStore, Stored

LONG = 600.0  # TTL of sessions that must not expire during a test
BLOB = bytes(range(256)) * 3  # every byte value, to check the bytes round-trip unchanged


class Backend:
    """Opens stores of one kind that share their sessions, and lets time pass for them.

    `open()` is what one replica gets: for Redis a new client on the same prefix each time (a
    second call is a second replica), for memory the one in-process store."""

    kind = ""

    def open(self, max_sessions: int = 100) -> SessionStore:
        raise NotImplementedError

    async def elapse(self, seconds: float) -> None:
        raise NotImplementedError


async def not_found(coro, reason: str) -> SessionNotFound:
    with pytest.raises(SessionNotFound) as info:
        await coro
    assert info.value.detail["reason"] == reason
    return info.value


# --- behaviour every store shares -------------------------------------------------------------


async def test_create_then_load_starts_at_version_1(backend: Backend) -> None:
    store = backend.open()
    assert await store.create("a", "m", BLOB, LONG) == []
    assert await store.load("a") == Stored(BLOB, 1)
    assert await store.load("a") == Stored(BLOB, 1)  # loading does not bump the version


async def test_compare_and_set_at_current_version_writes(backend: Backend) -> None:
    store = backend.open()
    await store.create("a", "m", b"v1", LONG)
    assert await store.compare_and_set("a", 1, b"v2", LONG) is True
    assert await store.load("a") == Stored(b"v2", 2)
    assert await store.compare_and_set("a", 2, b"", LONG) is True
    assert await store.load("a") == Stored(b"", 3)


async def test_compare_and_set_at_stale_version_changes_nothing(backend: Backend) -> None:
    store = backend.open()
    await store.create("a", "m", b"v1", LONG)
    assert await store.compare_and_set("a", 1, b"v2", LONG) is True
    assert await store.compare_and_set("a", 1, b"stale", LONG) is False
    assert await store.compare_and_set("a", 7, b"future", LONG) is False
    assert await store.load("a") == Stored(b"v2", 2)


async def test_concurrent_compare_and_set_exactly_one_wins(backend: Backend) -> None:
    replicas = [backend.open(), backend.open()]  # two Redis clients = two replicas
    await replicas[0].create("a", "m", b"v1", LONG)
    for version in range(1, 11):
        results = await asyncio.gather(
            *(
                replicas[i % 2].compare_and_set("a", version, f"{i}@{version}".encode(), LONG)
                for i in range(6)
            )
        )
        assert results.count(True) == 1, results
        winner = results.index(True)
        for replica in replicas:
            assert await replica.load("a") == Stored(f"{winner}@{version}".encode(), version + 1)


async def test_increments_from_two_replicas_are_never_lost(backend: Backend) -> None:
    replicas = [backend.open(), backend.open()]
    await replicas[0].create("n", "m", b"0", LONG)

    async def bump(store: SessionStore, times: int) -> None:
        for _ in range(times):
            while True:
                cur = await store.load("n")
                new = str(int(cur.data) + 1).encode()
                if await store.compare_and_set("n", cur.version, new, LONG):
                    break

    await asyncio.gather(*(bump(replicas[i % 2], 10) for i in range(4)))
    assert await replicas[0].load("n") == Stored(b"40", 41)


async def test_idle_session_expires_and_sweep_reports_it_once(backend: Backend) -> None:
    store = backend.open()
    await store.create("old", "m1", b"x", 0.25)
    await store.create("keep", "m1", b"y", LONG)
    await backend.elapse(0.4)
    err = await not_found(store.load("old"), "expired")
    assert err.code == "session_expired" and err.status == 404
    await not_found(store.compare_and_set("old", 1, b"z", LONG), "expired")
    await not_found(store.delete("old"), "expired")
    assert await store.sweep() == [Gone("old", "m1", "expired")]
    assert await store.sweep() == []
    await not_found(store.load("old"), "expired")  # still known as expired after the sweep
    assert await store.load("keep") == Stored(b"y", 1)


async def test_sweep_finds_expired_sessions_nobody_loaded(backend: Backend) -> None:
    replicas = [backend.open(), backend.open()]
    for i in range(5):
        await replicas[0].create(f"s{i}", "m2" if i % 2 else "m1", b"x", 0.25)
    await replicas[0].create("keep", "m1", b"y", LONG)
    await backend.elapse(0.4)
    # every replica sweeps; each expiry is reported by exactly one of them, exactly once
    first = await asyncio.gather(*(r.sweep() for r in replicas))
    second = await asyncio.gather(*(r.sweep() for r in replicas))
    reported = sorted((g for batch in first + second for g in batch), key=lambda g: g.session_id)
    assert reported == [Gone(f"s{i}", "m2" if i % 2 else "m1", "expired") for i in range(5)]
    for i in range(5):
        await not_found(replicas[1].load(f"s{i}"), "expired")
    assert await replicas[1].active() == {"m1": 1}


async def test_load_and_compare_and_set_refresh_the_idle_ttl(backend: Backend) -> None:
    store = backend.open()
    await store.create("a", "m", b"x", 1.0)
    await backend.elapse(0.3)
    assert (await store.load("a")).version == 1
    await backend.elapse(0.3)  # 0.6 s since creation, 0.3 s since the load
    assert await store.compare_and_set("a", 1, b"y", 1.0) is True
    await backend.elapse(0.3)  # 0.9 s since creation
    assert await store.load("a") == Stored(b"y", 2)
    assert await store.sweep() == []
    await backend.elapse(1.2)
    await not_found(store.load("a"), "expired")


async def test_compare_and_set_sets_the_new_ttl(backend: Backend) -> None:
    store = backend.open()
    await store.create("a", "m", b"x", LONG)
    assert await store.compare_and_set("a", 1, b"y", 0.25) is True
    await backend.elapse(0.4)
    await not_found(store.load("a"), "expired")


async def test_max_sessions_evicts_the_least_recently_used(backend: Backend) -> None:
    store = backend.open(max_sessions=3)
    for sid in ("a", "b", "c"):
        assert await store.create(sid, "m", sid.encode(), LONG) == []
    await store.load("a")  # the oldest created is now the most recently used
    assert await store.create("d", "m", b"d", LONG) == [Gone("b", "m", "evicted")]
    err = await not_found(store.load("b"), "evicted")
    assert err.code == "session_evicted"
    await not_found(store.compare_and_set("b", 1, b"", LONG), "evicted")
    assert await store.compare_and_set("c", 1, b"c2", LONG) is True  # writing is use too
    assert await store.create("e", "m", b"e", LONG) == [Gone("a", "m", "evicted")]
    for sid, data, version in (("c", b"c2", 2), ("d", b"d", 1), ("e", b"e", 1)):
        assert await store.load(sid) == Stored(data, version)
    assert await store.sweep() == []  # evictions are reported by create, not by sweep


async def test_eviction_of_an_expired_session_reports_expired(backend: Backend) -> None:
    store = backend.open(max_sessions=2)
    await store.create("a", "m", b"a", 0.25)
    await store.create("b", "m", b"b", LONG)
    await backend.elapse(0.4)
    assert await store.create("c", "m", b"c", LONG) == [Gone("a", "m", "expired")]
    assert await store.sweep() == []  # already reported
    await not_found(store.load("a"), "expired")


async def test_delete_returns_the_data_and_leaves_a_tombstone(backend: Backend) -> None:
    store = backend.open()
    await store.create("a", "m", b"v1", LONG)
    await store.compare_and_set("a", 1, BLOB, LONG)
    assert await store.delete("a") == Stored(BLOB, 2)
    err = await not_found(store.load("a"), "deleted")
    assert err.code == "session_deleted"
    await not_found(store.compare_and_set("a", 2, b"", LONG), "deleted")
    await not_found(store.delete("a"), "deleted")
    assert await store.sweep() == []
    assert await store.active() == {}


async def test_unknown_id(backend: Backend) -> None:
    store = backend.open()
    err = await not_found(store.load("nope"), "unknown")
    assert err.code == "session_not_found" and err.status == 404
    await not_found(store.compare_and_set("nope", 1, b"", LONG), "unknown")
    await not_found(store.delete("nope"), "unknown")


async def test_an_id_can_be_created_again_after_it_is_gone(backend: Backend) -> None:
    store = backend.open()
    await store.create("a", "m", b"v1", LONG)
    await store.delete("a")
    await store.create("a", "m", b"again", LONG)
    assert await store.load("a") == Stored(b"again", 1)


async def test_active_counts_live_sessions_per_tag(backend: Backend) -> None:
    store = backend.open(max_sessions=5)
    assert await store.active() == {}
    await store.create("a", "gru", b"", LONG)
    await store.create("b", "gru", b"", LONG)
    await store.create("c", "lstm", b"", LONG)
    await store.create("d", "rnn", b"", 0.25)
    assert await store.active() == {"gru": 2, "lstm": 1, "rnn": 1}
    await store.delete("c")
    assert await store.active() == {"gru": 2, "rnn": 1}
    await backend.elapse(0.4)
    await store.sweep()
    assert await store.active() == {"gru": 2}
    await store.create("e", "lstm", b"", LONG)
    await store.create("f", "lstm", b"", LONG)
    await store.create("g", "lstm", b"", LONG)
    assert await store.active() == {"gru": 2, "lstm": 3}
    assert await store.create("h", "lstm", b"", LONG) == [Gone("a", "gru", "evicted")]
    assert await store.active() == {"gru": 1, "lstm": 4}


async def test_another_owner_finds_nothing_and_keeps_nothing_alive(backend: Backend) -> None:
    store = backend.open()
    await store.create("a", "m", b"x", 0.5, owner="alice")
    for _ in range(4):  # bob's probes span more than the idle timeout
        await backend.elapse(0.15)
        err = await not_found(store.load("a", owner="bob"), "unknown")
        assert err.code == "session_not_found"
        await not_found(store.delete("a", owner="bob"), "unknown")
    await not_found(store.load("a", owner="alice"), "expired")


async def test_another_owner_does_not_move_a_session_in_lru_order(backend: Backend) -> None:
    store = backend.open(max_sessions=2)
    await store.create("a1", "m", b"1", LONG, owner="alice")
    await store.create("a2", "m", b"2", LONG, owner="alice")
    await not_found(store.load("a1", owner="bob"), "unknown")
    assert await store.create("a3", "m", b"3", LONG, owner="alice") == [Gone("a1", "m", "evicted")]


async def test_tombstones_are_told_only_to_their_owner(backend: Backend) -> None:
    store = backend.open()
    await store.create("d", "m", b"x", LONG, owner="alice")
    await store.create("e", "m", b"x", 0.25, owner="alice")
    assert (await store.load("d", owner="alice")).version == 1
    await store.delete("d", owner="alice")
    await backend.elapse(0.4)
    for sid, reason in (("d", "deleted"), ("e", "expired")):
        await not_found(store.load(sid, owner="bob"), "unknown")
        await not_found(store.delete(sid, owner="bob"), "unknown")
        await not_found(store.load(sid, owner="alice"), reason)
        await not_found(store.load(sid), reason)  # a caller who may see any session


async def test_the_cap_evicts_from_the_owner_over_its_share(backend: Backend) -> None:
    store = backend.open(max_sessions=4)
    await store.create("a1", "m", b"", LONG, owner="alice")
    await store.create("a2", "m", b"", LONG, owner="alice")
    await store.create("b1", "m", b"", LONG, owner="bob")
    await store.create("b2", "m", b"", LONG, owner="bob")
    await store.load("b1")  # alice's sessions are the least recently used of all
    for new, evicted in (("b3", "b2"), ("b4", "b1"), ("b5", "b3")):
        assert await store.create(new, "m", b"", LONG, owner="bob") == [
            Gone(evicted, "m", "evicted")
        ]
    # with as many as bob, alice's next session takes her own least recently used
    assert await store.create("a3", "m", b"", LONG, owner="alice") == [Gone("a1", "m", "evicted")]
    for sid in ("a2", "a3", "b4", "b5"):
        assert (await store.load(sid)).version == 1


def contract_tests() -> dict[str, Callable]:
    """The suite's tests by name, for a suite module to put in its globals (pytest collects them
    there, with that module's `backend`)."""
    return {name: test for name, test in globals().items() if name.startswith("test_")}
