"""Compute budgets on held-out recordings: sessions held to a target update rate.

    .venv/bin/python benchmarks/bench_budget.py [--targets 0.2 0.3 0.4] [--chunk 25]
        [--model watch-gru] [--json PATH]

Serves the shipped models (a spawned `sarnn-serve` on loopback) and streams every test recording
of the model's card (the held-out subjects) over the WebSocket, once per target, each recording
its own session opened with `target_update_rate` (and once at the card's fixed threshold, for
reference), in chunks of --chunk steps (25: half a second of the 50 Hz watch data), all
recordings of a target at once. Per target it reports the update rate each recording reached
over its steps after the first --settle (500), the worst distance from the target over the
recordings (the aim: within 2 points for every one), the streaming accuracy (steps after the
first 2 s, as the card scores it) and the thresholds the controller chose. The rates are counted
from the update counts the server answers (no timing involved).
"""

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from load_ws import open_socket, publish, spawned_server

from export.data import load_watch
from sarnn_serve.card import ModelCard
from sarnn_serve.settings import DEFAULT_MODEL_DIR

SKIP_SECONDS = 2.0
TOLERANCE = 0.02


async def stream(ws_url: str, query: dict, x: np.ndarray, chunk: int) -> dict:
    """One recording through one session: update counts, classes and thresholds per chunk."""
    ws = await open_socket(f"{ws_url}/v1/stream?{urlencode(query)}", "websockets")
    try:
        opened = orjson.loads(await ws.recv())
        if opened.get("type") != "session":
            raise SystemExit(f"could not open a session: {opened}")
        counts, classes, thresholds = [], [], []
        for seq, start in enumerate(range(0, len(x), chunk)):
            frame = {"seq": seq, "inputs": x[start : start + chunk].tolist()}
            await ws.send(orjson.dumps(frame).decode())
            answer = orjson.loads(await ws.recv())
            if answer.get("type") != "chunk":
                raise SystemExit(f"chunk {seq} failed: {answer}")
            counts += answer["updates"]
            classes += answer["classes"]
            thresholds.append(answer["threshold"])
        return {"counts": counts, "classes": classes, "thresholds": thresholds}
    finally:
        await ws.close()


def score(runs: list[dict], labels: list[int], card: ModelCard, settle: int) -> dict:
    """Rates after `settle` steps per recording, streaming accuracy, thresholds used."""
    skip = int(SKIP_SECONDS * (card.sample_rate_hz or 0))
    rates = [np.mean(r["counts"][settle:]) / card.hidden for r in runs]
    correct = sum(
        int((np.asarray(r["classes"][skip:]) == y).sum()) for r, y in zip(runs, labels, strict=True)
    )
    scored = sum(max(0, len(r["classes"]) - skip) for r in runs)
    taus = np.concatenate([r["thresholds"] for r in runs])
    return {
        "recordings": len(runs),
        "rate_mean": float(np.mean(rates)),
        "rate_min": float(np.min(rates)),
        "rate_max": float(np.max(rates)),
        "rates": [float(r) for r in rates],
        "streaming_accuracy": correct / scored,
        "threshold_mean": float(taus.mean()),
        "threshold_min": float(taus.min()),
        "threshold_max": float(taus.max()),
    }


async def measure(args: argparse.Namespace, ws_url: str, card: ModelCard) -> dict:
    data = load_watch(tuple(card.training.test_subjects), tuple(card.training.val_subjects))
    xs, labels = [r.x for r in data.test], [r.label for r in data.test]
    settle = [r for r in xs if len(r) <= args.settle]
    if settle:
        raise SystemExit(f"{len(settle)} recordings are no longer than --settle {args.settle}")
    base = {"model": card.name, "answer": "columns"}
    plans = [("threshold", card.threshold, {**base, "threshold": card.threshold})]
    plans += [("target", t, {**base, "target_update_rate": t}) for t in args.targets]
    rows = []
    for kind, value, query in plans:
        runs = await asyncio.gather(*(stream(ws_url, query, x, args.chunk) for x in xs))
        row = {"kind": kind, "value": value, **score(runs, labels, card, args.settle)}
        if kind == "target":
            row["worst_off"] = max(abs(r - value) for r in row["rates"])
            row["recordings_within"] = sum(abs(r - value) <= TOLERANCE for r in row["rates"])
            row["within"] = row["worst_off"] <= TOLERANCE
        rows.append(row)
        print(f"  {kind} {value:g}: done", file=sys.stderr, flush=True)
    return {
        "model": card.name,
        "version": card.version,
        "chunk": args.chunk,
        "settle": args.settle,
        "rows": rows,
    }


def report(figures: dict) -> str:
    lines = [
        f"Compute budgets on the held-out recordings of {figures['model']} "
        f"(v{figures['version']}), chunks of {figures['chunk']} steps; rates over each "
        "recording's steps after the first "
        f"{figures['settle']} (counted from the answers' update counts)",
        "",
        "| session | recordings | update rate: mean (min-max) | worst off target (recordings "
        f"within {100 * TOLERANCE:g} pts) "
        "| streaming acc | threshold: mean (min-max) |",
        "|---|---|---|---|---|---|",
    ]
    for r in figures["rows"]:
        name = (
            f"threshold {r['value']:g}"
            if r["kind"] == "threshold"
            else f"target rate {r['value']:g}"
        )
        off = "-"
        if "worst_off" in r:
            off = f"{100 * r['worst_off']:.2f} pts ({r['recordings_within']} within)"
        lines.append(
            f"| {name} | {r['recordings']} | {100 * r['rate_mean']:.1f}% "
            f"({100 * r['rate_min']:.1f}-{100 * r['rate_max']:.1f}) | {off} "
            f"| {100 * r['streaming_accuracy']:.1f}% "
            f"| {r['threshold_mean']:.3f} ({r['threshold_min']:.3f}-{r['threshold_max']:.3f}) |"
        )
    targets = [r for r in figures["rows"] if r["kind"] == "target"]
    verdict = all(r["within"] for r in targets)
    lines += [
        "",
        f"every recording within {100 * TOLERANCE:g} points of its target: "
        f"{'PASS' if verdict else 'FAIL'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--targets", type=float, nargs="+", default=[0.2, 0.3, 0.4])
    p.add_argument("--chunk", type=int, default=25, help="steps per message")
    p.add_argument("--settle", type=int, default=500, help="steps not scored for the rate")
    p.add_argument("--model", default="watch-gru")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR), help="models to serve")
    p.add_argument("--json", dest="json_path", help="write the figures here")
    args = p.parse_args(argv)
    card = ModelCard.model_validate_json(
        (DEFAULT_MODEL_DIR / args.model / "model.json").read_text()
    )
    with contextlib.ExitStack() as stack:
        ws_url, _ = stack.enter_context(spawned_server(args.model_dir, []))
        figures = asyncio.run(measure(args, ws_url, card))
    publish(figures, report(figures), args.json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
