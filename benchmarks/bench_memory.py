"""Memory a serving process holds per session, against the bound README states.

    .venv/bin/python benchmarks/bench_memory.py [--models models/watch-gru models/watch-gru-1024]
        [--sessions 200] [--flood 600] [--budget-mib 64] [--glibc-default]

1. Per session held: for each model, the largest chunk allowed (SARNN_MAX_CHUNK_STEPS, 4096
   steps) with masks is run once on the real engine; then `--sessions` sessions each apply such
   a chunk through the data plane over the memory store (the engine answering every call with
   those real outputs, so the run takes seconds rather than minutes of H = 1024 compute). The
   process's RSS growth per session held is printed beside the bound README states: what the
   byte budget counts (the record, at most 450 + 4S + T(4C + 2 + H/8) bytes, plus ENTRY_BYTES)
   and ALLOCATOR more for the C allocator (whole pages for large buffers, freed memory kept).
2. Flood: a plane whose byte budget is `--budget-mib` takes `--flood` such sessions of each
   model (several times the budget): the RSS growth is printed beside the budget, with the
   sessions and bytes the store holds.

RSS is read from /proc/self/statm after a garbage collection: the baseline after malloc gave
back what it could (malloc_trim), the end as the kernel counts it (memory freed on the way that
malloc keeps counts too), and again after a trim (what is held).
"""

import argparse
import asyncio
import ctypes
import gc
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from sarnn_serve import malloc
from sarnn_serve.auth import Principal
from sarnn_serve.card import ModelCard
from sarnn_serve.engine import Engine, EngineOutput
from sarnn_serve.metrics import Monitor, PromMetrics
from sarnn_serve.registry import LoadedModel, Registry, read_card
from sarnn_serve.schemas import ChunkRequest, SessionCreate
from sarnn_serve.service import DataPlane
from sarnn_serve.settings import Settings
from sarnn_serve.store import ENTRY_BYTES
from sarnn_serve.store.memory import MemoryStore

MiB = 1024 * 1024
ALLOCATOR = 0.05  # RSS beyond what the budget counts, as a share of it (README)


def rss_bytes(trim: bool = False) -> int:
    gc.collect()
    if trim:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class Replay:
    """An engine that answers every call with one real call's outputs (tiled over the rows)."""

    def __init__(self, out: EngineOutput) -> None:
        self.out = out
        self.paths = ["dense"]

    def run(self, x, state, lengths=None, threshold=None, path="dense") -> EngineOutput:
        b, t = x.shape[:2]
        o = self.out
        return EngineOutput(
            np.repeat(o.logits[:, :t], b, axis=0),
            np.repeat(o.updates[:, :t], b, axis=0),
            np.repeat(o.state, b, axis=0),
        )


def largest_chunk(model: Path, steps: int) -> tuple[ModelCard, EngineOutput, list]:
    card = read_card(model / "model.json")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, steps, card.n_features)).astype(np.float32)
    out = Engine(model / "model.onnx").run(x, np.zeros((1, card.state_size), np.float32))
    return card, out, x[0].tolist()


def bound(card: ModelCard, steps: int) -> int:
    """The documented bound of one session held after a `steps`-step chunk with masks."""
    h, c = card.hidden, card.n_classes
    counted = 450 + 4 * card.state_size + steps * (4 * c + 2 + (h + 7) // 8) + ENTRY_BYTES
    return round(counted * (1 + ALLOCATOR))


async def drive(card: ModelCard, out: EngineOutput, rows: list, sessions: int, budget: int):
    settings = Settings(
        max_store_bytes=budget,
        batch_inline_steps=0,
        session_create_rate=1e9,
        session_create_burst=10**9,
        max_sessions_per_key=10**9,
    )
    store = MemoryStore(settings.max_sessions, settings.max_store_bytes)
    executor = ThreadPoolExecutor(1)
    plane = DataPlane(
        settings,
        Registry({card.name: LoadedModel(card, Replay(out))}),
        store,
        Monitor(PromMetrics(), {card.name: card.hidden}),
        executor,
    )
    await plane.start()
    me = Principal("bench")
    chunk = ChunkRequest(seq=0, inputs=rows, include_mask=True)
    for _ in range(2):  # warm up, then close: only the measured sessions are counted held
        sid = (await plane.create_session(me, SessionCreate(model=card.name)))["id"]
        await plane.advance(me, sid, chunk)
        await plane.delete_session(me, sid)
    await asyncio.sleep(0.05)
    before = rss_bytes(trim=True)
    for _ in range(sessions):
        sid = (await plane.create_session(me, SessionCreate(model=card.name)))["id"]
        await plane.advance(me, sid, chunk)
    await asyncio.sleep(0.05)
    grown, kept = rss_bytes() - before, rss_bytes(trim=True) - before
    held = sum((await store.active()).values())
    await plane.stop()
    executor.shutdown()
    return grown, kept, held, store.bytes


def measure(
    model: Path, sessions: int, budget: int, glibc_default: bool
) -> tuple[ModelCard, int, int, int, int]:
    """In a fresh process set up as the server sets itself up: the card, RSS growth (as
    counted, and after a trim), sessions held and bytes counted after `sessions` sessions each
    took the largest chunk."""
    if not glibc_default:
        malloc.give_back_large_buffers()
    card, out, rows = largest_chunk(model, Settings().max_chunk_steps)
    return (card, *asyncio.run(drive(card, out, rows, sessions, budget)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        type=Path,
        nargs="+",
        default=[Path("models/watch-gru"), Path("models/watch-gru-1024")],
    )
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--flood", type=int, default=600)
    p.add_argument("--budget-mib", type=int, default=64)
    p.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's moving mmap threshold (the server fixes it: sarnn_serve/malloc.py)",
    )
    args = p.parse_args()
    steps = Settings().max_chunk_steps
    fresh = multiprocessing.get_context("spawn")
    print(
        f"largest chunk {steps} steps, with masks; ENTRY_BYTES {ENTRY_BYTES}; "
        f"allocator allowance {ALLOCATOR:.0%}; glibc's mmap threshold "
        + ("moving (its default)" if args.glibc_default else "fixed (as the server sets it)")
    )
    print("| model | H | record bytes | RSS per session held (after trim) | bound | sessions |")
    print("|---|---:|---:|---:|---:|---:|")
    for model in args.models:
        with fresh.Pool(1) as pool:
            card, grown, kept, held, counted = pool.apply(
                measure, (model, args.sessions, 2**40, args.glibc_default)
            )
        record = counted / held - ENTRY_BYTES
        print(
            f"| {card.name} | {card.hidden} | {record:,.0f} | {grown / args.sessions:,.0f} "
            f"({kept / args.sessions:,.0f}) | {bound(card, steps):,} | {held} |"
        )
    budget = args.budget_mib * MiB
    for model in args.models:
        with fresh.Pool(1) as pool:
            card, grown, kept, held, counted = pool.apply(
                measure, (model, args.flood, budget, args.glibc_default)
            )
        print(
            f"flood: {args.flood} sessions of {card.name} into a {args.budget_mib} MiB budget: "
            f"{held} held ({counted / MiB:.1f} MiB counted); RSS grew {grown / MiB:.1f} MiB "
            f"({(grown - budget) / MiB:+.1f} MiB beside the budget; {kept / MiB:.1f} after a "
            "trim)"
        )


if __name__ == "__main__":
    main()
