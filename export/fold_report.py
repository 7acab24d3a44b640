"""The stream study over cross-subject folds: one arm against its rivals, fold by fold and pooled.

Each fold is a study root (export/stream_study.py, `--val-groups`/`--test-groups`) whose arms were
trained with the same recipes on other held-out subjects. Within a fold every arm is scored on the
same streams, so recordings pair up; pooled over folds, each recording's correct steps are first
averaged over its fold's seeds, and the bootstrap (export/paired.py) resamples the recordings of
every fold together. The arms are named, not chosen: the choices were made on the study's own
validation split before any fold was trained. `--primary` names the folds whose test subjects
chose nothing; the pooled verdicts are printed for them and, apart, for all folds.

    python -m export.fold_report --folds runs/stream-study-r5 runs/folds/test-* \\
        --primary runs/stream-study-r5 runs/folds/test-1-2 runs/folds/test-3-4 \\
        runs/folds/test-5-6 --arm sa-motion-energy --against dense-96 random periodic dense-40 \\
        --out docs/streams/folds
"""

import argparse
import json
from pathlib import Path

import numpy as np

from export.paired import paired_difference, verdict
from export.stream_report import Arm, arm_difference, load_arms

BARS = {"dense-96": 3.0}  # the dense target's bar; every other rival's is 0


def fold_arms(root: Path, names: list[str]) -> dict[str, Arm]:
    """The named arms of one fold, which must all be scored on the same test recordings."""
    arms = load_arms(root)
    missing = [n for n in names if n not in arms]
    if missing:
        raise ValueError(f"{root} has no finished runs of {', '.join(missing)}")
    scored = arms[names[0]].scored["test"][0]
    for name in names:
        if any(not np.array_equal(row, scored) for row in arms[name].scored["test"]):
            raise ValueError(f"{root}: {name} was not scored on the same recordings")
    return {n: arms[n] for n in names}


def test_subjects(root: Path, arm: str) -> list[str]:
    """Who a fold holds out for test, as its first run of `arm` recorded it."""
    metrics = json.loads(next(root.glob(f"{arm}-s*/metrics.json")).read_text())
    return [str(s) for s in metrics.get("dataset", {}).get("test_subjects", [])]


def fold_row(root: Path, arms: dict[str, Arm], arm: str, rivals: list[str]) -> dict:
    """One fold's figures: who was held out, each arm's test accuracy and the arm's rates,
    and the arm minus each rival on this fold alone."""
    own = arms[arm]
    return {
        "root": str(root),
        "test_subjects": test_subjects(root, arm),
        "recordings": int(own.scored["test"].shape[1]),
        "seeds": own.seeds,
        "test_accuracy": {n: 100 * a.accuracy("test") for n, a in arms.items()},
        "update_rate": own.rate("test", "update_rate"),
        "idle_update_rate": own.rate("test", "idle_update_rate"),
        "active_update_rate": own.rate("test", "active_update_rate"),
        "differences": {r: arm_difference(own, arms[r], "test") for r in rivals},
    }


def pooled(folds: list[dict[str, Arm]], arm: str, rival: str) -> tuple[float, float, float]:
    """Arm minus rival over every recording of `folds`, each recording's correct steps averaged
    over its fold's seeds."""
    correct_a = np.concatenate([f[arm].correct["test"].mean(0) for f in folds])
    correct_b = np.concatenate([f[rival].correct["test"].mean(0) for f in folds])
    scored = np.concatenate([f[arm].scored["test"][0] for f in folds])
    return paired_difference(correct_a[None], correct_b[None], scored)


def report(folds: list[Path], primary: list[Path], arm: str, rivals: list[str]) -> dict:
    """The fold rows and the pooled differences, for the primary folds and for all."""
    names = [arm, *rivals]
    loaded = {root: fold_arms(root, names) for root in folds}
    unknown = [str(p) for p in primary if p not in loaded]
    if unknown:
        raise ValueError(f"primary folds not among --folds: {', '.join(unknown)}")
    out: dict = {"arm": arm, "folds": [fold_row(r, a, arm, rivals) for r, a in loaded.items()]}
    for label, roots in (("primary", primary), ("all", folds)):
        chosen = [loaded[r] for r in roots]
        out[label] = {
            "folds": [str(r) for r in roots],
            "recordings": int(sum(f[arm].scored["test"].shape[1] for f in chosen)),
            "differences": {},
        }
        for rival in rivals:
            point, lo, hi = pooled(chosen, arm, rival)
            out[label]["differences"][rival] = {
                "difference_points": point,
                "ci95": [lo, hi],
                "bar_points": BARS.get(rival, 0.0),
                "verdict": verdict(lo, hi, BARS.get(rival, 0.0)),
            }
    return out


def _ci(point: float, lo: float, hi: float) -> str:
    return f"{point:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def markdown(result: dict, rivals: list[str]) -> str:
    """The report as a page: a row per fold, then the pooled verdicts."""
    arm = result["arm"]
    lines = [
        f"# {arm} over cross-subject folds",
        "",
        "Test accuracy on active steps from 2 s after each bout starts (%), and "
        f"{arm} minus each rival in points with a paired 95% bootstrap CI over recordings "
        "(and seeds within a fold). Generated by `python -m export.fold_report`.",
        "",
        f"| test subjects | recordings | seeds | {arm} | "
        + " | ".join(rivals)
        + f" | {arm}'s update rate (idle / active) | "
        + " | ".join(f"minus {r}" for r in rivals)
        + " |",
        "|" + "---|" * (5 + 2 * len(rivals)),
    ]
    for row in result["folds"]:
        acc = row["test_accuracy"]
        lines.append(
            f"| {'-'.join(row['test_subjects'])} | {row['recordings']} | {len(row['seeds'])} | "
            f"{acc[arm]:.1f} | "
            + " | ".join(f"{acc[r]:.1f}" for r in rivals)
            + f" | {100 * row['update_rate']:.2f}% ({100 * row['idle_update_rate']:.2f}% / "
            f"{100 * row['active_update_rate']:.2f}%) | "
            + " | ".join(_ci(*row["differences"][r]) for r in rivals)
            + " |"
        )
    for label, title in (("primary", "Pooled: folds whose test subjects chose nothing"),
                         ("all", "Pooled: all folds")):  # fmt: skip
        block = result[label]
        lines += ["", f"## {title} ({block['recordings']} recordings)", ""]
        lines += ["| rival | difference (95% CI) | bar | verdict |", "|---|---|---|---|"]
        for rival, d in block["differences"].items():
            lines.append(
                f"| {rival} | {_ci(d['difference_points'], *d['ci95'])} | "
                f"{d['bar_points']:+.0f} | **{d['verdict']}** |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--folds", nargs="+", type=Path, required=True, help="the folds' roots")
    parser.add_argument(
        "--primary", nargs="+", type=Path, required=True, help="folds whose test chose nothing"
    )
    parser.add_argument("--arm", default="sa-motion-energy")
    parser.add_argument("--against", nargs="+", required=True, help="the rivals' arm names")
    parser.add_argument("--out", type=Path, required=True, help="writes report.md and .json")
    args = parser.parse_args(argv)
    try:
        result = report(args.folds, args.primary, args.arm, args.against)
    except ValueError as exc:
        parser.error(str(exc))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(result, indent=2))
    page = markdown(result, args.against)
    (args.out / "report.md").write_text(page)
    print(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
