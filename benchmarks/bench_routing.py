"""Served by the router against always dense: is routing by measurement ever slower?

    .venv/bin/python benchmarks/bench_routing.py [--quick] [--json PATH] [--point-seconds 2]
        [--min-rounds 3] [--max-rounds 15] [--warmup 20] [--sample-ms 20] [--seed 0]

For each H in {128, 512, 1024, 2048} (--quick: {128, 512}) the GRU SA-RNN of bench_savings.py
(unit-norm coordinator rows, w_d = 0, bias 0) is exported as the dense and the sparse chunk
graph into a temp dir and loaded as one `sarnn_serve.engine.Engine` with the native kernel;
`routing.calibrate` runs once against the work-skipping path (--path: the native kernel, as the
server picks where it is built, or the sparse graph), as the server does at load (its duration
is printed), and one `Router("auto", ...)` serves the whole grid of that H, as one per model
does in the server.

The update rate is set per row through the threshold: u = [w.x > 2 tau - 1] with x ~ N(0, 1)
and unit-norm w, so tau = (1 + Phi^-1(1 - rate)) / 2 gives bench_savings' masks (its bias
Phi^-1(rate) with tau = 0.5) on one graph; 2 % needs tau = 1.53, which the graph accepts. The
router is told each row's target rate, as a session's settled recent rate would tell it.

For each B in {1, 8, 64}, rate in {2, 5, 10, 20, 50} % and T in {1, 32} steps a pool of max(2,
512 // (B T)) input chunks is cycled. "routed" is what the batcher's `_call` does for a batch:
`Router.plan`, then one engine call per (path, rows) group on those rows of the batch, each
followed by `Router.observe` with its measured time; "dense" is one dense call on the whole
batch. After --warmup routed plans (the correction settles) both are timed in interleaved
rounds, alternating first; a sample is a run of calls lasting at least --sample-ms, the figure
is the median over rounds, as many as fit in --point-seconds within [--min-rounds,
--max-rounds]. Each point reports the plan (dense / native / sparse / sparse in groups of g
rows; more than one if the correction changed it while timing), the routed and dense time per
call, the router's own time per batch (plan + observe, included in routed), its prediction of
routed / dense, routed / dense measured, and the same without the router's own time (what the
choice of graph alone costs). The requirement: routed / dense <= 1.05 at every point.
"""

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_onnx import per_call
from bench_savings import (
    BATCHES,
    HIDDENS,
    QUICK_HIDDENS,
    RATES,
    at_rate,
    base_model,
    sparse_graph,
    versions,
)

from export.onnx_export import build_model
from sarnn_serve import native
from sarnn_serve.engine import DENSE, NATIVE, SPARSE, Engine
from sarnn_serve.routing import Plan, Router, calibrate

STEPS = (1, 32)
POOL_ROW_STEPS = 512
LIMIT = 1.05


def threshold(rate: float) -> float:
    """tau at which a neuron updates with probability `rate` (alpha = 1, bias 0, x ~ N(0, 1))."""
    return (1.0 + NormalDist().inv_cdf(1.0 - rate)) / 2.0


