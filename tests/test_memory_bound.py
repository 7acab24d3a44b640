"""Everything a process holds per session counts toward SARNN_MAX_STORE_BYTES.

The data plane over a fake engine (tests.test_unit_batcher.FakeEngine, H = 512, so a chunk's
masks are 8 x their packed size once unpacked) with a memory store or a real Redis; Python's
allocations are traced (tracemalloc, numpy's arrays included) while sessions are driven with
long chunks and masks past the budget. What stays allocated must be within the budget plus a
small constant, and a store's byte count must cover what its sessions really hold.
"""

import asyncio
import gc
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from sarnn_serve.metrics import Monitor, PromMetrics
from sarnn_serve.registry import LoadedModel, Registry
from sarnn_serve.schemas import ChunkRequest, SessionCreate
from sarnn_serve.service import DataPlane
from sarnn_serve.settings import Settings
from sarnn_serve.store import SessionStore
from sarnn_serve.store.memory import MemoryStore
from tests.fixtures import CARD, MODEL, FakeEngine, anonymous

HIDDEN = 512
WIDE = CARD.model_copy(update={"hidden": HIDDEN})
BUDGET = 4 * 1024 * 1024
SLACK = 512 * 1024  # the plane's own bounded bookkeeping (recent ids, locks, metrics)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.slow)])
async def plane(request: pytest.FixtureRequest) -> AsyncIterator[DataPlane]:
    settings = Settings(max_store_bytes=BUDGET, batch_inline_steps=0)
    store: SessionStore
    if request.param == "memory":
        store = MemoryStore(settings.max_sessions, settings.max_store_bytes)
    else:
        from sarnn_serve.store.redis import RedisStore

        url = request.getfixturevalue("redis_url")
        store = RedisStore(url, f"memory-{uuid.uuid4().hex}", settings.max_sessions)
    executor = ThreadPoolExecutor(1)
    live = DataPlane(
        settings,
        Registry({MODEL: LoadedModel(WIDE, FakeEngine())}),
        store,
        Monitor(PromMetrics(), {MODEL: HIDDEN}),
        executor,
    )
    await live.start()
    yield live
    await live.stop()
    executor.shutdown()


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_memory_held_stays_within_the_byte_budget(plane: DataPlane) -> None:
    me = anonymous()
    x = np.random.default_rng(0).integers(-8, 9, (1024, WIDE.n_features)) / 8
    long_chunk = ChunkRequest(seq=0, inputs=x.tolist(), include_mask=True)
    for _ in range(2):  # warm up: first-use allocations are not what sessions hold
        sid = (await plane.create_session(me, SessionCreate()))["id"]
        await plane.advance(me, sid, long_chunk)
    tracemalloc.start()
    try:
        before = traced()
        for _ in range(80):  # each record is ~80 kB: 6.4 MB in all, past the 4 MiB budget
            sid = (await plane.create_session(me, SessionCreate()))["id"]
            result = await plane.advance(me, sid, long_chunk)
            assert result.outputs.masks.shape == (1024, HIDDEN)
            del result
        await asyncio.sleep(0.05)  # the last engine call's callbacks let go of its outputs
        held = traced() - before
    finally:
        tracemalloc.stop()
    assert held <= BUDGET + SLACK, f"{held / 2**20:.1f} MiB held for a budget of 4 MiB"


@pytest.mark.parametrize("owners", [1, 7, 5000])
async def test_a_stores_byte_count_covers_what_its_sessions_hold(owners: int) -> None:
    store = MemoryStore(100_000, max_bytes=2**40)
    records = [bytes(np.random.default_rng(i).bytes(300)) for i in range(5000)]
    tracemalloc.start()
    try:
        before = traced()
        for i, data in enumerate(records):
            ttl = 900.0 + i % 10
            await store.create(f"s{i:021d}", MODEL, data, ttl, owner=f"ip-10.0.{i % owners}")
            await store.load(f"s{i:021d}")
        held = traced() - before + sum(len(d) for d in records)  # the records were made above
    finally:
        tracemalloc.stop()
    assert held <= store.bytes, (
        f"{held / 5000:.0f} bytes held per session, counted {store.bytes / 5000:.0f}"
    )
