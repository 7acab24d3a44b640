"""Server CPU per step routed by measurement against the same server forced to the dense graph.

    .venv/bin/python benchmarks/bench_served_savings.py --model-dir DIR [--threshold 0.9]
        [--sessions 16] [--rate 20] [--chunk 1] [--duration 20] [--rounds 2] [--json out.json]

Serves DIR (one model, e.g. a large-H model) twice per round, once with SARNN_ENGINE_PATH=auto
(each batch on the dense graph or the work-skipping path, the native kernel where built, by the
load-time calibration) and once with SARNN_ENGINE_PATH=dense, alternating, and drives each with
the same WebSocket load (benchmarks/load_ws.py: --sessions sessions streaming held-out watch
recordings at --rate samples/s each, --chunk samples per message, sessions opened with
--threshold). Reports, per mode, the achieved steps/s, the server's CPU seconds per 1,000 steps
(its user + system CPU time over the scored window), p99 latency, the update rate the sessions
reported and the engine's calls per graph, and the ratio of CPU per step between the two modes.
Client and server share the machine's cores; the offered load is the same for both modes, so the
server's CPU time per step is what differs.
"""

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_ws import measure, parse_args, spawned_server

MODES = ("auto", "dense")


def run_mode(args: argparse.Namespace, mode: str) -> dict:
    env = [f"SARNN_ENGINE_PATH={mode}"]
    with spawned_server(args.model_dir, env) as (url, pid):
        load = [
            *("--url", url, "--sessions", str(args.sessions), "--chunk", str(args.chunk)),
            *("--rate", str(args.rate), "--duration", str(args.duration)),
            *("--threshold", str(args.threshold)),
        ]
        figures = asyncio.run(measure(parse_args(load), pid))
        http = url.replace("ws://", "http://")
        name = httpx.get(f"{http}/v1/models", timeout=10).json()[0]["name"]
        stats = httpx.get(f"{http}/v1/models/{name}/stats", timeout=10).json()
    cpu = figures["server_cpu"]["total"]
    steps = figures["achieved_steps_per_s"]
    return {
        "mode": mode,
        "steps_per_s": steps,
        "server_cpu_s_per_1000_steps": 1000 * cpu / steps if steps else float("nan"),
        "p99_ms": figures["latency_ms"]["p99"],
        "errors": figures["errors"],
        "update_rate": stats["update_rate"],
        "engine": {k: stats["engine"][k] for k in ("calls", "seconds", "measured_time_saved")},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--chunk", type=int, default=1, help="samples per message")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", dest="json_path")
    args = p.parse_args()
    runs = [run_mode(args, mode) for _ in range(args.rounds) for mode in MODES]
    print("| mode | steps/s | server CPU s / 1k steps | p99 ms | update rate | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in runs:
        print(
            f"| {r['mode']} | {r['steps_per_s']:,.0f} | {r['server_cpu_s_per_1000_steps']:.3f} | "
            f"{r['p99_ms']:.1f} | {r['update_rate']:.3f} | {r['errors']} |"
        )
    cpu = {m: statistics.median(r["server_cpu_s_per_1000_steps"] for r in runs if r["mode"] == m)
           for m in MODES}  # fmt: skip
    ratio = cpu["dense"] / cpu["auto"]
    print(f"server CPU per step, dense / auto (work skipped where faster): {ratio:.2f}x")
    if args.json_path:
        result = {"runs": runs, "cpu_ratio_dense_over_auto": ratio, "args": vars(args)}
        Path(args.json_path).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
