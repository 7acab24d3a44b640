"""Memory per session and event-loop stalls of the expiry sweep, for the in-memory store.

    .venv/bin/python benchmarks/bench_store.py [--sessions 100000] [--model models/watch-gru]

1. Bytes per session: a session record after a 1-step chunk and after the largest allowed
   chunk (SARNN_MAX_CHUNK_STEPS, default 4096), with and without masks, as encoded for the
   store; and the process RSS growth per session with `--sessions` such records held in a
   MemoryStore (each record its own bytes object). Records after the largest chunk are held at
   --sessions / 10 (100k of them would need ~19 GB; the store's byte budget,
   SARNN_MAX_STORE_BYTES, evicts long before that).
2. Sweep stall: `--sessions` sessions, then all of them expire at once; the longest gap a
   1 ms ticker task sees while sweep() runs (beside its longest gap over 0.5 s without a
   sweep), and the time of a sweep when nothing expired.
"""

import argparse
import asyncio
import gc
import time
from pathlib import Path

import numpy as np

from sarnn_serve.engine import Engine
from sarnn_serve.records import PackedOutputs
from sarnn_serve.registry import read_card
from sarnn_serve.results import StepOutputs
from sarnn_serve.sessions import SessionRecord, new_session_id
from sarnn_serve.settings import Settings
from sarnn_serve.store.memory import MemoryStore


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def record_after(engine: Engine, steps: int, n_features: int, hidden: int, masks: bool) -> bytes:
    """The encoded record of a session that has just applied a `steps`-step chunk."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, steps, n_features)).astype(np.float32)
    out = engine.run(x, np.zeros((1, hidden), np.float32))
    record = SessionRecord(
        id=new_session_id(),
        model="m",
        model_version="v",
        threshold=0.5,
        ttl_s=900.0,
        state=out.state[0],
        owner="ip-127.0.0.1",
        next_seq=1,
        steps=steps,
        updates=int(out.updates.sum()),
        last_digest=b"\0" * 16,
        last_outputs=PackedOutputs.of(
            StepOutputs.from_graph(0, out.logits[0], out.updates[0], masks)
        ),
    )
    return record.encode()


async def rss_per_session(blob: bytes, n: int) -> float:
    store = MemoryStore(n + 1)
    gc.collect()
    before = rss_bytes()
    for i in range(n):
        await store.create(f"s{i:08d}", "m", bytes(bytearray(blob)), 900.0, owner=f"o{i % 97}")
    gc.collect()
    return (rss_bytes() - before) / n


async def sweep_stall(n: int) -> tuple[float, float, float, float]:
    now = [0.0]
    store = MemoryStore(n + 1, clock=lambda: now[0])
    for i in range(n):
        await store.create(f"s{i:08d}", "m", b"x" * 64, 900.0 + (i % 7))
    started = time.perf_counter()
    await store.sweep()
    idle_sweep = time.perf_counter() - started

    gaps = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            t = time.perf_counter()
            gaps.append(t - last)
            last = t

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.5)
    baseline = max(gaps)
    gaps.clear()
    now[0] = 10_000.0
    started = time.perf_counter()
    dropped = await store.sweep()
    full_sweep = time.perf_counter() - started
    await asyncio.sleep(0.005)  # the ticker wakes: the gap spanning the sweep's end is counted
    tick.cancel()
    assert len(dropped) == n
    return idle_sweep, full_sweep, max(gaps), baseline


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=100_000)
    p.add_argument("--model", type=Path, default=Path("models/watch-gru"))
    args = p.parse_args()
    card = read_card(args.model / "model.json")
    engine = Engine(args.model / "model.onnx")
    longest = Settings().max_chunk_steps
    f, h, c = card.n_features, card.hidden, card.n_classes
    print(f"model {card.name}: F={f} H={h} C={c}; largest chunk {longest} steps")
    print("bound: ~450 + 4H + T(4C + 2 [+ H/8 with masks]) bytes per record")
    print("| record after | encoded bytes | RSS per session | held |")
    print("|---|---:|---:|---:|")
    for steps, masks in ((1, False), (1, True), (longest, False), (longest, True)):
        blob = record_after(engine, steps, f, h, masks)
        held = args.sessions if steps == 1 else args.sessions // 10
        per = await rss_per_session(blob, held)
        what = f"{steps}-step chunk" + (" with masks" if masks else "")
        print(f"| {what} | {len(blob):,} | {per:,.0f} | {held:,} |")
        gc.collect()
    idle, full, gap, baseline = await sweep_stall(args.sessions)
    print(
        f"sweep of {args.sessions:,} sessions: nothing expired {idle * 1e3:.2f} ms; "
        f"all expired {full * 1e3:.0f} ms in all, longest event-loop stall {gap * 1e3:.1f} ms "
        f"(a 1 ms ticker's longest gap without a sweep: {baseline * 1e3:.1f} ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
