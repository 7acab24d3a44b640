"""Soak test: a long WebSocket load at half the measured maximum, watching errors and memory.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--sessions 100] [--json out.json]

Starts its own sarnn-serve (the shipped model, in-memory store) on loopback, then
1. measures the maximum rate: --sessions sessions sending 1-sample messages as fast as they
   can for 15 s (benchmarks/load_ws.py, rate 0);
2. offers half that rate for --minutes minutes (each session at max / 2 / sessions messages per
   second), sampling the server's resident memory (RSS) every 5 s.
Passes (exit 0) with 0 errors and an RSS growth under 5% from the end of the first minute to
the end of the run (the first minute fills caches, pools and the allocator's arenas).
"""

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_ws import measure, parse_args, spawned_server

SAMPLE_S = 5.0
SETTLE_S = 60.0
MAX_GROWTH = 0.05


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096


class RssSampler(threading.Thread):
    """Samples a process's RSS every SAMPLE_S seconds until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            self.samples.append((time.monotonic() - self.started_at, rss_bytes(self.pid)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--sessions", type=int, default=100)
    p.add_argument("--json", dest="json_path")
    args = p.parse_args()
    with spawned_server(None, []) as (url, pid):
        common = ["--url", url, "--sessions", str(args.sessions), "--chunk", "1"]
        peak = asyncio.run(measure(parse_args([*common, "--rate", "0", "--duration", "15"]), pid))
        if peak["errors"] or not peak["messages_per_s"]:
            raise SystemExit(f"the maximum-rate run failed: {peak['error_kinds']}")
        rate = peak["messages_per_s"] / 2 / args.sessions
        print(f"maximum {peak['messages_per_s']:,.0f} messages/s; soaking at half: {rate:.1f}/s")
        sampler = RssSampler(pid)
        sampler.start()
        duration = str(args.minutes * 60)
        soak = asyncio.run(
            measure(parse_args([*common, "--rate", str(rate), "--duration", duration]), pid)
        )
        sampler.stop.set()
        sampler.join()
    settled = next(rss for t, rss in sampler.samples if t >= SETTLE_S)
    final = sampler.samples[-1][1]
    growth = final / settled - 1
    result = {
        "max_messages_per_s": peak["messages_per_s"],
        "soak_messages_per_s": soak["messages_per_s"],
        "minutes": args.minutes,
        "errors": soak["errors"],
        "error_kinds": soak["error_kinds"],
        "latency_ms": soak["latency_ms"],
        "rss_mb_after_first_minute": settled / 2**20,
        "rss_mb_at_end": final / 2**20,
        "rss_growth": growth,
        "rss_samples_mb": [(round(t), round(r / 2**20, 1)) for t, r in sampler.samples],
    }
    print(
        f"soak: {soak['messages_per_s']:,.0f} messages/s for {args.minutes:g} min, "
        f"{soak['errors']} errors, p99 {soak['latency_ms']['p99']:.1f} ms; server RSS "
        f"{settled / 2**20:.1f} MB after 1 min -> {final / 2**20:.1f} MB ({growth:+.1%})"
    )
    if args.json_path:
        Path(args.json_path).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0 if soak["errors"] == 0 and growth < MAX_GROWTH else 1


if __name__ == "__main__":
    raise SystemExit(main())
