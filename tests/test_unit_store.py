"""MemoryStore specifics on a fake clock: the byte budget (each session counted as its record
plus ENTRY_BYTES), per-TTL expiry queues, a sweep that yields to the event loop, owner caps and
the live counts. (store_contract.py holds the behaviour MemoryStore shares with RedisStore.)"""

import asyncio

import pytest

from sarnn_serve.errors import SessionNotFound, TooManyRequests
from sarnn_serve.store import ENTRY_BYTES, Gone, Stored
from sarnn_serve.store.memory import SWEEP_BATCH, MemoryStore

LONG = 600.0


def counted(*sizes: int) -> int:
    """What the byte budget counts for sessions of these record sizes."""
    return sum(size + ENTRY_BYTES for size in sizes)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def reason(store: MemoryStore, session_id: str) -> str:
    """Why `session_id` cannot be loaded."""
    with pytest.raises(SessionNotFound) as info:
        await store.load(session_id)
    return info.value.detail["reason"]


async def test_byte_budget_evicts_the_least_recently_used(clock: Clock) -> None:
    store = MemoryStore(100, max_bytes=counted(100, 100, 100), clock=clock)
    for sid in "abc":
        assert await store.create(sid, "m", bytes(100), LONG) == []
    await store.load("a")  # b is now the least recently used
    assert await store.create("d", "m", bytes(100), LONG) == [Gone("b", "m", "evicted")]
    assert store.bytes == counted(100, 100, 100)
    # a write that grows a session past the budget evicts others; the next sweep reports them
    assert await store.compare_and_set("c", 1, bytes(150), LONG) is True
    assert store.bytes == counted(100, 150)
    assert await store.sweep() == [Gone("a", "m", "evicted")]
    assert await store.sweep() == []
    assert await reason(store, "a") == "evicted" and await reason(store, "b") == "evicted"
    assert await store.load("c") == Stored(bytes(150), 2)
    assert await store.active() == {"m": 2}


async def test_the_session_being_written_is_never_evicted(clock: Clock) -> None:
    budget = counted(100, 100, 100)
    store = MemoryStore(100, max_bytes=budget, clock=clock)
    await store.create("a", "m", bytes(100), LONG)
    await store.create("b", "m2", bytes(100), LONG)
    await store.load("b")  # a is the least recently used, and the one written below
    assert await store.compare_and_set("a", 1, bytes(budget), LONG) is True
    assert await store.sweep() == [Gone("b", "m2", "evicted")]
    assert await store.load("a") == Stored(bytes(budget), 2)  # kept, alone over the budget
    assert store.bytes == counted(budget)
    big = bytes(budget + 100)
    assert await store.create("big", "m", big, LONG) == [Gone("a", "m", "evicted")]
    assert await store.load("big") == Stored(big, 1)
    assert store.bytes == counted(len(big)) and await store.active() == {"m": 1}


async def test_sessions_of_different_ttls_expire_at_their_own_times(clock: Clock) -> None:
    start = clock.now
    store = MemoryStore(100, clock=clock)
    await store.create("t10", "m", b"", 10)
    await store.create("t30", "m", b"", 30)
    await store.create("t20", "m", b"", 20)
    await store.create("moved", "m", b"", 10)
    assert await store.compare_and_set("moved", 1, b"x", 40) is True  # now in the 40 s queue
    clock.now = start + 5
    await store.create("t10b", "m", b"", 10)

    async def sweep_at(offset: float) -> list[str]:
        clock.now = start + offset
        return sorted(g.session_id for g in await store.sweep())

    assert await sweep_at(9.9) == []
    assert await sweep_at(10) == ["t10"]
    assert await sweep_at(14.9) == []
    assert await store.active() == {"m": 4}
    assert await sweep_at(15) == ["t10b"]
    assert await sweep_at(19.9) == []
    assert await sweep_at(20) == ["t20"]
    await store.load("t30")  # at 20: its 30 s start again
    assert await sweep_at(39.9) == []
    assert await sweep_at(40) == ["moved"]
    assert await sweep_at(49.9) == []
    assert await store.active() == {"m": 1}
    assert await sweep_at(50) == ["t30"]
    assert await store.active() == {}
    for sid in ("t10", "t10b", "t20", "t30", "moved"):
        assert await reason(store, sid) == "expired"


async def test_an_expired_session_met_by_a_load_is_reported_by_the_next_sweep(
    clock: Clock,
) -> None:
    store = MemoryStore(100, clock=clock)
    await store.create("a", "m", b"x", 10)
    clock.now += 10
    assert await reason(store, "a") == "expired"
    assert await store.active() == {}
    assert await store.sweep() == [Gone("a", "m", "expired")]
    assert await store.sweep() == []


