"""The stream study's report: paired differences with bootstrap CIs over recordings and seeds.

Reads every `<arm>-s<seed>/metrics.json` under the study's root (export/stream_study.py). Every
arm is scored on the same validation and test streams, each recording one bout, so the per-
recording figures pair up. A comparison of arms A and B is the difference of their pooled
streaming accuracies (scored steps of every bout: active steps from 2 s after the bout starts;
idle steps never), with a 95% CI from a bootstrap that resamples recordings (paired) and, for
each arm, seeds. A target reads "met" only when the CI's lower bound is above its bar; otherwise
"not met" or "not distinguishable".

Choices are made on validation: the SA-RNN variant (every `sa-*` arm) and the best dense GRU
among those costing at least as much as the SA-RNN; the random and periodic rivals are the
trained arms whose update rate is nearest the SA-RNN's (on validation); test figures are read
once, here.
Trained dense models gated only at evaluation (export/eval_skipping.py) are listed and compared
for information, never chosen as a rival.
Multiply-adds per step include the coordinator and the output head.
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.paired import paired_difference, verdict
from export.streams import StreamSpec
from sarnn_serve.accounting import CellCost

N_CLASSES = 7
N_FEATURES = 6
DENSE_REFERENCE = 128


@dataclass
class Arm:
    """One arm's runs: per seed and recording, scored steps and correct ones, per part."""

    name: str
    configs: list[dict]
    scored: dict[str, np.ndarray]  # part -> [seeds, recordings]
    correct: dict[str, np.ndarray]
    figures: dict[str, list[dict]]  # part -> per seed evaluation

    @property
    def seeds(self) -> list[int]:
        return [c["seed"] for c in self.configs]

    @property
    def evaluated(self) -> bool:
        """A trained model gated only at evaluation (export/eval_skipping.py), not trained so."""
        return "eval_gating" in self.configs[0]

    def macs(self, part: str = "val") -> float:
        """Mean multiply-adds per step, coordinator and output head included, at the arm's
        mean update rate on `part`. An arm gated at evaluation has no coordinator; its gate's
        own multiply-adds (`eval_gate_macs`: the still gate's magnitude) are added."""
        cfg = self.configs[0]
        rate = float(np.mean([f["update_rate"] for f in self.figures[part]]))
        hidden = cfg["hidden"]
        cost = CellCost(
            cfg["cell"], N_FEATURES, hidden,
            not cfg["dense"] and cfg["random_mask"] is None and not self.evaluated,
            cfg.get("coord_energy", False), cfg.get("coord_accumulate", False),
            cfg.get("coord_delta", False), cfg.get("coord_shared_gate", False),
        )  # fmt: skip
        step = cost.dense_step if cfg["dense"] else cost.per_step(rate)
        step += cfg.get("eval_gate_macs", 0)
        return step + hidden * N_CLASSES

    def accuracy(self, part: str) -> float:
        return float(self.correct[part].sum() / self.scored[part].sum())

    def rate(self, part: str, key: str) -> float:
        return float(np.mean([f[key] for f in self.figures[part]]))


def load_arms(root: Path) -> dict[str, Arm]:
    """Every arm with at least one finished run under `root`."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(root.glob("*-s*/metrics.json")):
        arm = path.parent.name.rsplit("-s", 1)[0]
        runs.setdefault(arm, []).append(json.loads(path.read_text()))
    return {name: arm_of(name, metrics) for name, metrics in runs.items()}


def arm_of(name: str, metrics: list[dict]) -> Arm:
    """The arm of these runs' metrics (one per seed), in seed order."""
    metrics = sorted(metrics, key=lambda m: m["config"]["seed"])
    parts = {"val": "validation", "test": "test"}
    return Arm(
        name,
        [m["config"] for m in metrics],
        {p: np.array([m[key]["scored"] for m in metrics]) for p, key in parts.items()},
        {p: np.array([m[key]["correct"] for m in metrics]) for p, key in parts.items()},
        {p: [m[key] for m in metrics] for p, key in parts.items()},
    )


def arm_difference(a: Arm, b: Arm, part: str, level: float = 0.95) -> tuple[float, float, float]:
    """Pooled accuracy of A minus B on `part` (points) and its CI (export/paired.py)."""
    return paired_difference(a.correct[part], b.correct[part], a.scored[part][0], level=level)


def recipe_search(root: Path) -> list[dict]:
    """The logged search for the SA-RNN's budget (seed 0, validation only): the last epoch each
    run's log reached (`<run>.log`, one JSON line per epoch; a run stopped early says so)."""
    found = []
    for log in sorted(root.glob("*.log")):
        epochs = [json.loads(line) for line in log.read_text().splitlines() if line[:1] == "{"]
        if not epochs:
            continue
        last = epochs[-1]
        found.append(
            {
                "run": log.stem,
                "epochs": last["epoch"] + 1,
                "lam": last["lam"],
                "val_accuracy": 100 * last["val_streaming_accuracy"],
                "val_update_rate": last["val_update_rate"],
                "val_idle_update_rate": last["val_idle_update_rate"],
                "val_active_update_rate": last["val_active_update_rate"],
            }
        )
    return found


