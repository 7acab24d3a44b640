"""Dense models skipping at evaluation: a trained dense GRU, not retrained, gated at run time.

Issue 20 asks for "dense models skipping at evaluation" as a baseline beside the SA-RNN at the
same mean update rate R. This takes every seed's trained checkpoint of one dense arm of the
stream study (`<root>/<from>-s<seed>/checkpoint.pt`) and scores it on the study's validation and
test streams (`stream_parts` of the checkpoint's recipe: the streams the report uses) under three
gatings at rate R:

    random  each neuron updates with probability R per step: the model's deterministic seeded
            [T, H] pattern (export/model.py, `random_mask`)
    skip    every neuron at every k-th step, none in between, k = max(2, round(1 / R))
    still   a hand-made motion gate: every neuron updates on a step when the gyroscope's
            magnitude |(wx, wy, wz)| (raw rad/s) exceeds a cut, none otherwise. The cut is the
            quantile of the validation streams' magnitudes (every step, idle and active) above
            which a share R of the steps lie; it is chosen on validation and applied unchanged
            to test (recorded in the run's config as `still_cut`).

Cost per step: R times the dense cell's step (no coordinator), plus, for `still`, one multiply-
add per gyroscope axis for the squared magnitude (compared with the squared cut: no root), plus
the output head, as export/stream_report.py counts it (`eval_gate_macs` in the run's config).

Each gating's figures go to `<root>/<from>-<gating>-eval-s<seed>/metrics.json`, in the shape of a
training run's (config, validation, test), with `config["eval_gating"]`, `config["eval_from"]`
and `config["eval_rate"]` saying the run was gated at evaluation, not trained. With `--parts val`
only validation is read and nothing is written (the report needs both parts).
"""

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from export.model import SARNN, Output, load_checkpoint
from export.streams import StreamSet
from export.train import TrainConfig, evaluate_streams, load_training_data, stream_parts
from sarnn_serve.accounting import CellCost

GATINGS = ("random", "skip", "still")
GYROSCOPE = ("wx", "wy", "wz")
PARTS = {"val": "validation", "test": "test"}


def skip_every(rate: float) -> int:
    """The skip period k that updates at mean rate `rate`: max(2, round(1 / rate))."""
    if not 0 < rate < 1:
        raise ValueError(f"the update rate must be between 0 and 1, got {rate:g}")
    return max(2, round(1 / rate))


def gyro_magnitudes(streams: StreamSet, gyro: list[int]) -> np.ndarray:
    """|(wx, wy, wz)| at every step of every stream, concatenated."""
    return np.concatenate([np.linalg.norm(s.x[:, gyro], axis=1) for s in streams.streams])


def still_cut(streams: StreamSet, gyro: list[int], rate: float) -> float:
    """The gyroscope magnitude above which a share `rate` of the streams' steps lie."""
    return float(np.quantile(gyro_magnitudes(streams, gyro), 1.0 - rate))


class MotionGate(nn.Module):
    """A trained model whose neurons all update on a step when the gyroscope's magnitude (raw
    units) exceeds `cut`, and none otherwise. Called as evaluate_streams calls a model."""

    def __init__(self, model: SARNN, gyro: list[int], cut: float) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.gyro = gyro
        self.cut = cut

    @torch.no_grad()
    def forward(self, x: Tensor, state: Tensor | None = None, **_: object) -> Output:
        """Run T steps; `coordinator` holds the magnitude minus the cut (broadcast over H)."""
        m, hidden = self.model, self.config.hidden
        m._check_input(x)
        batch, steps, _ = x.shape
        energy = x[..., self.gyro].square().sum(-1)  # one multiply-add per axis
        moving = (energy > self.cut**2).to(x.dtype)  # [B, T]; no root taken
        state = m.initial_state(batch) if state is None else state
        h = state[:, :hidden]
        c = state[:, hidden:] if self.config.cell == "lstm" else None
        xn = (x - m.mean) / m.std
        gx_all = (xn @ m.cell.weight_ih.T + m.cell.bias_ih).unbind(1)
        hs = []
        for t in range(steps):
            u = moving[:, t, None]
            h_new, c_new = m._candidate(gx_all[t], h, c)
            h = u * h_new + (1 - u) * h
            if c is not None:
                c = u * c_new + (1 - u) * c
            hs.append(h)
        final = h if c is None else torch.cat([h, c], 1)
        updates = moving[..., None].expand(batch, steps, hidden)
        excess = (energy.sqrt() - self.cut)[..., None].expand(batch, steps, hidden)
        return Output(m.head(torch.stack(hs, 1)), updates, excess, final)


def gated(model: SARNN, gating: str, rate: float, gyro: list[int], cut: float) -> nn.Module:
    """The trained dense `model` (weights shared) updating under `gating` at `rate`."""
    if model.config.gating != "dense":
        raise ValueError(f"the checkpoint is a {model.config.gating} model; a dense one is gated")
    if gating == "still":
        return MotionGate(model, gyro, cut)
    schedule = {"random": {"random_mask": rate}, "skip": {"skip_every": skip_every(rate)}}
    copy = SARNN(replace(model.config, **schedule[gating]))
    copy.load_state_dict(model.state_dict())
    copy.alpha = model.alpha
    return copy.eval()


