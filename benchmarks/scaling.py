"""sarnn-serve at 1..N uvicorn workers, with the memory store and with the Redis store.

    .venv/bin/python benchmarks/scaling.py [--workers 1 2] [--duration 10] [--warmup 2]
        [--out docs/bench]

For each store one sarnn-serve per worker count is started, all running at once (servers, runs
and figures as in benchmarks/compare.py, whose functions this uses: watch-gru, dense graph,
quotas lifted, closed loop, client on the same cores), and these loads run against them, each
load against every worker count back to back (order rotated by one from load to load):

  memory  WebSocket binary, 1 sample/message x 256 clients
          WebSocket binary, 32 samples/message x 64 clients
  redis   the same two, and REST columns, 32 samples/message x 64 clients

The memory store has no REST row: with several workers a REST chunk may land on a worker that
does not hold its session (421 other_worker). One redis-server (no persistence) serves every
Redis-store server; its CPU is in each run's record (redis_cpu, as in compare.py).

Writes --out/scaling.json (every run) and scaling.md (a row per store, transport and shape:
steps/s and p99 per worker count, and each count's steps/s over the first count's), and prints
the table.
"""

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare

ROWS = {  # store -> (transport, shape) in run order
    "memory": [("ws-binary", compare.Shape(1, 256)), ("ws-binary", compare.Shape(32, 64))],
    "redis": [
        ("ws-binary", compare.Shape(1, 256)),
        ("ws-binary", compare.Shape(32, 64)),
        ("rest", compare.Shape(32, 64)),
    ],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="first seconds of a run not scored")
    p.add_argument("--out", type=Path, default=compare.ROOT / "docs" / "bench", help="output dir")
    args = p.parse_args(argv)
    if min(args.workers) < 1 or not 0 <= args.warmup < args.duration:
        p.error("need --workers >= 1 and 0 <= --warmup < --duration")
    return args


def run_store(
    store: str, redis: compare.Redis, args: argparse.Namespace, tmp: Path
) -> Iterator[dict]:
    """Start one sarnn-serve per worker count with `store`, run the store's rows against each
    (their records), stop them: per row every count back to back, in an order rotated by one
    from row to row."""
    with contextlib.ExitStack() as stack:
        redis_or_none = redis if store == "redis" else None
        servers = {n: compare.start_ours(stack, tmp, n, redis_or_none) for n in args.workers}
        for i, (transport, shape) in enumerate(ROWS[store]):
            for n in compare.rotated(args.workers, i):
                record = compare.run_load(
                    transport, servers[n], shape, args.duration, args.warmup, tmp
                )
                yield record | {"store": store, "workers": n}


def render_markdown(records: list[dict], meta: dict) -> str:
    """scaling.md: a row per store, transport and shape; steps/s and p99 per worker count."""
    counts = sorted({r["workers"] for r in records})
    head = ["store", "transport", "shape"]
    head += [f"{col} @{n}" for n in counts for col in ("steps/s", "p99 ms")]
    head += [f"speed-up {n}/{counts[0]}" for n in counts[1:]]
    lines = [
        "# sarnn-serve across uvicorn workers",
        "",
        f"`{' '.join(meta['command'])}` at {meta['started']} on {meta['host']} ({meta['cpus']} "
        f"cpus, commit {meta['commit']}). Closed loop, {meta['duration']:g} s per run of which "
        f"the first {meta['warmup']:g} s are not scored; the client runs on the same cores. "
        "@N: N workers.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|---|" + "---:|" * (len(head) - 3),
    ]
    for store, rows in ROWS.items():
        for transport, shape in rows:
            runs = [r for r in records if (r["store"], r["transport"]) == (store, transport)]
            if runs := compare.of_shape(runs, shape):
                cells = [store, compare.TRANSPORTS[transport].label, str(shape)]
                lines.append("| " + " | ".join(cells + figure_cells(runs, counts)) + " |")
    return "\n".join(lines) + "\n"


def figure_cells(runs: list[dict], counts: list[int]) -> list[str]:
    """Steps/s and p99 at each worker count, then each count's steps/s over the first's."""
    by = {n: compare.summary([r for r in runs if r["workers"] == n]) for n in counts}
    cells = [
        compare.num(by[n][k], f) for n in counts for k, f in (("steps", ",.0f"), ("p99", ".1f"))
    ]
    first = by[counts[0]]["steps"]
    return cells + [compare.num(compare.ratio(by[n]["steps"], first), ".2f") for n in counts[1:]]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    meta = compare.run_meta(__file__, argv, args)
    total = sum(len(rows) for rows in ROWS.values()) * len(args.workers)
    records: list[dict] = []
    with compare.servers_scope() as (stack, tmp):
        redis = compare.start_redis(stack, tmp)
        for store in ROWS:
            for record in run_store(store, redis, args, tmp):
                records.append(record)
                print(compare.progress(len(records), total, record), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps({**meta, "runs": records}, indent=2) + "\n")
    markdown = render_markdown(records, meta)
    (args.out / "scaling.md").write_text(markdown)
    print(f"\n{markdown}\nwrote {args.out / 'scaling.json'}, scaling.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
