"""The Pareto study: accuracy against multiply-adds per step, SA-RNNs against baselines of equal
cost, chosen on validation, tested once.

    python -m export pareto                                    # the full grid (prints its time)
    python -m export pareto --parts 0/2 & python -m export pareto --parts 1/2    # on 2 cores
    python -m export pareto --report-only                      # table and plot of what is done
                                                               # (from the result records alone)

Stage 1 trains an SA-RNN at every width x target rate x seed. Stage 2 derives the baselines from
each SA-RNN point's cost c = CellCost(H).per_step(r) at its achieved validation update rate r
(mean over seeds):

    dense    the plain cell at the width whose dense step costs closest to c
    skip     width H, every neuron updated at every k-th step, k = round(dense(H) / c) >= 2
    random   width H, each neuron updated with probability p = c / dense(H) < 1

so stage 2 starts when every stage-1 run is finished (a part waits for the others').
`--max-macs C` bounds the study to the costs of interest: stage 1 leaves out the points whose
planned cost (at the target rate) exceeds C, stage 2 matches only the points whose achieved
cost is at most C, and adds the dense cell at the width costing about C as the reference
(C = 51456 is dense GRU-128 on the watch data). Each run
lives in <root>/<config>-s<seed>/ (git-ignored: checkpoint, plots, metrics.json) with `done.json`
(its recipe), and then leaves a small self-contained result record in the tracked folder
--results (default docs/pareto/results/<config>-s<seed>.json: recipe, seed, validation and test
figures with the per-recording counts the bootstrap needs, achieved update rates, multiply-adds,
timing; no checkpoint). A run with a result record is finished, even when <root> is gone, so a
study split over sessions accumulates in the repository: commit the records. A run with
`done.json` but no record (from before records) gets its record written from metrics.json. A run
finished with another recipe is an error (use another --root/--results). `--parts i/n` runs
every n-th configuration of each stage from the i-th.

The report (export.pareto_report: pareto.csv, pareto.md, pareto.png in --out, default the parent
of --results, i.e. docs/pareto/) is built from the result records alone and scores every
record: validation and test streaming and last-step accuracy (mean and sd over seeds), a
bootstrap CI over test recordings for the test streaming accuracy (the same resampling for every
seed, then the mean over seeds), and multiply-adds per step at the achieved validation update
rate. The selection rule: for each budget (the cost of each SA-RNN configuration) and each
family, the configuration with the best mean validation streaming accuracy among those costing
at most the budget (+5%); its test figures are the result to quote. The markdown lists test
figures only for those.

Stage 2's costs are read from the stage-1 records, too. A run's time is measured on this
machine before training (a few batches and one validation pass per model size) and the whole
grid's printed; nothing is timed when nothing is left to train.
"""

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from export.data import Dataset
from export.train import TrainConfig, estimate_seconds, load_training_data, train
from sarnn_serve.accounting import GATES_PER_CELL, CellCost

FAMILIES = ("sa-rnn", "dense", "skip", "random")
POLL_SECONDS = 30.0
DONE = "done.json"
RESULTS = Path("docs/pareto/results")


@dataclass(frozen=True)
class Point:
    """One configuration of the grid, trained once per seed."""

    family: str
    cell: str
    hidden: int
    target_rate: float | None = None
    skip_every: int = 1
    random_mask: float | None = None

    @property
    def name(self) -> str:
        setting = ""
        if self.family == "sa-rnn":
            setting = f"-t{self.target_rate:g}"
        elif self.family == "skip":
            setting = f"-k{self.skip_every}"
        elif self.family == "random":
            setting = f"-p{self.random_mask:g}"
        return f"{self.family}-{self.cell}{self.hidden}{setting}"


@dataclass
class Grid:
    """What the study trains; the recipe fields pass through to every run."""

    hidden: tuple[int, ...] = (64, 128, 256, 512)
    target_rates: tuple[float, ...] = (0.1, 0.2, 0.35, 0.5)
    seeds: tuple[int, ...] = (0, 1, 2)
    cell: str = "gru"
    dataset: str = "watch"
    lam: float = TrainConfig.lam
    epochs: int = TrainConfig.epochs
    batches_per_epoch: int = TrainConfig.batches_per_epoch
    batch_size: int = TrainConfig.batch_size
    window: int = TrainConfig.window
    root: Path = Path("runs/pareto")
    results: Path = RESULTS
    max_macs: float | None = None

    def stage1(self, n_features: int) -> list[Point]:
        """The SA-RNN points, without those planned to cost more than `max_macs`."""
        points = [
            Point("sa-rnn", self.cell, h, target_rate=r)
            for h in self.hidden
            for r in self.target_rates
        ]
        return [p for p in points if self.affords(planned_cost(p, n_features))]

    def affords(self, macs: float) -> bool:
        """Whether a cost lies within the study's bound."""
        return self.max_macs is None or macs <= self.max_macs

    def train_config(self, point: Point, seed: int) -> TrainConfig:
        return TrainConfig(
            dataset=self.dataset,
            cell=point.cell,
            hidden=point.hidden,
            lam=self.lam,
            target_rate=point.target_rate,
            dense=point.family == "dense",
            skip_every=point.skip_every,
            random_mask=point.random_mask,
            epochs=self.epochs,
            batches_per_epoch=self.batches_per_epoch,
            batch_size=self.batch_size,
            window=self.window,
            seed=seed,
        )

    def run_dir(self, point: Point, seed: int) -> Path:
        return self.root / f"{point.name}-s{seed}"

    def record_path(self, point: Point, seed: int) -> Path:
        return self.results / f"{point.name}-s{seed}.json"