def recipe_of(blob: dict) -> TrainConfig:
    """The checkpoint's training recipe (lists back to tuples); it must be a stream recipe."""
    values = blob.get("train_config")
    if not values:
        raise ValueError("the checkpoint has no train_config: it was not written by export.train")
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    if cfg.streams is None:
        raise ValueError("the checkpoint was not trained on streams: no study streams to score")
    return cfg


def gyro_index(feature_names: list[str], names: tuple[str, ...]) -> list[int]:
    """Positions of the gyroscope's features; ValueError naming a missing one."""
    missing = [n for n in names if n not in feature_names]
    if missing:
        raise ValueError(f"features {missing} not in the checkpoint's {feature_names}")
    return [feature_names.index(n) for n in names]


def evaluate_checkpoint(
    checkpoint: Path,
    rate: float,
    parts: tuple[str, ...] = tuple(PARTS),
    gatings: tuple[str, ...] = GATINGS,
    gyro_names: tuple[str, ...] = GYROSCOPE,
) -> dict[str, dict]:
    """Per gating, the run's metrics (config and one evaluation per part) of the trained dense
    model at `checkpoint` gated at mean update rate `rate`."""
    model, blob = load_checkpoint(str(checkpoint))
    cfg = recipe_of(blob)
    data = load_training_data(cfg)
    streams = stream_parts(cfg, data)
    gyro = gyro_index(list(blob.get("feature_names") or data.feature_names), gyro_names)
    cut = still_cut(streams["val"], gyro, rate)  # validation only, whatever `parts` says
    cost = CellCost(model.config.cell, data.n_features, model.config.hidden, False)
    runs = {}
    for gating in gatings:
        net = gated(model, gating, rate, gyro, cut)
        gate_macs = len(gyro) if gating == "still" else 0
        config = asdict(cfg) | {
            "dense": False,
            "random_mask": rate if gating == "random" else None,
            "skip_every": skip_every(rate) if gating == "skip" else 1,
            "eval_gating": gating,
            "eval_from": checkpoint.parent.name.rsplit("-s", 1)[0],
            "eval_checkpoint": str(checkpoint),
            "eval_rate": rate,
            "eval_gate_macs": gate_macs,
        }
        if gating == "still":
            config |= {"still_cut": cut, "still_features": list(gyro_names)}
        run: dict = {"config": config, "kept": "trained dense checkpoint, gated at evaluation"}
        for part in parts:
            run[PARTS[part]] = asdict(evaluate_streams(net, streams[part]))
        run["macs_per_step"] = {
            "dense": cost.dense_step,
            **{
                "selective" if part == "test" else "selective_val": gate_macs
                + cost.per_step(run[PARTS[part]]["update_rate"])
                for part in parts
            },
        }
        runs[gating] = run
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/stream-study-r3"))
    parser.add_argument("--from", dest="source", required=True, help="dense arm, e.g. dense-96")
    parser.add_argument("--rate", type=float, required=True, help="mean update rate R")
    parser.add_argument("--parts", nargs="+", choices=tuple(PARTS), default=list(PARTS))
    parser.add_argument("--gatings", nargs="+", choices=GATINGS, default=list(GATINGS))
    parser.add_argument("--gyro", nargs=3, default=list(GYROSCOPE), help="gyroscope features")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    checkpoints = sorted(args.root.glob(f"{args.source}-s*/checkpoint.pt"))
    if not checkpoints:
        parser.error(f"no {args.source}-s<seed>/checkpoint.pt under {args.root}")
    parts = tuple(p for p in PARTS if p in args.parts)
    figures: dict[str, list[list[float]]] = {g: [] for g in args.gatings}
    for checkpoint in checkpoints:
        seed = checkpoint.parent.name.rsplit("-s", 1)[1]
        runs = evaluate_checkpoint(checkpoint, args.rate, parts, args.gatings, tuple(args.gyro))
        for gating, run in runs.items():
            accs = [run[PARTS[p]]["streaming_accuracy"] for p in parts]
            rates = [run[PARTS[p]]["update_rate"] for p in parts]
            figures[gating].append(accs)
            print(
                f"{args.source}-{gating}-eval-s{seed}: "
                + ", ".join(
                    f"{p} {100 * a:.1f}% at rate {r:.3f}"
                    for p, a, r in zip(parts, accs, rates, strict=True)
                ),
                flush=True,
            )
            if len(parts) == len(PARTS):
                out = args.root / f"{args.source}-{gating}-eval-s{seed}"
                out.mkdir(parents=True, exist_ok=True)
                (out / "metrics.json").write_text(json.dumps(run, indent=2))
    print(f"\nmean over {len(checkpoints)} seeds ({args.source} at rate {args.rate:g}):")
    for gating, accs in figures.items():
        means = np.mean(accs, axis=0)
        shown = (f"{p} {100 * m:.1f}%" for p, m in zip(parts, means, strict=True))
        print(f"  {gating}: " + ", ".join(shown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