def make_pool(
    hidden_state: int, features: int, batch: int, steps: int, rate: float, rng: np.random.Generator
) -> list[dict]:
    """Input chunks of `batch` rows and `steps` steps at update rate `rate`."""
    tau = np.full(batch, threshold(rate), np.float32)
    return [
        {
            "x": rng.standard_normal((batch, steps, features)).astype(np.float32),
            "state": (0.5 * rng.standard_normal((batch, hidden_state))).astype(np.float32),
            "lengths": np.full(batch, steps, np.int64),
            "threshold": tau,
        }
        for _ in range(max(2, POOL_ROW_STEPS // (batch * steps)))
    ]


def label(plan: Plan) -> str:
    """A plan in words: dense, native, sparse, or sparse in groups of g rows."""
    path = plan[0][0]
    if len(plan) == 1:
        return path
    return f"{path} {len(plan)} x {len(plan[0][1])} rows"


class Routed:
    """Calls cycling through a pool, executed as `MicroBatcher._call` executes a plan."""

    def __init__(self, engine: Engine, router: Router, pool: list[dict], rates: list[float]):
        self.engine, self.router, self.pool, self.rates = engine, router, pool, rates
        self.steps = pool[0]["x"].shape[1]
        self.calls = 0
        self.plan_log: list[Plan] = []  # labelled after timing: the batcher keeps no such tally
        self.router_s = 0.0

    def __call__(self) -> None:
        feed = self.pool[self.calls % len(self.pool)]
        self.calls += 1
        started = time.perf_counter()
        plan = self.router.plan(self.rates, self.steps)
        self.router_s += time.perf_counter() - started
        self.plan_log.append(plan)
        for path, rows in plan:
            # the batcher stacks each call's rows anyway: a call on every row takes the batch
            whole = len(rows) == len(self.rates)
            group = feed if whole else {k: v[rows] for k, v in feed.items()}
            started = time.perf_counter()
            self.engine.run(**group, path=path)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            rates = self.rates if whole else [self.rates[i] for i in rows]
            self.router.observe(path, rates, self.steps, seconds)
            self.router_s += time.perf_counter() - started


def dense_runner(engine: Engine, pool: list[dict]) -> Callable[[], object]:
    """One dense call on the whole batch per call, cycling through `pool`."""
    feeds = itertools.cycle(pool)
    return lambda: engine.run(**next(feeds), path=DENSE)


def time_pair(
    routed: Routed, dense: Callable[[], object], args: argparse.Namespace
) -> tuple[float, float, int]:
    """Median seconds per call of routed and dense over interleaved rounds, and the rounds."""
    counts = {}
    round_s = 0.0
    for name, fn in (("routed", routed), ("dense", dense)):
        single = per_call(fn, 1)
        counts[name] = max(1, round(args.sample_ms / 1e3 / single))
        round_s += counts[name] * single
    n_rounds = min(args.max_rounds, max(args.min_rounds, int(args.point_seconds / round_s)))
    routed.plan_log.clear()
    routed.router_s, start_calls = 0.0, routed.calls
    samples: dict[str, list[float]] = {"routed": [], "dense": []}
    for r in range(n_rounds):
        pair = [("routed", routed), ("dense", dense)]
        for name, fn in pair[r % 2 :] + pair[: r % 2]:
            samples[name].append(per_call(fn, counts[name]))
    routed.router_s /= routed.calls - start_calls
    return statistics.median(samples["routed"]), statistics.median(samples["dense"]), n_rounds


def predicted_ratio(router: Router, rates: list[float], steps: int) -> float:
    """The router's corrected prediction of its current plan's time over one dense call."""
    cal, correction = router.calibration, router.correction
    cost = 0.0
    for path, rows in router.plan(rates, steps):
        if path == DENSE:
            cost += cal.dense_call(len(rows), steps) * correction[DENSE]
        else:
            rate = cal.rate_of([rates[i] for i in rows])
            cost += cal.sparse_call(len(rows), steps, rate) * correction[path]
    return cost / (cal.dense_call(len(rates), steps) * correction[DENSE])


def bench_hidden(hidden: int, args: argparse.Namespace, rng: np.random.Generator) -> dict:
    """Calibration and every grid point of one H."""
    model = at_rate(base_model(hidden, args.seed), 0.5)  # bias 0: the rate is set by tau
    features, state_size = model.config.n_features, model.state_size
    with tempfile.TemporaryDirectory() as tmp:
        dense_path, sparse_path = Path(tmp, "model.onnx"), Path(tmp, "model.sparse.onnx")
        onnx.save(build_model(model), dense_path)
        onnx.save(sparse_graph(model), sparse_path)
        engine = Engine(dense_path, sparse_path=sparse_path)
        if args.path == NATIVE:
            engine.load_native()
    started = time.perf_counter()
    calibration = calibrate(engine, features, state_size, args.path, seed=args.seed)
    calibration_s = time.perf_counter() - started
    print(f"H={hidden}: calibration {calibration_s:.1f} s", file=sys.stderr, flush=True)
    router = Router("auto", calibration)
    points = []
    for steps in STEPS:
        for batch in BATCHES:
            for rate in RATES:
                pool = make_pool(state_size, features, batch, steps, rate, rng)
                masks = np.stack([engine.run(**f, path=DENSE).updates for f in pool])
                routed = Routed(engine, router, pool, [rate] * batch)
                for _ in range(args.warmup):
                    routed()
                dense = dense_runner(engine, pool)
                routed_s, dense_s, n_rounds = time_pair(routed, dense, args)
                points.append(
                    {
                        "H": hidden,
                        "B": batch,
                        "T": steps,
                        "rate": rate,
                        "measured_rate": float(masks.mean()),
                        "union_rate": float(masks.any(axis=1).mean()),
                        "plans": dict(Counter(map(label, routed.plan_log)).most_common()),
                        "routed_us": routed_s * 1e6,
                        "dense_us": dense_s * 1e6,
                        "router_us": routed.router_s * 1e6,
                        "predicted_ratio": predicted_ratio(router, routed.rates, steps),
                        "ratio": routed_s / dense_s,
                        "ratio_without_router": (routed_s - routed.router_s) / dense_s,
                        "correction": dict(router.correction),
                        "rounds": n_rounds,
                    }
                )
            print(
                f"  H={hidden} T={steps} B={batch} done, load {os.getloadavg()[0]:.2f}",
                file=sys.stderr,
                flush=True,
            )
    return {
        "H": hidden,
        "calibration_s": calibration_s,
        "calibration": calibration.as_dict(),
        "points": points,
    }


def print_table(points: list[dict]) -> None:
    print(
        "| H | T | B | rate | union rate | plan | routed us | dense us | router us "
        "| predicted | routed/dense | without router |"
    )
    print("|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for p in points:
        plans = ", ".join(p["plans"])
        flag = "" if p["ratio"] <= LIMIT else " **"
        print(
            f"| {p['H']} | {p['T']} | {p['B']} | {p['rate']:.0%} | {p['union_rate']:.1%} "
            f"| {plans} | {p['routed_us']:.0f} | {p['dense_us']:.0f} | {p['router_us']:.1f} "
            f"| {p['predicted_ratio']:.2f} | {p['ratio']:.3f}{flag} "
            f"| {p['ratio_without_router']:.3f} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="H in {128, 512}, 3 rounds")
    parser.add_argument("--point-seconds", type=float, default=2.0, help="timing per point")
    parser.add_argument("--min-rounds", type=int, default=3)
    parser.add_argument("--max-rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=20, help="routed plans before timing")
    parser.add_argument("--sample-ms", type=float, default=20.0, help="shortest timed sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--path",
        choices=(NATIVE, SPARSE),
        default=NATIVE if native.available() else SPARSE,
        help="the work-skipping path the router weighs against dense (default: the native "
        "kernel where built, as the server)",
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    if args.quick:
        args.min_rounds = args.max_rounds = 3
    hiddens = QUICK_HIDDENS if args.quick else HIDDENS

    torch.set_num_threads(1)
    load_start = os.getloadavg()
    print(
        f"# routed (Router auto, dense or {args.path}) vs dense graph, onnxruntime "
        f"{ort.__version__}, 1 thread"
    )
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in load_start)}")
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    per_hidden = [bench_hidden(hidden, args, rng) for hidden in hiddens]
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()

    points = [p for h in per_hidden for p in h["points"]]
    print()
    for h in per_hidden:
        print(f"H={h['H']}: calibration at load took {h['calibration_s']:.1f} s")
    print()
    print_table(points)
    worst = max(points, key=lambda p: p["ratio"])
    verdict = "PASS" if worst["ratio"] <= LIMIT else "FAIL"
    failing = [p for p in points if p["ratio"] > LIMIT]
    print(
        f"\n[{verdict}] max routed/dense {worst['ratio']:.3f} (H={worst['H']} T={worst['T']} "
        f"B={worst['B']} rate {worst['rate']:.0%}); {len(failing)} of {len(points)} points "
        f"over {LIMIT:g}"
    )
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in load_end)}")
    print(f"benchmark took {elapsed:.0f} s")

    if args.json:
        report = {
            "config": {
                "hiddens": list(hiddens),
                "batches": list(BATCHES),
                "rates": list(RATES),
                "steps": list(STEPS),
                "warmup": args.warmup,
                "point_seconds": args.point_seconds,
                "min_rounds": args.min_rounds,
                "max_rounds": args.max_rounds,
                "sample_ms": args.sample_ms,
                "seed": args.seed,
                "path": args.path,
            },
            "versions": versions(),
            "load_average": {"start": list(load_start), "end": list(load_end)},
            "elapsed_s": elapsed,
            "hiddens": per_hidden,
            "max_ratio": worst["ratio"],
            "pass": worst["ratio"] <= LIMIT,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