def parse_parts(text: str) -> tuple[int, int]:
    """Parse "i/n" into (i, n), 0 <= i < n."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--parts takes i/n, e.g. 0/2; got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--parts i/n needs 0 <= i < n, got {text!r}")
    return i, n


def _check_recipe(path: Path, stored: dict, cfg: TrainConfig) -> None:
    wanted = json.loads(json.dumps(asdict(cfg)))
    if stored != wanted:
        differ = ", ".join(sorted(k for k, v in wanted.items() if stored.get(k) != v))
        raise ValueError(
            f"{path} was trained with other settings ({differ}); use another --root/--results"
        )


def is_done(out: Path, cfg: TrainConfig, record: Path | None = None) -> bool:
    """Whether the run of `cfg` is finished: its result record `record` exists, or `out` holds
    `done.json` (then the missing record is written from metrics.json). ValueError if either
    holds another recipe."""
    if record is not None and record.is_file():
        _check_recipe(record, json.loads(record.read_text())["config"], cfg)
        return True
    marker = out / DONE
    if not marker.is_file():
        return False
    done = json.loads(marker.read_text())
    _check_recipe(out, done["config"], cfg)
    if record is not None:
        write_record(record, _metrics(out), done.get("seconds"))
    return True


def result_record(metrics: dict, seconds: float | None) -> dict:
    """What the report needs of one run, from its metrics.json: recipe, seed, validation and test
    figures (with per-recording counts), multiply-adds per step and timing; no checkpoint."""
    data = metrics["dataset"]
    return {
        "config": metrics["config"],
        "seed": metrics["config"]["seed"],
        "dataset": {
            k: data[k]
            for k in ("name", "val_recordings", "test_recordings", "val_steps", "test_steps")
        }
        | {"scored_after_steps": data["scored_after_steps"]},
        "validation": metrics["validation"],
        "test": metrics["test"],
        "macs_per_step": metrics["macs_per_step"],
        "train_seconds": metrics["train_seconds"],
        "seconds": seconds,
    }


def write_record(path: Path, metrics: dict, seconds: float | None) -> None:
    """Write a run's result record atomically (other parts may be reading the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part")
    part.write_text(json.dumps(result_record(metrics, seconds), indent=1) + "\n")
    part.replace(path)


def run_once(cfg: TrainConfig, out: Path, record: Path | None = None) -> dict:
    """Train one run, mark it done and write its result record (if `record`)."""
    started = time.perf_counter()
    metrics = train(cfg, out, progress=False)
    seconds = time.perf_counter() - started
    (out / DONE).write_text(json.dumps({"config": asdict(cfg), "seconds": seconds}, indent=2))
    if record is not None:
        write_record(record, metrics, seconds)
    return metrics


def dense_width(cell: str, n_features: int, macs: float) -> int:
    """The width h whose dense step, G h (F + h) multiply-adds, is closest to `macs`."""
    root = (math.sqrt(n_features**2 + 4 * macs / GATES_PER_CELL[cell]) - n_features) / 2
    widths = sorted({max(1, math.floor(root)), max(1, math.ceil(root))})
    return min(widths, key=lambda h: abs(_dense_step(cell, n_features, h) - macs))


def _dense_step(cell: str, n_features: int, hidden: int) -> int:
    return CellCost(cell, n_features, hidden, with_coordinator=False).dense_step


def matching(sa: Point, cost: float, n_features: int) -> list[Point]:
    """The baselines costing about `cost` multiply-adds per step, as the SA-RNN point `sa`."""
    dense = _dense_step(sa.cell, n_features, sa.hidden)
    k, mask = round(dense / cost), round(cost / dense, 3)
    found = [Point("dense", sa.cell, dense_width(sa.cell, n_features, cost))]
    found += [Point("skip", sa.cell, sa.hidden, skip_every=k)] if k >= 2 else []
    found += [Point("random", sa.cell, sa.hidden, random_mask=mask)] if 0 < mask < 1 else []
    return found


def planned_cost(sa: Point, n_features: int) -> float:
    """Multiply-adds per step of an SA-RNN point at its target update rate."""
    return CellCost(sa.cell, n_features, sa.hidden).per_step(sa.target_rate)


