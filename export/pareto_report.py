"""The Pareto study's report: pareto.csv, pareto.md and pareto.png from the result records.

Built from the result records alone (export.pareto: one small JSON per finished run in the
tracked results folder; no run directory or checkpoint needed). Every record is scored
(export.pareto's module docstring): validation and test streaming and last-step accuracy, mean
and sd over seeds; a 95% bootstrap CI over test recordings for the test streaming accuracy;
multiply-adds per step at the achieved validation update rate. The selection rule picks on
validation; the markdown gives test figures only for the configurations it picks (pareto.csv
has every configuration's).
"""

import csv
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from export.paired import paired_difference, verdict
from export.pareto import FAMILIES, Point

MARKERS = {"sa-rnn": "o", "dense": "s", "skip": "^", "random": "x"}
BUDGET_TOLERANCE = 0.05
BOOTSTRAP_SAMPLES = 2000


@dataclass
class Row:
    """Figures of one configuration over its finished seeds (accuracies as fractions; sd is
    nan for one seed)."""

    config: str
    family: str
    cell: str
    hidden: int
    schedule: str
    seeds: int
    val_update_rate: float
    macs_per_step: float
    val_streaming_mean: float
    val_streaming_sd: float
    val_last_step_mean: float
    val_last_step_sd: float
    test_streaming_mean: float
    test_streaming_sd: float
    test_streaming_ci_low: float
    test_streaming_ci_high: float
    test_last_step_mean: float
    test_last_step_sd: float
    test_correct: list[list[int]] = field(default_factory=list)  # [seeds][recordings]
    test_scored: list[int] = field(default_factory=list)  # [recordings]


def point_of(config: dict) -> Point:
    """The grid point of a run, from its TrainConfig as saved in its result record."""
    if config.get("dense"):
        family = "dense"
    elif config.get("skip_every", 1) > 1:
        family = "skip"
    elif config.get("random_mask") is not None:
        family = "random"
    else:
        family = "sa-rnn"
    return Point(
        family,
        config["cell"],
        config["hidden"],
        target_rate=config.get("target_rate") if family == "sa-rnn" else None,
        skip_every=config.get("skip_every", 1),
        random_mask=config.get("random_mask"),
    )


