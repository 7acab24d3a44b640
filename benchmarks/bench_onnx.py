"""Per-step cost of the SA-RNN chunk graph against onnxruntime's fused GRU and PyTorch eager.

    .venv/bin/python benchmarks/bench_onnx.py [--hidden 128] [--features 6] [--classes 7]
        [--repeats N] [--checkpoint runs/<run>/checkpoint.pt] [--json out.json]

For B in {1, 64} and T in {1, 16, 128} it times one call of T steps on B sequences and reports
microseconds per step per sequence (call time / (B * T)) for three runtimes:

  sarnn  the SA-RNN chunk graph (export.onnx_export.build_model, built in memory) on onnxruntime,
         fed x, state, lengths and threshold as the server feeds it. The model comes from
         --checkpoint, or is a fresh SARNN(gru) whose coordinator bias is 0, so that about half of
         the gates open on N(0, 1) inputs; the measured update rate is printed.
  gru    onnxruntime's fused `GRU` operator (opset 18, linear_before_reset=1) with the same cell
         weights, inside the same outer work: transpose to time-major, normalisation, and the
         output head (MatMul + Add to C classes on every step) after the recurrence. Cell against
         cell, same head.
  torch  the PyTorch eager SARNN, deterministic gate, torch.no_grad, one thread.

Every runtime is single-threaded (ORT: intra_op = inter_op = 1, ORT_SEQUENTIAL). After a warm-up,
the runtimes are timed in interleaved rounds (the order rotates every round), each sample being a
batch of calls long enough to read the clock reliably; the table shows the median over rounds.
On a shared machine the absolute figures move, the side-by-side ratios much less: the ratios are
what the targets check (B=64, T in {16, 128}: sarnn <= 1.3x gru; B=1, T=128: sarnn <= 4x gru;
torch eager >= 3x slower than both onnxruntime graphs, checked for every config). The defaults
(200 rounds of 10 ms samples) take about a minute; --repeats 20 gives a rough table in seconds.
Pass/fail is printed and written to the JSON; the exit status is 0 either way.

Before timing, the script checks that the three runtimes compute the same thing (SA-RNN graph
against torch; the GRU graph against torch with every gate forced open).
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.model import SARNN, ModelConfig, load_checkpoint
from export.onnx_export import build_model
from export.onnx_graph import OPSET

BATCHES = (1, 64)
STEPS = (1, 16, 128)
RUNTIMES = ("sarnn", "gru", "torch")
TARGET_RATIO_B64 = 1.3
TARGET_RATIO_B1_T128 = 4.0
TARGET_TORCH_SLOWER = 3.0


def fresh_model(features: int, hidden: int, classes: int, seed: int) -> SARNN:
    """A GRU SA-RNN with random weights and coordinator bias 0 (about half the gates open)."""
    torch.manual_seed(seed)
    model = SARNN(ModelConfig(cell="gru", n_features=features, hidden=hidden, n_classes=classes))
    with torch.no_grad():
        model.coord_x.bias.zero_()
        model.coord_x.weight.normal_(0.0, 1.0 / features**0.5)
        model.coord_d.zero_()
    model.alpha = 1.0
    return model.eval()


def gru_graph(model: SARNN) -> onnx.ModelProto:
    """Dense baseline: ORT's fused GRU with the SA-RNN's cell weights and the same outer work."""
    h, f, c = model.config.hidden, model.config.n_features, model.config.n_classes
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}

    def zrh(a: np.ndarray) -> np.ndarray:  # torch orders gates r, z, n; ONNX z, r, h
        r, z, n = np.split(a, 3)
        return np.concatenate([z, r, n])

    init = [
        numpy_helper.from_array(sd["mean"], "mean"),
        numpy_helper.from_array(sd["std"], "std"),
        numpy_helper.from_array(zrh(sd["cell.weight_ih"])[None], "W"),
        numpy_helper.from_array(zrh(sd["cell.weight_hh"])[None], "R"),
        numpy_helper.from_array(
            np.concatenate([zrh(sd["cell.bias_ih"]), zrh(sd["cell.bias_hh"])])[None], "Bias"
        ),
        numpy_helper.from_array(np.ascontiguousarray(sd["head.weight"].T), "W_out"),
        numpy_helper.from_array(sd["head.bias"], "b_out"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    node = helper.make_node
    nodes = [
        node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        node("Sub", ["xt", "mean"], ["xc"]),
        node("Div", ["xc", "std"], ["xn"]),
        node("Unsqueeze", ["state", "axis0"], ["h0"]),
        node(
            "GRU",
            ["xn", "W", "R", "Bias", "", "h0"],
            ["y", "y_h"],
            hidden_size=h,
            linear_before_reset=1,
        ),
        node("Squeeze", ["y", "axis1"], ["h_seq"]),  # [T,1,B,H] -> [T,B,H]
        node("MatMul", ["h_seq", "W_out"], ["mm"]),
        node("Add", ["mm", "b_out"], ["logits_tb"]),
        node("Transpose", ["logits_tb"], ["logits"], perm=[1, 0, 2]),
        node("Squeeze", ["y_h", "axis0"], ["state_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dense_gru_chunk",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", f]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, ["B", h]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T", c]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["B", h]),
        ],
        initializer=init,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # lengths/threshold are overridable initializers: a known warning
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def make_inputs(model: SARNN, batch: int, steps: int, rng: np.random.Generator) -> dict:
    """Inputs in raw sensor units that are N(0, 1) after the model's normalisation."""
    mean, std = model.mean.numpy(), model.std.numpy()
    x = (rng.standard_normal((batch, steps, model.config.n_features)) * std + mean).astype(
        np.float32
    )
    state = (0.5 * rng.standard_normal((batch, model.state_size))).astype(np.float32)
    return {
        "x": x,
        "state": state,
        "lengths": np.full(batch, steps, np.int64),
        "threshold": np.full(batch, 0.5, np.float32),
    }


