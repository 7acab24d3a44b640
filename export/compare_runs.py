"""Compare two recipes from their finished runs: each arm's seeds, and A minus B as a paired
difference with a 95% bootstrap CI over recordings and seeds (export/paired.py; `--level`
widens it, e.g. 0.975 for one of two comparisons made).

    python -m export.compare_runs runs/knob-r6/a1.5-s? --against runs/knob-r6/a5-s?

Reads each run's metrics.json. `--part validation` (the default) is the split choices are made
on; `--part test` reads the test figures, once, at the end. Beside the accuracy each arm shows
its update rate and, where the runs wrote a threshold curve, the update rates at its ends (the
compute knob's range on validation).
"""

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from export.stream_report import Arm, arm_difference, arm_of

PARTS = {"validation": "val", "test": "test"}


def load_runs(paths: list[Path]) -> list[dict]:
    """The metrics of every run (its directory or its metrics.json)."""
    return [json.loads((p / "metrics.json" if p.is_dir() else p).read_text()) for p in paths]


def describe(arm: Arm, curves: list[dict | None], part: str) -> str:
    """One line: accuracy per seed and mean, update rate and, on validation, the knob's range."""
    accs = [100 * f["streaming_accuracy"] for f in arm.figures[part]]
    line = f"{', '.join(f'{a:.1f}' for a in accs)} (mean {statistics.mean(accs):.1f}), "
    line += f"update rate {100 * arm.rate(part, 'update_rate'):.1f}%"
    if part == "val" and all(curves):
        low = statistics.mean(c[0]["update_rate"] for c in curves)
        high = statistics.mean(c[-1]["update_rate"] for c in curves)
        lo_tau, hi_tau = curves[0][0]["threshold"], curves[0][-1]["threshold"]
        line += f", knob {100 * low:.1f}% (tau {lo_tau:g}) to {100 * high:.1f}% (tau {hi_tau:g})"
    return line


def compare(a: Arm, b: Arm, part: str, level: float = 0.95) -> tuple[float, float, float]:
    """A minus B in points on `part`, with the bounds of its `level` CI."""
    scored = a.scored[part][0]
    if any(not np.array_equal(row, scored) for row in (*a.scored[part], *b.scored[part])):
        raise ValueError("the runs were not scored on the same recordings")
    return arm_difference(a, b, part, level)


def judge(lo: float, hi: float) -> str:
    """Which arm the CI picks, if either."""
    if lo > 0:
        return "A is better"
    if hi < 0:
        return "B is better"
    return "not distinguishable"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m export.compare_runs", description=__doc__)
    p.add_argument(
        "runs",
        nargs="+",
        type=Path,
        help="runs of recipe A (its seeds): directories or metrics.json",
    )
    p.add_argument("--against", nargs="+", type=Path, required=True, help="those of recipe B")
    p.add_argument("--part", choices=list(PARTS), default="validation")
    p.add_argument("--level", type=float, default=0.95, help="the CI's level")
    args = p.parse_args(argv)
    part = PARTS[args.part]
    runs = {"A": load_runs(args.runs), "B": load_runs(args.against)}
    arms = {name: arm_of(name, metrics) for name, metrics in runs.items()}
    for name, metrics in runs.items():
        curves = [m.get("threshold_curve") for m in metrics]
        print(f"{name}: {describe(arms[name], curves, part)}")
    point, lo, hi = compare(arms["A"], arms["B"], part, args.level)
    print(
        f"A minus B on {args.part}: {point:+.1f} [{lo:+.1f}, {hi:+.1f}] "
        f"({100 * args.level:g}% CI): {judge(lo, hi)}"
    )


if __name__ == "__main__":
    main()