def nearest_rate(arms: list[Arm], rate: float) -> Arm | None:
    """The arm whose mean validation update rate is nearest `rate` (None if there is none)."""
    return min(arms, key=lambda arm: abs(arm.rate("val", "update_rate") - rate), default=None)


def report(root: Path, searches: list[Path] | None = None) -> dict:
    """Choose on validation, compare on test; the figures as plain data."""
    arms = load_arms(root)
    sa_names = sorted(n for n in arms if n.startswith("sa-"))
    sa = max((arms[n] for n in sa_names), key=lambda arm: arm.accuracy("val"))
    sa_rate = sa.rate("val", "update_rate")
    trained = [a for a in arms.values() if not a.evaluated]
    random = nearest_rate([a for a in trained if a.configs[0]["random_mask"]], sa_rate)
    masks = [a for a in trained if not a.configs[0].get("coord_shared_gate")]
    periodic = nearest_rate([a for a in masks if a.configs[0].get("fixed_rate")], sa_rate)
    all_dense = [a for n, a in arms.items() if n.startswith("dense") and not a.evaluated]
    dense = [a for a in all_dense if a.macs() >= sa.macs()]
    best_dense = max(dense, key=lambda arm: arm.accuracy("val")) if dense else None
    if best_dense is None and all_dense:  # none costs as much: the dearest, flagged cheaper
        best_dense = max(all_dense, key=lambda arm: arm.macs())
    reference = CellCost("gru", N_FEATURES, DENSE_REFERENCE, False).dense_step
    out: dict = {
        "root": str(root),
        "streams": {
            "idle_seconds": [
                sa.configs[0].get("idle_min_s", StreamSpec.idle_min_s),
                sa.configs[0].get("idle_max_s", StreamSpec.idle_max_s),
            ],
            "rescored": any("rescored_from" in c for a in arms.values() for c in a.configs),
        },
        "chosen_on_validation": {
            "sa_rnn": sa.name,
            "sa_candidates": {n: 100 * arms[n].accuracy("val") for n in sa_names},
            "best_dense": best_dense.name if best_dense else None,
            "best_dense_cheaper": bool(best_dense and best_dense.macs() < sa.macs()),
            "dense_candidates": {a.name: 100 * a.accuracy("val") for a in dense},
            "random": random.name if random else None,
            "periodic": periodic.name if periodic else None,
        },
        "arms": {
            name: {
                "seeds": arm.seeds,
                "macs_per_step": arm.macs(),
                "val_accuracy": 100 * arm.accuracy("val"),
                "test_accuracy": 100 * arm.accuracy("test"),
                "test_update_rate": arm.rate("test", "update_rate"),
                "test_idle_update_rate": arm.rate("test", "idle_update_rate"),
                "test_active_update_rate": arm.rate("test", "active_update_rate"),
                "best_seed_on_validation": arm.seeds[
                    int(np.argmax(arm.correct["val"].sum(1) / arm.scored["val"].sum(1)))
                ],
            }
            for name, arm in arms.items()
        },
        "targets": {},
        "recipe_search": [r for root in searches or [] for r in recipe_search(root)],
    }
    rivals = [("dense", best_dense, 3.0), ("random", random, 0.0), ("periodic", periodic, 0.0)]
    for label, rival, bar in rivals:
        if rival is None:
            continue
        point, lo, hi = arm_difference(sa, rival, "test")
        judged = verdict(lo, hi, bar)
        if judged == "met" and label == "dense" and rival.macs() < sa.macs():
            judged = "not met (the rival costs less)"
        out["targets"][f"{sa.name} - {rival.name}"] = {
            "difference_points": point,
            "ci95": [lo, hi],
            "bar_points": bar,
            "verdict": judged,
            "against": label,
        }
    idle, active = sa.rate("test", "idle_update_rate"), sa.rate("test", "active_update_rate")
    out["targets"]["idle rate <= active / 3"] = {
        "idle": idle,
        "active": active,
        "verdict": "met" if idle <= active / 3 else "not met",
    }
    share = sa.macs("test") / (reference + DENSE_REFERENCE * N_CLASSES)
    out["targets"]["macs <= 25% of dense GRU-128"] = {
        "share": share,
        "verdict": "met" if share <= 0.25 else "not met",
    }
    out["against_evaluated"] = {}  # informational: trained dense models gated at evaluation
    for name, arm in sorted(arms.items()):
        if arm.evaluated:
            point, lo, hi = arm_difference(sa, arm, "test")
            out["against_evaluated"][f"{sa.name} - {name}"] = {
                "difference_points": point,
                "ci95": [lo, hi],
                "reading": (
                    "SA-RNN better"
                    if lo > 0
                    else "SA-RNN worse"
                    if hi < 0
                    else "not distinguishable"
                ),
                "gating": arm.configs[0]["eval_gating"],
                "macs_per_step": arm.macs(),
            }
    return out