def runners(model: SARNN, sa_sess, gru_sess, feeds: dict) -> dict:
    """One zero-argument callable per runtime, each running one chunk on `feeds`."""
    gru_feeds = {"x": feeds["x"], "state": feeds["state"]}
    xt, st = torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["state"])

    def run_torch():
        with torch.no_grad():
            return model(xt, st, deterministic=True)

    return {
        "sarnn": lambda: sa_sess.run(None, feeds),
        "gru": lambda: gru_sess.run(None, gru_feeds),
        "torch": run_torch,
    }


def check_parity(model: SARNN, sa_sess, gru_sess, rng: np.random.Generator) -> dict:
    feeds = make_inputs(model, 4, 32, rng)
    xt, st = torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["state"])
    with torch.no_grad():
        ref = model(xt, st, deterministic=True)
        dense = model(xt, st, force_gate=1.0)
    logits, updates, _ = sa_sess.run(None, feeds)
    glogits, _ = gru_sess.run(None, {"x": feeds["x"], "state": feeds["state"]})
    out = {
        "sarnn_vs_torch_max_abs": float(np.abs(logits - ref.logits.numpy()).max()),
        "sarnn_gate_agreement": float((updates == (ref.updates.numpy() > 0.5)).mean()),
        "gru_vs_torch_dense_max_abs": float(np.abs(glogits - dense.logits.numpy()).max()),
    }
    if out["sarnn_vs_torch_max_abs"] > 1e-3 or out["gru_vs_torch_dense_max_abs"] > 1e-3:
        raise SystemExit(f"parity check failed: {out}")
    return out


