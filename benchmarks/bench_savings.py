"""What skipping neurons saves: the sparse chunk graph against the dense one and ORT's fused GRU.

    .venv/bin/python benchmarks/bench_savings.py [--steps 32] [--quick] [--json PATH]
        [--plot PATH] [--max-rounds 40] [--min-rounds 3] [--config-seconds 40]
        [--sample-ms 20] [--seed 0]

For H in {128, 512, 1024, 2048}, B in {1, 8, 64} and target update rates {2, 5, 10, 20, 50} %
it times one call of T steps on B rows and reports microseconds per step (call time / T, for
all B rows together) for three onnxruntime graphs with the same cell weights:

  sparse  export.onnx_sparse.build_sparse_chunk_graph: per step only the gate rows of the
          neurons that update in at least one row (the union over the batch) are computed
  dense   export.onnx_export.build_model: every gate row computed, then masked
  gru     ORT's fused `GRU` operator inside the same outer work (benchmarks/bench_onnx.py);
          it ignores the gates, so it is timed once per (H, B)

and the package's native kernel (sarnn_serve.native: C, called through ctypes, with the dense
graph's weights), which reads in place only the weight rows of each row's updating neurons:

  native  what the server runs for the work-skipping path where the kernel is built

The update rate is set, not trained: a fresh GRU SA-RNN (seeded, eval mode, identity input
normalisation) gets coordinator weights with unit-norm random rows, w_d = 0 and bias
Phi^-1(rate), so on x ~ N(0, 1) each neuron updates with probability `rate`, independently per
step and row. (Rows of randn / sqrt(F) would not be unit norm, and the rate would then be off by
up to a fifth.) All H neurons see the same x_t, so the fraction updating swings from step to
step with |x_t|, and one B=1 chunk of 32 steps can miss the target by half; each config therefore
cycles through max(1, 16 // B) input chunks (calls alternate between them). The table shows the
measured rate (mean of the `updates` output) and the union rate (neurons updating in at least one
row, per step; what the sparse graph computes) over those chunks. Before timing, sparse and
dense must give the same masks, and logits and state within 1e-5, on every chunk of every
config (and so must the native kernel), or the script stops with an error.

Every session is single-threaded (intra_op = inter_op = 1, ORT_SEQUENTIAL). For each (H, B) the
sixteen runtimes (sparse, native and dense per rate, and gru) are timed in interleaved rounds
whose order rotates every round; a sample is a batch of calls lasting at least --sample-ms (or
one call, if longer), the table shows the median over rounds. The number of rounds per (H, B)
is what fits in --config-seconds, between --min-rounds and --max-rounds, so the slowest configs
(H=2048, B=64: about 0.3 s per call) get the fewest. The targets compare ratios from the same
run (dense / sparse and dense / native at H=2048 B=1: >= 5 at 5 %, >= 2 at 20 %; at H=1024 B=1:
>= 3 at 5 %; dense / gru and native / gru at H=128 B=1, median over the rates: <= 2) and print
PASS/FAIL; the exit status is 0 either way.
The load average is printed at the start and the end: the machine is shared, so absolute times
move with its load, the ratios much less.

Run time, measured on a busy shared 2-core machine (AMD EPYC, load average 4-6 from other work
during the run): the full run about 6 minutes (341 s); --quick (H in {128, 512}, at most 5
rounds) about 20 s. Under that load some absolute times were over twice those measured at load 1
(H=2048 B=1 dense: 2.5 ms per step against 1.1 ms).
"""

import argparse
import copy
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_onnx import gru_graph, make_inputs, per_call, session

from export.model import SARNN, ModelConfig
from export.onnx_export import build_model, cell_weights
from export.onnx_sparse import build_sparse_chunk_graph
from sarnn_serve.native import NativeKernel

HIDDENS = (128, 512, 1024, 2048)
QUICK_HIDDENS = (128, 512)
BATCHES = (1, 8, 64)
RATES = (0.02, 0.05, 0.10, 0.20, 0.50)
FEATURES, CLASSES = 6, 7
PARITY_TOL = 1e-5
QUICK_MAX_ROUNDS = 5
INPUT_ROWS = 16