def streams_line(streams: dict) -> str:
    """What the idle periods of the scored streams were, and whether the runs were scored
    again on them (export/rescore.py) rather than trained on them."""
    low, high = streams["idle_seconds"]
    line = f"Idle periods log-uniform in {low:g}-{high:g} s."
    if streams["rescored"]:
        line += (
            " The runs were trained on the study's streams and scored again on these, not "
            "retrained (`python -m export.rescore`)."
        )
    return line


def markdown(result: dict) -> str:
    """The report as a Markdown page."""
    lines = [
        "# Stream study: does the coordinator learn what to skip?",
        "",
        "Generated by `python -m export.stream_report` from the runs of "
        "`python -m export.stream_study` (watch streams: bouts of held-out recordings between "
        "idle periods of a still wrist; scored on active steps from 2 s after each bout starts; "
        "multiply-adds per step include the coordinator and the output head).",
        "",
        streams_line(result["streams"]),
        "",
        "| arm | seeds | multiply-adds / step | val % | test % | test update rate "
        "| idle | active |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, arm in sorted(result["arms"].items()):
        lines.append(
            f"| {name} | {len(arm['seeds'])} | {arm['macs_per_step'] / 1000:.1f}k "
            f"| {arm['val_accuracy']:.1f} | {arm['test_accuracy']:.1f} "
            f"| {arm['test_update_rate']:.1%} | {arm['test_idle_update_rate']:.1%} "
            f"| {arm['test_active_update_rate']:.1%} |"
        )
    if result["recipe_search"]:
        lines += [
            "",
            "The SA-RNN's recipe, searched on validation (seed 0; a run stopped early shows "
            "the epochs it reached):",
            "",
            "| run | epochs | lambda | val % | val update rate | idle | active |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['run']} | {r['epochs']} | {r['lam']:g} | {r['val_accuracy']:.1f} "
            f"| {r['val_update_rate']:.1%} | {r['val_idle_update_rate']:.1%} "
            f"| {r['val_active_update_rate']:.1%} |"
            for r in result["recipe_search"]
        ]
    chosen = result["chosen_on_validation"]
    lines += [
        "",
        f"Chosen on validation: SA-RNN variant **{chosen['sa_rnn']}** "
        f"({', '.join(f'{k} {v:.1f}%' for k, v in chosen['sa_candidates'].items())}); "
        + (
            f"no dense GRU costs as much; the dearest, **{chosen['best_dense']}**, is compared "
            "instead (a win over it would not count; a loss does)."
            if chosen["best_dense_cheaper"]
            else f"best dense GRU costing at least as much: **{chosen['best_dense']}** "
            f"({', '.join(f'{k} {v:.1f}%' for k, v in chosen['dense_candidates'].items())})."
        )
        + "".join(
            f" Trained {kind} mask nearest the SA-RNN's update rate: **{chosen[kind]}**."
            for kind in ("random", "periodic")
            if chosen.get(kind)
        ),
        "",
        "## Targets (test, paired over recordings and seeds, 95% bootstrap CI)",
        "",
    ]
    for name, t in result["targets"].items():
        if "ci95" in t:
            lo, hi = t["ci95"]
            lines.append(
                f"- {name}: {t['difference_points']:+.1f} points [{lo:+.1f}, {hi:+.1f}], "
                f"bar {t['bar_points']:+.0f}: **{t['verdict']}**"
            )
        elif "idle" in t:
            lines.append(
                f"- {name}: idle {t['idle']:.1%}, active {t['active']:.1%}: **{t['verdict']}**"
            )
        else:
            lines.append(f"- {name}: {t['share']:.1%}: **{t['verdict']}**")
    if result.get("against_evaluated"):
        lines += [
            "",
            "## Against dense models skipping at evaluation (informational, not a target)",
            "",
            "Trained dense GRUs, not retrained, gated at evaluation at the SA-RNN's rate "
            "(`python -m export.eval_skipping`); test, paired over recordings and seeds, 95% "
            "bootstrap CI.",
            "",
        ]
        lines += [
            f"- {name}: {t['difference_points']:+.1f} points [{t['ci95'][0]:+.1f}, "
            f"{t['ci95'][1]:+.1f}] ({t['gating']}, {t['macs_per_step'] / 1000:.1f}k "
            f"multiply-adds / step): {t['reading']}"
            for name, t in result["against_evaluated"].items()
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/stream-study-r3"))
    parser.add_argument(
        "--search", type=Path, nargs="*", default=[], help="folders of the recipe search's logs"
    )
    parser.add_argument("--out", type=Path, help="write report.md and report.json here")
    args = parser.parse_args(argv)
    result = report(args.root, args.search)
    text = markdown(result)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(result, indent=2))
        (args.out / "report.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