def per_call(fn, n: int) -> float:
    """Mean seconds per call over n back-to-back calls."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def calibrate(fn, budget_s: float) -> int:
    """Calls per sample so that one sample takes about budget_s."""
    fn()
    single = min(per_call(fn, 1) for _ in range(3))
    return max(1, round(budget_s / max(single, 1e-7)))


def bench_config(run: dict, repeats: int, budget_s: float) -> dict[str, float]:
    """Median seconds per call of each runtime, interleaved in rotating order."""
    counts = {name: calibrate(fn, budget_s) for name, fn in run.items()}
    for name, fn in run.items():  # warm-up
        per_call(fn, counts[name])
    samples: dict[str, list[float]] = {name: [] for name in run}
    order = list(run)
    for r in range(repeats):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            samples[name].append(per_call(run[name], counts[name]))
    return {name: statistics.median(s) for name, s in samples.items()}


def evaluate_targets(rows: list[dict]) -> list[dict]:
    by = {(r["B"], r["T"]): r for r in rows}
    targets = []
    for t in (16, 128):
        ratio = by[(64, t)]["ratio_sarnn_gru"]
        targets.append(
            {
                "target": f"B=64 T={t}: SA-RNN <= {TARGET_RATIO_B64}x GRU",
                "value": ratio,
                "pass": ratio <= TARGET_RATIO_B64,
            }
        )
    ratio = by[(1, 128)]["ratio_sarnn_gru"]
    targets.append(
        {
            "target": f"B=1 T=128: SA-RNN <= {TARGET_RATIO_B1_T128}x GRU",
            "value": ratio,
            "pass": ratio <= TARGET_RATIO_B1_T128,
        }
    )
    for r in rows:
        slower = r["torch_us"] / max(r["sarnn_us"], r["gru_us"])
        targets.append(
            {
                "target": f"B={r['B']} T={r['T']}: torch >= {TARGET_TORCH_SLOWER}x both",
                "value": slower,
                "pass": slower >= TARGET_TORCH_SLOWER,
            }
        )
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--features", type=int, default=6)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=200, help="timed rounds per config")
    parser.add_argument(
        "--sample-ms", type=float, default=10.0, help="length of one timed sample (ms)"
    )
    parser.add_argument("--checkpoint", type=Path, help="SA-RNN checkpoint (default: fresh)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    if args.checkpoint:
        model, _ = load_checkpoint(str(args.checkpoint))
        if model.config.cell != "gru":
            raise SystemExit("the fused-GRU comparison needs a GRU checkpoint")
        source = str(args.checkpoint)
    else:
        model = fresh_model(args.features, args.hidden, args.classes, args.seed)
        source = "fresh (coordinator bias 0)"
    model.eval()
    cfg = model.config
    sa_sess = session(build_model(model))
    gru_sess = session(gru_graph(model))
    rng = np.random.default_rng(args.seed)
    parity = check_parity(model, sa_sess, gru_sess, rng)

    print(
        f"# SA-RNN chunk graph vs ORT GRU vs torch eager: H={cfg.hidden} F={cfg.n_features} "
        f"C={cfg.n_classes}, model {source}"
    )
    print(
        f"onnxruntime {ort.__version__}, torch {torch.__version__}, one thread each, "
        f"{args.repeats} rounds x {args.sample_ms:g} ms samples, median"
    )
    print(
        f"parity: SA-RNN vs torch max |dlogits| {parity['sarnn_vs_torch_max_abs']:.1e}, "
        f"gates agree {parity['sarnn_gate_agreement']:.4%}; "
        f"GRU vs torch (all gates open) {parity['gru_vs_torch_dense_max_abs']:.1e}"
    )

    started = time.perf_counter()
    rows = []
    updates, slots = 0, 0
    for batch in BATCHES:
        for steps in STEPS:
            feeds = make_inputs(model, batch, steps, rng)
            u = sa_sess.run(["updates"], feeds)[0]
            updates, slots = updates + int(u.sum()), slots + u.size
            med = bench_config(
                runners(model, sa_sess, gru_sess, feeds), args.repeats, args.sample_ms / 1e3
            )
            us = {k: v * 1e6 / (batch * steps) for k, v in med.items()}
            rows.append(
                {
                    "B": batch,
                    "T": steps,
                    "sarnn_us": us["sarnn"],
                    "gru_us": us["gru"],
                    "torch_us": us["torch"],
                    "ratio_sarnn_gru": us["sarnn"] / us["gru"],
                    "ratio_torch_sarnn": us["torch"] / us["sarnn"],
                    "update_rate": float(u.mean()),
                }
            )
    elapsed = time.perf_counter() - started
    rate = updates / slots

    print(f"update rate of the inputs used: {rate:.1%} (per config in the JSON)\n")
    print(
        "| B | T | SA-RNN us/step/seq | ORT GRU us/step/seq | torch us/step/seq "
        "| SA-RNN/GRU | torch/SA-RNN |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['B']} | {r['T']} | {r['sarnn_us']:.2f} | {r['gru_us']:.2f} "
            f"| {r['torch_us']:.2f} | {r['ratio_sarnn_gru']:.2f} | {r['ratio_torch_sarnn']:.1f} |"
        )
    targets = evaluate_targets(rows)
    print("\ntargets:")
    for t in targets:
        print(f"  [{'PASS' if t['pass'] else 'FAIL'}] {t['target']} (measured {t['value']:.2f}x)")
    print(f"\ntimed in {elapsed:.0f} s")

    if args.json:
        report = {
            "config": {
                "hidden": cfg.hidden,
                "features": cfg.n_features,
                "classes": cfg.n_classes,
                "model": source,
                "repeats": args.repeats,
                "sample_ms": args.sample_ms,
            },
            "versions": {
                "onnxruntime": ort.__version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "python": platform.python_version(),
            },
            "parity": parity,
            "update_rate": rate,
            "rows": rows,
            "targets": targets,
            "all_pass": all(t["pass"] for t in targets),
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