def baselines(grid: Grid, n_features: int, planned: bool = False) -> list[Point]:
    """Stage 2: the baselines matching the cost of every stage-1 point at its achieved
    validation update rate (mean over seeds; every run must be finished), or at its target
    rate when `planned` (for the time estimate); with `max_macs`, only for points within it,
    and the dense reference costing about `max_macs`."""
    points: list[Point] = []
    if grid.max_macs is not None:
        points.append(Point("dense", grid.cell, dense_width(grid.cell, n_features, grid.max_macs)))
    for sa in grid.stage1(n_features):
        if planned:
            cost = planned_cost(sa, n_features)
        else:
            runs = [json.loads(grid.record_path(sa, s).read_text()) for s in grid.seeds]
            cost = statistics.mean(m["macs_per_step"]["selective_val"] for m in runs)
        if grid.affords(cost):
            points += [p for p in matching(sa, cost, n_features) if p not in points]
    return points


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


Pending = tuple[TrainConfig, Path, Path]  # recipe, run directory, result record


def _pending(grid: Grid, points: list[Point]) -> list[Pending]:
    runs = [
        (grid.train_config(p, s), grid.run_dir(p, s), grid.record_path(p, s))
        for p in points
        for s in grid.seeds
    ]
    return [(cfg, out, rec) for cfg, out, rec in runs if not is_done(out, cfg, rec)]


def _train_all(runs: list[Pending], total: int, label: str) -> None:
    bar = tqdm(total=total, initial=total - len(runs), desc=label, unit="run")
    for cfg, out, record in runs:
        bar.set_postfix_str(out.name)
        metrics = run_once(cfg, out, record)
        bar.update()
        bar.set_postfix_str(f"{out.name} val {metrics['validation']['streaming_accuracy']:.3f}")
    bar.close()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _estimate(grid: Grid, data: Dataset, load: float, parts: int, mine: list[Pending]) -> None:
    """Time a few batches per model size; print the estimated time of the full grid and of this
    part's SA-RNN runs left, each run also loading the data (`load` seconds). Baselines are
    planned from the target rates; skip and random-mask runs are counted at their width's SA-RNN
    time (an upper bound for skip)."""
    seconds: dict[tuple[bool, int], float] = {}

    def timed(dense: bool, hidden: int) -> float:
        if (dense, hidden) not in seconds:
            rate = None if dense else grid.target_rates[0]
            probe = Point("dense" if dense else "sa-rnn", grid.cell, hidden, target_rate=rate)
            cfg = grid.train_config(probe, grid.seeds[0])
            seconds[dense, hidden] = load + estimate_seconds(cfg, data)
        return seconds[dense, hidden]

    for h in grid.hidden:
        print(f"  SA-RNN H={h}: about {_duration(timed(False, h))} per run")
    seeds = len(grid.seeds)
    stage1 = grid.stage1(data.n_features)
    stage2 = baselines(grid, data.n_features, planned=True)
    t1 = seeds * sum(timed(False, p.hidden) for p in stage1)
    t2 = seeds * sum(timed(p.family == "dense", p.hidden) for p in stage2)
    print(
        f"  full grid: {seeds * len(stage1)} SA-RNN runs ({_duration(t1)} of one core) and "
        f"about {seeds * len(stage2)} baseline runs ({_duration(t2)}): about "
        f"{_duration((t1 + t2) / parts)} on {parts} parallel part(s)"
    )
    left = sum(timed(False, cfg.hidden) for cfg, _, _ in mine)
    print(f"  this part: {len(mine)} SA-RNN runs left ({_duration(left)})")


def share(points: list[Point], parts: tuple[int, int]) -> list[Point]:
    """Part i of n: every n-th configuration from the i-th."""
    i, n = parts
    return points[i::n]


def run(grid: Grid, parts: tuple[int, int] = (0, 1)) -> None:
    """Train this part's share of the grid, stage 1 then stage 2, skipping finished runs."""
    started = time.perf_counter()
    probe = Point("sa-rnn", grid.cell, grid.hidden[0], target_rate=grid.target_rates[0])
    data = load_training_data(grid.train_config(probe, grid.seeds[0]))
    load = time.perf_counter() - started
    stage1 = grid.stage1(data.n_features)
    mine = _pending(grid, share(stage1, parts))
    if _pending(grid, stage1) or _pending(grid, share(baselines(grid, data.n_features), parts)):
        print("estimating from timed batches:")
        _estimate(grid, data, load, parts[1], mine)
    _train_all(mine, len(share(stage1, parts)) * len(grid.seeds), "SA-RNN runs")
    shown = 0
    while waiting := _pending(grid, stage1):
        if len(waiting) != shown:
            shown = len(waiting)
            print(f"waiting for {shown} SA-RNN runs of other parts, e.g. {waiting[0][1]}")
        time.sleep(POLL_SECONDS)
    stage2 = share(baselines(grid, data.n_features), parts)
    _train_all(_pending(grid, stage2), len(stage2) * len(grid.seeds), "baseline runs")
