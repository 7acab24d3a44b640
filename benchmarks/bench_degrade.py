"""Graceful degradation at twice the load the server sustains, with it and without it.

    .venv/bin/python benchmarks/bench_degrade.py [--model watch-gru-1024] [--sessions 64]
        [--chunk 1] [--duration 20] [--queue-ms 20] [--overload 2] [--threshold TAU]
        [--json PATH]

Three phases, each against its own spawned `sarnn-serve` (the shipped models, routing by
measurement, SARNN_DEGRADE_QUEUE_MS=--queue-ms) and the same WebSocket sessions
(benchmarks/load_ws.py: real recordings, --chunk samples per message):

  capacity  every session sends as fast as its answers come back: the steps per second the
            server sustains at the sessions' own threshold (--threshold; default the card's)
  off       an open loop offering --overload x that rate, sessions opened without degrade
  on        the same offered load, sessions opened with degrade=true

Per phase: offered and answered steps per second, latency percentiles (send to answer),
errors, and the answers still missing when sending stopped plus a drain (--drain) (a backlog);
for "on", the mean threshold the chunks ran at (from the server's sarnn_effective_threshold
histogram) and the validation accuracy the card's threshold curve gives there against the
sessions' own threshold: the accuracy given up to hold the latency. A session can shed only
what its threshold range leaves: from the card's threshold, or a lower one it was opened with,
to the top of the card's `threshold_curve` (whose update rates say how much that sheds). The
machine is shared with the client (2 cores here): say so when quoting the figures.
"""

import argparse
import contextlib
import re
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import load_ws

from sarnn_serve.budget import ThresholdCurve
from sarnn_serve.card import ModelCard
from sarnn_serve.settings import DEFAULT_MODEL_DIR

THRESHOLD_SERIES = re.compile(r'^sarnn_effective_threshold_(sum|count)\{model="([^"]+)"\} (\S+)$')


def thresholds(http_url: str, model: str) -> tuple[float, float]:
    """(sum, count) of the server's sarnn_effective_threshold histogram for `model`."""
    found = {"sum": 0.0, "count": 0.0}
    for line in httpx.get(f"{http_url}/metrics", timeout=10).text.splitlines():
        m = THRESHOLD_SERIES.match(line)
        if m and m.group(2) == model:
            found[m.group(1)] = float(m.group(3))
    return found["sum"], found["count"]


def phase(args: argparse.Namespace, rate: float, degrade: bool) -> dict:
    """One load_ws run against a fresh server; the effective thresholds it saw."""
    env = [f"SARNN_DEGRADE_QUEUE_MS={args.queue_ms:g}", "SARNN_DEFAULT_MODEL=watch-gru"]
    argv = ["--sessions", str(args.sessions), "--chunk", str(args.chunk), "--rate", f"{rate:g}"]
    argv += ["--duration", str(args.duration), "--drain", str(args.drain), "--model", args.model]
    argv += ["--answer", "columns", "--session-param", f"degrade={str(degrade).lower()}"]
    if args.threshold is not None:
        argv += ["--session-param", f"threshold={args.threshold:g}"]
    with load_ws.spawned_server(None, env) as (ws_url, pid):
        run_args = load_ws.parse_args([*argv, "--url", ws_url])
        http_url = ws_url.replace("ws://", "http://")
        before = thresholds(http_url, args.model)
        figures = load_ws.runner(False)(load_ws.measure(run_args, pid))
        after = thresholds(http_url, args.model)
    chunks = after[1] - before[1]
    figures["mean_threshold"] = (after[0] - before[0]) / chunks if chunks else None
    figures["backlog"] = figures["messages_sent"] - figures["messages_answered"]
    return figures


def measure(args: argparse.Namespace, card: ModelCard) -> dict:
    capacity = phase(args, 0.0, degrade=False)
    sustained = capacity["achieved_steps_per_s"]
    per_session = args.overload * sustained / args.sessions
    rows = {"capacity": capacity}
    for name, degrade in (("off", False), ("on", True)):
        rows[name] = phase(args, per_session, degrade)
        print(f"  phase {name}: done", file=sys.stderr, flush=True)
    curve = ThresholdCurve.of(card)
    tau = rows["on"]["mean_threshold"]
    given_up = None
    if curve is not None and tau is not None:
        own = card.threshold if args.threshold is None else args.threshold
        given_up = curve.accuracy_at(own) - curve.accuracy_at(tau)
    return {
        "model": card.name,
        "sessions": args.sessions,
        "chunk": args.chunk,
        "queue_target_ms": args.queue_ms,
        "session_threshold": card.threshold if args.threshold is None else args.threshold,
        "overload": args.overload,
        "sustained_steps_per_s": sustained,
        "offered_steps_per_s": per_session * args.sessions,
        "accuracy_given_up": given_up,
        "phases": rows,
    }


def report(f: dict) -> str:
    lines = [
        f"Degradation: {f['model']}, {f['sessions']} sessions x {f['chunk']} sample(s) per "
        f"message at threshold {f['session_threshold']:g}, queueing delay target "
        f"{f['queue_target_ms']:g} ms; sustained "
        f"{f['sustained_steps_per_s']:,.0f} steps/s (closed loop), offered "
        f"{f['offered_steps_per_s']:,.0f} ({f['overload']:g}x) in phases off and on",
        "",
        "| phase | answered steps/s | p50 ms | p99 ms | errors | unanswered | mean threshold |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in f["phases"].items():
        lat = r["latency_ms"]
        tau = r["mean_threshold"]
        lines.append(
            f"| {name} | {r['achieved_steps_per_s']:,.0f} | {load_ws.fmt_ms(lat['p50'])} "
            f"| {load_ws.fmt_ms(lat['p99'])} | {r['errors']} | {r['backlog']} "
            f"| {'-' if tau is None else f'{tau:.3f}'} |"
        )
    if f["accuracy_given_up"] is not None:
        lines += [
            "",
            f"accuracy given up (the card's validation curve at the mean degraded threshold): "
            f"{100 * f['accuracy_given_up']:.1f} points",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="watch-gru-1024")
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--chunk", type=int, default=1)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--drain", type=float, default=5.0)
    p.add_argument("--queue-ms", type=float, default=20.0)
    p.add_argument("--overload", type=float, default=2.0)
    p.add_argument("--threshold", type=float, help="the sessions' own (default: the card's)")
    p.add_argument("--json", dest="json_path")
    args = p.parse_args(argv)
    card = ModelCard.model_validate_json(
        (DEFAULT_MODEL_DIR / args.model / "model.json").read_text()
    )
    with contextlib.suppress(KeyboardInterrupt):
        figures = measure(args, card)
        load_ws.publish(figures, report(figures), args.json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