def bootstrap_ci(
    correct: np.ndarray, scored: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the mean over seeds of the pooled accuracy, resampling the
    recordings (the same draw for every seed): correct [S, N], scored [N] steps per recording."""
    rng = np.random.default_rng(seed)
    n = scored.shape[0]
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(samples)])
    accuracy = (weights @ correct.T) / (weights @ scored)[:, None]
    low, high = np.percentile(accuracy.mean(1), [2.5, 97.5])
    return float(low), float(high)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.mean(values), sd


def _schedule(point: Point) -> str:
    if point.family == "sa-rnn":
        return f"target rate {point.target_rate:g}"
    if point.family == "skip":
        return f"every {point.skip_every} steps"
    if point.family == "random":
        return f"random, p = {point.random_mask:g}"
    return "every step"


def _row(point: Point, runs: list[dict]) -> Row:
    val, test = [m["validation"] for m in runs], [m["test"] for m in runs]
    correct = np.asarray([t["correct"] for t in test], float)
    low, high = bootstrap_ci(correct, np.asarray(test[0]["scored"], float))
    figures = {}
    for part, evaluations in (("val", val), ("test", test)):
        for key in ("streaming", "last_step"):
            mean, sd = _mean_sd([e[f"{key}_accuracy"] for e in evaluations])
            figures[f"{part}_{key}_mean"], figures[f"{part}_{key}_sd"] = mean, sd
    return Row(
        config=point.name,
        family=point.family,
        cell=point.cell,
        hidden=point.hidden,
        schedule=_schedule(point),
        seeds=len(runs),
        val_update_rate=statistics.mean(v["update_rate"] for v in val),
        macs_per_step=statistics.mean(m["macs_per_step"]["selective_val"] for m in runs),
        test_streaming_ci_low=low,
        test_streaming_ci_high=high,
        test_correct=[list(t["correct"]) for t in test],
        test_scored=list(test[0]["scored"]),
        **figures,
    )


def collect(results: Path) -> list[Row]:
    """One row per configuration with at least one result record in `results`."""
    runs: dict[Point, list[dict]] = {}
    for path in sorted(results.glob("*.json")):
        record = json.loads(path.read_text())
        runs.setdefault(point_of(record["config"]), []).append(record)
    rows = [_row(point, ms) for point, ms in runs.items()]
    return sorted(rows, key=lambda r: (FAMILIES.index(r.family), r.macs_per_step))


def choose(rows: list[Row], budgets: list[float] | None = None) -> list[tuple[float, Row]]:
    """The selection rule: per budget (by default each SA-RNN configuration's cost) and family,
    the best mean validation streaming accuracy among configurations costing at most the budget
    (+5%)."""
    if budgets is None:
        budgets = sorted({r.macs_per_step for r in rows if r.family == "sa-rnn"})
    chosen = []
    for budget in budgets:
        limit = budget * (1 + BUDGET_TOLERANCE)
        for family in FAMILIES:
            fits = [r for r in rows if r.family == family and r.macs_per_step <= limit]
            if fits:
                chosen.append((budget, max(fits, key=lambda r: r.val_streaming_mean)))
    return chosen


def target_check(rows: list[Row], reference: str = "dense-gru128") -> list[str]:
    """The study's target, judged on test figures of configurations chosen on validation: the
    SA-RNN chosen at half the reference's multiply-adds (the selection rule's budget, +5%) at
    least as accurate (test streaming, mean over seeds) as the dense configuration chosen among
    those costing as much or more, and more accurate than the skip and random-mask baselines
    chosen at its budget. Markdown lines."""
    ref = next((r for r in rows if r.config == reference), None)
    if ref is None:
        return [f"The reference {reference} is not trained yet."]
    budget = ref.macs_per_step / 2
    picked = {r.family: r for _, r in choose(rows, [budget])}
    sa = picked.get("sa-rnn")
    if sa is None:
        return [f"No SA-RNN costs at most half of {reference} ({budget:.0f} multiply-adds)."]
    dearer = [r for r in rows if r.family == "dense" and r.macs_per_step >= sa.macs_per_step]
    rivals = [max(dearer, key=lambda r: r.val_streaming_mean)] if dearer else []
    rivals += [picked[f] for f in ("skip", "random") if f in picked]
    lines = [
        f"Budget: half of {reference} ({ref.macs_per_step:.0f}) = {budget:.0f} multiply-adds "
        f"per step (+{100 * BUDGET_TOLERANCE:g}%). Chosen on validation: {sa.config} at "
        f"{sa.macs_per_step:.0f} ({100 * sa.macs_per_step / ref.macs_per_step:.1f}% of "
        f"{reference}), test streaming {_pct(sa.test_streaming_mean, sa.test_streaming_sd)}%.",
        "",
        "| rival (chosen on validation) | MACs/step | test streaming % "
        "| SA-RNN minus rival (points, paired 95% CI) | verdict |",
        "|---|---|---|---|---|",
    ]
    verdicts = []
    for r in rivals:
        gap, lo, hi = paired_difference(sa.test_correct, r.test_correct, sa.test_scored)
        verdicts.append(verdict(lo, hi))
        lines.append(
            f"| {r.config} | {r.macs_per_step:.0f} "
            f"| {_pct(r.test_streaming_mean, r.test_streaming_sd)} "
            f"| {gap:+.1f} [{lo:+.1f}, {hi:+.1f}] | {verdicts[-1]} |"
        )
    met = bool(rivals) and all(v == "met" for v in verdicts)
    lines += [
        "",
        f"Target {'met' if met else 'not met'}: a win needs the paired CI's lower bound above "
        "0 against every rival; otherwise the models are not distinguishable here.",
    ]
    return lines


def _pct(mean: float, sd: float = math.nan) -> str:
    return f"{100 * mean:.1f}" if math.isnan(sd) else f"{100 * mean:.1f} ± {100 * sd:.1f}"


def markdown(rows: list[Row], results: Path) -> str:
    """The configurations chosen on validation with their test figures, then every
    configuration's validation figures."""
    lines = [
        "# Pareto study: accuracy against multiply-adds per step",
        "",
        f"{sum(r.seeds for r in rows)} finished runs of {len(rows)} configurations (result "
        f"records in {results}). "
        "Multiply-adds per step at the achieved validation update rate, mean over seeds; "
        "accuracies mean ± sd over seeds; the CI is a 95% bootstrap over test recordings.",
        "",
        "## Chosen on validation, tested once",
        "",
        "Per budget (the cost of an SA-RNN configuration) and family: the configuration with the "
        "best mean validation streaming accuracy costing at most the budget + "
        f"{100 * BUDGET_TOLERANCE:g}%.",
        "",
        "| budget MACs/step | family | configuration | MACs/step | seeds | val streaming % "
        "| test streaming % | test 95% CI | test last-step % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for budget, r in choose(rows):
        lines.append(
            f"| {budget:.0f} | {r.family} | {r.config} | {r.macs_per_step:.0f} | {r.seeds} "
            f"| {_pct(r.val_streaming_mean, r.val_streaming_sd)} "
            f"| {_pct(r.test_streaming_mean, r.test_streaming_sd)} "
            f"| {100 * r.test_streaming_ci_low:.1f}-{100 * r.test_streaming_ci_high:.1f} "
            f"| {_pct(r.test_last_step_mean, r.test_last_step_sd)} |"
        )
    lines += ["", "## The target", "", *target_check(rows)]
    lines += [
        "",
        "## Every configuration, validation (test figures of all: pareto.csv)",
        "",
        "| family | configuration | H | schedule | seeds | val update rate % | MACs/step "
        "| val streaming % | val last-step % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.family} | {r.config} | {r.hidden} | {r.schedule} | {r.seeds} "
            f"| {100 * r.val_update_rate:.1f} | {r.macs_per_step:.0f} "
            f"| {_pct(r.val_streaming_mean, r.val_streaming_sd)} "
            f"| {_pct(r.val_last_step_mean, r.val_last_step_sd)} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    """Streaming accuracy (validation, test) against multiply-adds per step, log x, error bars
    of one sd over seeds, one marker per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, part in zip(axes, ("val", "test"), strict=True):
        for family in FAMILIES:
            mine = [r for r in rows if r.family == family]
            if not mine:
                continue
            sd = [getattr(r, f"{part}_streaming_sd") for r in mine]
            ax.errorbar(
                [r.macs_per_step for r in mine],
                [100 * getattr(r, f"{part}_streaming_mean") for r in mine],
                yerr=[0.0 if math.isnan(v) else 100 * v for v in sd],
                marker=MARKERS[family],
                linestyle="none",
                capsize=3,
                label=family,
            )
        ax.set_xscale("log")
        ax.set_xlabel("multiply-adds per step (at the validation update rate)")
        ax.set_title(f"{'validation' if part == 'val' else 'test'} streaming accuracy")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("streaming accuracy %")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results: Path, out: Path) -> str:
    """Write pareto.csv, pareto.md and pareto.png into `out` from the result records in
    `results`; return the markdown."""
    rows = collect(results)
    if not rows:
        raise ValueError(f"no result records in {results}")
    out.mkdir(parents=True, exist_ok=True)
    with (out / "pareto.csv").open("w", newline="") as f:
        per_recording = ("test_correct", "test_scored")  # in the result records, not the table
        columns = [k for k in asdict(rows[0]) if k not in per_recording]
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    text = markdown(rows, results)
    (out / "pareto.md").write_text(text)
    plot(rows, out / "pareto.png")
    return text