def versions() -> dict[str, str]:
    """The versions a timing depends on, for the JSON reports."""
    return {
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def base_model(hidden: int, seed: int) -> SARNN:
    """A fresh GRU SA-RNN whose coordinator sees x only, through unit-norm random rows."""
    torch.manual_seed(seed)
    model = SARNN(
        ModelConfig(cell="gru", n_features=FEATURES, hidden=hidden, n_classes=CLASSES)
    ).eval()
    with torch.no_grad():
        w = torch.randn(hidden, FEATURES)
        model.coord_x.weight.copy_(w / w.norm(dim=1, keepdim=True))
        model.coord_d.zero_()
    return model


def at_rate(model: SARNN, rate: float) -> SARNN:
    """Copy of `model` whose neurons update with probability `rate` on x ~ N(0, 1)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.coord_x.bias.fill_(NormalDist().inv_cdf(rate))
    return out


def sparse_graph(model: SARNN) -> onnx.ModelProto:
    """The sparse chunk graph of `model`, passing onnx's full checker."""
    proto = build_sparse_chunk_graph(cell_weights(model))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def native_kernel(proto: onnx.ModelProto) -> NativeKernel:
    """The native kernel with the weights of the dense chunk graph `proto`."""
    return NativeKernel({t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer})


def check_parity(
    sparse: ort.InferenceSession,
    dense: ort.InferenceSession,
    native: NativeKernel,
    pool: list[dict],
) -> dict:
    """Exit unless the sparse graph and the native kernel give the dense graph's masks, and
    logits and state within PARITY_TOL, on every chunk of `pool`; return the worst
    differences and the measured (union) rates."""
    worst = {"logits_max_abs": 0.0, "state_max_abs": 0.0}
    masks = []
    for feeds in pool:
        d_logits, d_upd, d_state = dense.run(None, feeds)
        for name, out in (("sparse", sparse.run(None, feeds)), ("native", native.run(**feeds))):
            logits, upd, state = out
            if (upd != d_upd).any():
                raise SystemExit(f"{name} and dense masks differ in {(upd != d_upd).sum()} places")
            worst["logits_max_abs"] = max(worst["logits_max_abs"], np.abs(logits - d_logits).max())
            worst["state_max_abs"] = max(worst["state_max_abs"], np.abs(state - d_state).max())
        masks.append(d_upd)
    if max(worst.values()) > PARITY_TOL:
        raise SystemExit(f"sparse and dense outputs differ by more than {PARITY_TOL:g}: {worst}")
    upd = np.stack(masks)  # [chunks, B, T, H]
    return {
        **{k: float(v) for k, v in worst.items()},
        "rate": float(upd.mean()),
        "union_rate": float(upd.any(axis=1).mean()),
    }


def runner(sess: ort.InferenceSession, pool: list[dict]) -> Callable[[], object]:
    """One chunk of `sess` per call, cycling through the feeds of `pool`."""
    feeds = itertools.cycle(pool)
    return lambda: sess.run(None, next(feeds))


def time_interleaved(
    run: dict[str, Callable[[], object]], sample_s: float, budget_s: float, rounds: tuple[int, int]
) -> tuple[dict[str, float], int]:
    """Median seconds per call of each runner over interleaved rounds in rotating order, and
    the number of rounds: as many as fit in budget_s, clamped to rounds = (min, max)."""
    counts = {}
    round_s = 0.0
    for name, fn in run.items():  # warm-up, then calls per sample from one timed call
        fn()
        single = per_call(fn, 1)
        counts[name] = max(1, round(sample_s / single))
        round_s += counts[name] * single
    n_rounds = min(rounds[1], max(rounds[0], int(budget_s / round_s)))
    samples: dict[str, list[float]] = {name: [] for name in run}
    order = list(run)
    for r in range(n_rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            samples[name].append(per_call(run[name], counts[name]))
    return {name: statistics.median(s) for name, s in samples.items()}, n_rounds


def chunks(batch: int) -> int:
    """Input chunks cycled through at batch size `batch` (at least INPUT_ROWS rows in all)."""
    return max(1, INPUT_ROWS // batch)


def bench_hidden(hidden: int, args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    """Rows of the table for one H: every B and rate."""
    base = base_model(hidden, args.seed)
    models = {rate: at_rate(base, rate) for rate in RATES}
    sparse = {rate: session(sparse_graph(m)) for rate, m in models.items()}
    protos = {rate: build_model(m) for rate, m in models.items()}
    dense = {rate: session(p) for rate, p in protos.items()}
    native = {rate: native_kernel(p) for rate, p in protos.items()}
    gru = session(gru_graph(base))
    rows = []
    for batch in BATCHES:
        pool = [make_inputs(base, batch, args.steps, rng) for _ in range(chunks(batch))]
        checks = {
            rate: check_parity(sparse[rate], dense[rate], native[rate], pool) for rate in RATES
        }
        run = {"gru": runner(gru, [{"x": f["x"], "state": f["state"]} for f in pool])}
        for rate in RATES:
            run[f"sparse@{rate}"] = runner(sparse[rate], pool)
            run[f"dense@{rate}"] = runner(dense[rate], pool)
            feeds = itertools.cycle(pool)
            run[f"native@{rate}"] = lambda k=native[rate], f=feeds: k.run(**next(f))
        med, n_rounds = time_interleaved(
            run, args.sample_ms / 1e3, args.config_seconds, (args.min_rounds, args.max_rounds)
        )
        us = {name: sec * 1e6 / args.steps for name, sec in med.items()}
        for rate in RATES:
            sp, de, na = us[f"sparse@{rate}"], us[f"dense@{rate}"], us[f"native@{rate}"]
            rows.append(
                {
                    "H": hidden,
                    "B": batch,
                    "target_rate": rate,
                    "measured_rate": checks[rate]["rate"],
                    "union_rate": checks[rate]["union_rate"],
                    "sparse_us": sp,
                    "dense_us": de,
                    "native_us": na,
                    "gru_us": us["gru"],
                    "dense_over_sparse": de / sp,
                    "dense_over_native": de / na,
                    "dense_over_gru": de / us["gru"],
                    "native_over_gru": na / us["gru"],
                    "rounds": n_rounds,
                    "parity": {k: checks[rate][k] for k in ("logits_max_abs", "state_max_abs")},
                }
            )
        print(
            f"  H={hidden} B={batch}: {n_rounds} rounds, load {os.getloadavg()[0]:.2f}",
            file=sys.stderr,
            flush=True,
        )
    return rows


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """PASS/FAIL of the ratio targets; a target whose H was not run has value None."""
    by = {(r["H"], r["B"], r["target_rate"]): r for r in rows}
    targets = []
    for path in ("sparse", "native"):
        for hidden, rate, floor in ((2048, 0.05, 5.0), (2048, 0.20, 2.0), (1024, 0.05, 3.0)):
            row = by.get((hidden, 1, rate))
            value = row[f"dense_over_{path}"] if row else None
            targets.append(
                {
                    "target": f"H={hidden} B=1 rate {rate:.0%}: dense/{path} >= {floor:g}",
                    "value": value,
                    "pass": None if value is None else value >= floor,
                }
            )
    for path in ("dense", "native"):
        ratios = [by[(128, 1, r)][f"{path}_over_gru"] for r in RATES if (128, 1, r) in by]
        value = statistics.median(ratios) if ratios else None
        targets.append(
            {
                "target": f"H=128 B=1: {path}/GRU <= 2 (median over rates)",
                "value": value,
                "pass": None if value is None else value <= 2.0,
            }
        )
    return targets


def print_table(rows: list[dict]) -> None:
    print(
        "| H | B | target rate | measured rate | union rate | sparse us/step | native us/step "
        "| dense us/step | fused GRU us/step | dense/sparse | dense/native | dense/GRU "
        "| native/GRU |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['H']} | {r['B']} | {r['target_rate']:.0%} | {r['measured_rate']:.1%} "
            f"| {r['union_rate']:.1%} | {r['sparse_us']:.1f} | {r['native_us']:.1f} "
            f"| {r['dense_us']:.1f} | {r['gru_us']:.1f} | {r['dense_over_sparse']:.2f} "
            f"| {r['dense_over_native']:.2f} | {r['dense_over_gru']:.2f} "
            f"| {r['native_over_gru']:.2f} |"
        )


def plot(rows: list[dict], path: Path, steps: int) -> None:
    """Time per step against the measured update rate: a panel per B, sparse and dense per H."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hiddens = sorted({r["H"] for r in rows})
    fig, axes = plt.subplots(
        1, len(BATCHES), figsize=(5 * len(BATCHES), 4.8), sharey=True, layout="constrained"
    )
    for ax, batch in zip(axes, BATCHES, strict=True):
        for i, hidden in enumerate(hiddens):
            sel = [r for r in rows if r["H"] == hidden and r["B"] == batch]
            x = [100 * r["measured_rate"] for r in sel]
            color = f"C{i}"
            ax.plot(x, [r["sparse_us"] for r in sel], "o-", color=color, label=f"sparse H={hidden}")
            ax.plot(x, [r["native_us"] for r in sel], "^:", color=color, label=f"native H={hidden}")
            ax.plot(x, [r["dense_us"] for r in sel], "s--", color=color, label=f"dense H={hidden}")
        ax.set_yscale("log")
        ax.set_title(f"B = {batch}")
        ax.set_xlabel("measured update rate (%)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"us per step (T = {steps}, all B rows)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(hiddens), fontsize=8)
    fig.suptitle(
        "SA-RNN chunk per step: sparse graph (solid), native kernel (dotted), dense graph "
        "(dashed); 1 thread"
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32, help="T: steps per call")
    parser.add_argument("--quick", action="store_true", help="H in {128, 512}, <= 5 rounds")
    parser.add_argument("--max-rounds", type=int, default=40)
    parser.add_argument("--min-rounds", type=int, default=3)
    parser.add_argument(
        "--config-seconds", type=float, default=40.0, help="timing budget per (H, B)"
    )
    parser.add_argument("--sample-ms", type=float, default=20.0, help="shortest timed sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--plot", type=Path, help="write a PNG of time per step vs rate here")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_rounds = min(args.max_rounds, QUICK_MAX_ROUNDS)
        args.min_rounds = min(args.min_rounds, args.max_rounds)
    hiddens = QUICK_HIDDENS if args.quick else HIDDENS

    torch.set_num_threads(1)
    load_start = os.getloadavg()
    print(
        f"# sparse vs dense SA-RNN chunk graph vs ORT fused GRU: F={FEATURES} C={CLASSES} "
        f"T={args.steps}, onnxruntime {ort.__version__}, 1 thread per session"
    )
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in load_start)}")
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    rows = [row for hidden in hiddens for row in bench_hidden(hidden, args, rng)]
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()

    print(
        f"rounds per (H, B): {args.min_rounds}-{args.max_rounds} within {args.config_seconds:g} s, "
        f"samples >= {args.sample_ms:g} ms, median; sparse and dense agree on every config "
        f"(same masks, logits/state within {PARITY_TOL:g})\n"
    )
    print_table(rows)
    targets = evaluate_targets(rows)
    print("\ntargets (ratios from this run):")
    for t in targets:
        if t["value"] is None:
            print(f"  [n/a ] {t['target']} (H not run)")
        else:
            verdict = "PASS" if t["pass"] else "FAIL"
            print(f"  [{verdict}] {t['target']} (measured {t['value']:.2f})")
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in load_end)}")
    print(f"benchmark took {elapsed:.0f} s")

    if args.json:
        report = {
            "config": {
                "hiddens": list(hiddens),
                "batches": list(BATCHES),
                "rates": list(RATES),
                "features": FEATURES,
                "classes": CLASSES,
                "steps": args.steps,
                "min_rounds": args.min_rounds,
                "max_rounds": args.max_rounds,
                "config_seconds": args.config_seconds,
                "sample_ms": args.sample_ms,
                "seed": args.seed,
            },
            "versions": versions(),
            "load_average": {"start": list(load_start), "end": list(load_end)},
            "elapsed_s": elapsed,
            "rows": rows,
            "targets": targets,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot, args.steps)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