async def test_sweep_of_many_expired_sessions_yields_to_the_event_loop(clock: Clock) -> None:
    many = 5000
    assert many > 2 * SWEEP_BATCH
    store = MemoryStore(10 * many, clock=clock)
    for i in range(many):
        await store.create(f"s{i}", "m" if i % 2 else "n", b"x", 10)
    await store.create("keep", "m", b"keep", LONG)
    clock.now += 10
    seen: list[int] = []

    async def meanwhile() -> None:
        seen.append(sum((await store.active()).values()))
        assert await reason(store, f"s{many - 1}") == "expired"  # a load during the sweep

    task = asyncio.create_task(meanwhile())
    gone = await store.sweep()
    assert task.done(), "the sweep never yielded to the event loop"
    await task
    assert 1 < seen[0] < many + 1  # it ran in the middle of the sweep
    assert sorted(g.session_id for g in gone) == sorted(f"s{i}" for i in range(many))
    assert {g.reason for g in gone} == {"expired"}
    assert await store.sweep() == []
    assert await store.active() == {"m": 1}
    assert store.bytes == counted(len(b"keep"))


async def test_active_counts_follow_create_delete_expire_and_evict(clock: Clock) -> None:
    store = MemoryStore(3, clock=clock)
    await store.create("a", "m1", b"", LONG)
    await store.create("b", "m2", b"", LONG)
    await store.create("c", "m1", b"", 10)
    assert await store.active() == {"m1": 2, "m2": 1}
    await store.delete("b")
    assert await store.active() == {"m1": 2}
    clock.now += 10
    await store.sweep()
    assert await store.active() == {"m1": 1}
    await store.create("d", "m2", b"", LONG)
    await store.create("e", "m2", b"", LONG)
    assert await store.create("f", "m2", b"", LONG) == [Gone("a", "m1", "evicted")]
    assert await store.active() == {"m2": 3}
    assert await store.compare_and_set("d", 1, b"x", 5) is True  # a new TTL keeps the counts
    assert await store.active() == {"m2": 3}
    clock.now += 5
    assert await reason(store, "d") == "expired"
    assert await store.active() == {"m2": 2}


async def test_owner_cap_refuses_and_evicts_nothing(clock: Clock) -> None:
    store = MemoryStore(3, clock=clock)
    await store.create("a1", "m", b"", LONG, owner="alice", max_owned=2)
    await store.create("b1", "m", b"", LONG, owner="bob", max_owned=2)
    await store.create("a2", "m", b"", LONG, owner="alice", max_owned=2)
    with pytest.raises(TooManyRequests) as info:
        await store.create("a3", "m", b"", LONG, owner="alice", max_owned=2)
    assert info.value.code == "session_quota" and info.value.status == 429
    for sid in ("a1", "b1", "a2"):
        assert (await store.load(sid)).version == 1
    assert await reason(store, "a3") == "unknown"
    assert await store.sweep() == []
    await store.delete("a1")
    assert await store.create("a3", "m", b"", LONG, owner="alice", max_owned=2) == []
    clock.now += LONG
    await store.sweep()
    assert await store.create("a4", "m", b"", LONG, owner="alice", max_owned=1) == []


async def test_tombstones_are_bounded(clock: Clock) -> None:
    store = MemoryStore(100, tombstones=2, clock=clock)
    for sid in "abc":
        await store.create(sid, "m", b"", LONG)
        await store.delete(sid)
    assert [await reason(store, sid) for sid in "abc"] == ["unknown", "deleted", "deleted"]


async def test_byte_budget_evicts_from_the_owner_over_its_share(clock: Clock) -> None:
    store = MemoryStore(100, max_bytes=100_000 + 6 * ENTRY_BYTES, clock=clock)
    await store.create("a", "m", bytes(10_000), LONG, owner="alice")  # least recently used
    for i in range(5):
        assert await store.create(f"b{i}", "m", bytes(15_000), LONG, owner="bob") == []
    await store.load("b0")
    assert await store.compare_and_set("b4", 1, bytes(40_000), LONG) is True  # 110 kB
    assert await store.sweep() == [Gone("b1", "m", "evicted")]
    assert await store.create("b5", "m", bytes(30_000), LONG, owner="bob") == [
        Gone("b2", "m", "evicted"),
        Gone("b3", "m", "evicted"),
    ]
    assert store.bytes == counted(10_000, 15_000, 40_000, 30_000)
    assert await store.load("a") == Stored(bytes(10_000), 1)


async def test_an_owner_whose_one_session_exceeds_its_share_keeps_it_until_others_write(
    clock: Clock,
) -> None:
    store = MemoryStore(100, max_bytes=100_000 + 4 * ENTRY_BYTES, clock=clock)
    await store.create("a", "m", bytes(10_000), LONG, owner="alice")
    for sid in ("b0", "b1", "b2"):
        await store.create(sid, "m", bytes(10_000), LONG, owner="bob")
    # alice's one session grows past the budget: bob, within his share, loses nothing
    assert await store.compare_and_set("a", 1, bytes(90_000), LONG) is True
    assert await store.sweep() == []
    assert store.bytes == counted(90_000, 10_000, 10_000, 10_000)
    # the next write of another owner evicts alice's session, the one over its share
    assert await store.create("b3", "m", bytes(10_000), LONG, owner="bob") == [
        Gone("a", "m", "evicted")
    ]
    assert store.bytes == counted(10_000, 10_000, 10_000, 10_000)
