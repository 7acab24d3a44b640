"""Sessions on a real Redis Cluster (3 masters, a replica each, on loopback).

The store's behavioural suite (tests/store_contract.py) runs again on the cluster, through the
cluster client and one shard (its exact single-Redis semantics); then what only the cluster
has: shards spread evenly over the masters, the cap per shard and per key, WAIT, and sessions
streamed over REST and WebSocket through 2 sarnn-serve replicas while masters are killed
(scripts/redis_failover.py): every answer equal to a clean run, every lost chunk reported as
409 session_rolled_back and resent, none doubled.
"""

import asyncio
import importlib.util
import shutil
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from sarnn_serve.errors import SessionNotFound, TooManyRequests
from sarnn_serve.settings import Settings
from sarnn_serve.store import SessionStore
from sarnn_serve.store.redis_connect import connect, make_redis_store
from sarnn_serve.store.redis_sharded import ShardedRedisStore, shard_tags
from tests.redis_topology import ClusterSet
from tests.store_contract import LONG, Backend, contract_tests

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
        reason="redis-server and redis-cli are not on PATH",
    ),
]
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "redis_failover.py"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    topo = ClusterSet(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield topo
    finally:
        topo.stop()


def _store(cluster: ClusterSet, max_sessions: int, shards: int, **kw) -> ShardedRedisStore:
    client = connect(Settings(store="redis", redis_url=cluster.url))
    return ShardedRedisStore(client, f"t{uuid.uuid4().hex[:8]}", max_sessions, shards, **kw)


class ClusterBackend(Backend):
    """The suite's stores on the cluster: every open() a replica's client, one shard."""

    kind = "cluster"

    def __init__(self, cluster: ClusterSet) -> None:
        self.cluster = cluster
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.stores: list[ShardedRedisStore] = []

    def open(self, max_sessions: int = 100) -> SessionStore:
        client = connect(Settings(store="redis", redis_url=self.cluster.url))
        store = ShardedRedisStore(client, self.prefix, max_sessions, 1)
        self.stores.append(store)
        return store

    async def elapse(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@pytest.fixture
async def backend(cluster: ClusterSet) -> AsyncIterator[ClusterBackend]:
    """The `backend` of the suite's tests collected here."""
    backend = ClusterBackend(cluster)
    try:
        yield backend
    finally:
        for store in backend.stores:
            await store.close()


# the behavioural suite, on the cluster
globals().update(contract_tests())


def test_settings_pick_the_cluster_store(cluster: ClusterSet) -> None:
    store = make_redis_store(Settings(store="redis", redis_url=cluster.url, redis_shards=12))
    assert isinstance(store, ShardedRedisStore) and len(store.shards) == 12
    asyncio.run(store.close())


def test_shards_spread_evenly_over_the_masters(cluster: ClusterSet) -> None:
    from redis.crc import key_slot

    tags = shard_tags("sarnn", 60)
    assert len(set(tags)) == 60
    per_master = Counter(cluster.master_of(key_slot(t.encode())) for t in tags)
    assert sorted(per_master.values()) == [20, 20, 20]


async def test_every_key_of_a_session_is_in_its_shards_slot(cluster: ClusterSet) -> None:
    from redis.crc import key_slot

    store = _store(cluster, 100, 6)
    try:
        for i in range(12):
            await store.create(f"s{i}", "m", b"x", LONG, owner=f"o{i % 3}", max_owned=10)
        await store.delete("s0", "o0")  # a tombstone and its owner
        keys = [
            key
            for port in {p for p, _, _ in cluster.slot_ranges()}
            for key in ClusterSet.keys_of(port, f"*{store.prefix}*")
        ]
        by_shard = {s.prefix: key_slot(s.prefix.encode()) for s in store.shards}
        session_keys = [k for k in keys if ".owner." not in k]  # owner sets: their own slot
        assert {k.split(":")[0] for k in session_keys} <= set(by_shard)
        assert all(key_slot(k.encode()) == by_shard[k.split(":")[0]] for k in session_keys)
        for i in range(1, 12):  # each session's record is in the shard that routes it
            assert f"{store.shard(f's{i}').prefix}:s:s{i}" in keys
        assert f"{store.shard('s0').prefix}:gone:s0" in keys
    finally:
        await store.close()


async def test_the_per_key_cap_spans_the_shards(cluster: ClusterSet) -> None:
    store = _store(cluster, 100, 6, prune_after_s=0.0)
    try:
        ids = [f"k{i}" for i in range(3)]
        assert len({store.shard(i).prefix for i in [*ids, "k3", "k4", "k5"]}) > 1
        for sid in ids:
            await store.create(sid, "m", b"x", LONG, owner="alice", max_owned=3)
        with pytest.raises(TooManyRequests):
            await store.create("k3", "m", b"x", LONG, owner="alice", max_owned=3)
        with pytest.raises(SessionNotFound):  # refused whole: nothing was created
            await store.load("k3")
        await store.create("b0", "m", b"x", LONG, owner="bob", max_owned=3)  # bob's own cap
        await store.delete("k0", "alice")
        await store.create("k3", "m", b"x", LONG, owner="alice", max_owned=3)
        # an admin's delete (no owner named) releases the owner's place too
        await store.delete("k1")
        await store.create("k4", "m", b"x", 0.2, owner="alice", max_owned=3)
        # an expired session is dropped from the owner's set when the key reaches its cap
        await asyncio.sleep(0.3)
        await store.sweep()
        await store.create("k5", "m", b"x", LONG, owner="alice", max_owned=3)
        with pytest.raises(TooManyRequests):
            await store.create("k6", "m", b"x", LONG, owner="alice", max_owned=3)
    finally:
        await store.close()


async def test_the_session_cap_is_kept_per_shard(cluster: ClusterSet) -> None:
    store = _store(cluster, 4, 2)  # 2 sessions per shard
    try:
        ids = [f"c{i}" for i in range(40)]
        first = [i for i in ids if store.shard(i) is store.shards[0]][:3]
        gone = [await store.create(sid, "m", b"x", LONG) for sid in first]
        assert gone[:2] == [[], []]
        assert [g.session_id for g in gone[2]] == [first[0]]
        other = next(i for i in ids if store.shard(i) is store.shards[1])
        assert await store.create(other, "m", b"x", LONG) == []  # its shard had room
        assert await store.active() == {"m": 3}
    finally:
        await store.close()


async def test_wait_confirms_each_write_or_counts_it(cluster: ClusterSet) -> None:
    from redis.crc import key_slot

    store = _store(cluster, 100, 6, wait=(1, 50))
    try:
        await store.create("w", "m", b"x", LONG)
        assert await store.compare_and_set("w", 1, b"y", LONG)
        assert store.wait.unconfirmed == 0
        master = cluster.master_of(key_slot(store.shard("w").prefix.encode()))
        replica = cluster.replicas_of(master)[0]
        cluster.procs.pause(replica)
        try:
            started = time.monotonic()
            assert await store.compare_and_set("w", 2, b"z", LONG)  # answered all the same
            assert time.monotonic() - started >= 0.05
        finally:
            cluster.procs.resume(replica)
        assert store.wait.unconfirmed == 1
        assert (await store.load("w")).data == b"z"
    finally:
        await store.close()


def _failover_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("redis_failover", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_failovers_lose_nothing_unreported_and_double_nothing() -> None:
    """Two masters killed under load, the second after its replication was cut: the chunks it
    acknowledged alone are reported lost and resent; the sessions end exactly as a clean run."""
    script = _failover_script()
    args = script.parser().parse_args(["cluster", "--sessions", "8", "--steps", "240"])
    report = script.run(args)
    print(script.format_report(report))
    assert not report["fatal"], report["fatal"]
    assert [f["failover"] for f in report["failovers"]] == ["kill", "cut, kill"]
    assert report["failovers"][1]["lost_reported"] > 0  # the cut lost chunks, and said so
    assert report["lost_and_reported"] == sum(f["lost_reported"] for f in report["failovers"])
    assert report["doubled"] == 0
    assert report["sessions_with_wrong_totals"] == 0
    assert report["sessions_differing_from_clean_run"] == 0
    assert report["resent_differing"] == 0
    assert set(report["errors"]) <= {"503 store_unavailable", "409 session_rolled_back"} | {
        k for k in report["errors"] if k.startswith(("ws_dropped", "connection"))
    }
    assert report["ok"]
