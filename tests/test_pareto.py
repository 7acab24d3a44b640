"""The Pareto study (export.pareto, export.pareto_report): cost matching, parts, the selection
rule, the bootstrap, and a tiny grid run twice (the second trains nothing), reported, and rerun
from its result records alone once the run directories are gone."""

import contextlib
import csv
import io
import json
import math
import shutil
from dataclasses import asdict

import numpy as np
import pytest

pytest.importorskip("torch")


import export.pareto
from export.cli import main
from export.pareto import Grid, Point, dense_width, is_done, matching, parse_parts, share
from export.pareto_report import Row, bootstrap_ci, choose, point_of, target_check
from export.train import TrainConfig
from sarnn_serve.accounting import CellCost

pytestmark = pytest.mark.train  # needs the training extra


def _dense_cost(width: int) -> int:
    return CellCost("gru", 6, width, with_coordinator=False).dense_step


def test_dense_width_is_the_closest_cost():
    for macs in (500.0, 1792.0, 26462.0, 401_408.0):
        h = dense_width("gru", 6, macs)
        off = abs(_dense_cost(h) - macs)
        assert off <= min(abs(_dense_cost(h - 1) - macs), abs(_dense_cost(h + 1) - macs))
    assert dense_width("gru", 6, 51456) == 128
    assert dense_width("lstm", 6, 1.0) == 1


def test_matching_baselines_cost_what_the_sa_rnn_costs():
    sa = Point("sa-rnn", "gru", 64, target_rate=0.1)
    cost = CellCost("gru", 6, 64).per_step(0.1)  # 448 + 1344
    dense, skip, rand = matching(sa, cost, 6)
    assert dense == Point("dense", "gru", dense_width("gru", 6, cost))
    assert skip == Point("skip", "gru", 64, skip_every=round(13440 / cost))
    assert rand == Point("random", "gru", 64, random_mask=round(cost / 13440, 3))
    assert skip.name == "skip-gru64-k8" and rand.name == "random-gru64-p0.133"
    # Nearly dense: no skip (k = 1) and no mask (p = 1).
    assert [p.family for p in matching(sa, 13440.0, 6)] == ["dense"]


def test_max_macs_bounds_both_stages():
    grid = Grid(hidden=(64, 512), target_rates=(0.1, 0.5), max_macs=51456)
    costs = {p.name: CellCost("gru", 6, p.hidden).per_step(p.target_rate) for p in grid.stage1(6)}
    assert sorted(costs) == ["sa-rnn-gru64-t0.1", "sa-rnn-gru64-t0.5"]
    planned = export.pareto.baselines(grid, 6, planned=True)
    assert planned[0] == Point("dense", "gru", 128)  # the reference: dense GRU-128
    assert {p.hidden for p in planned if p.family != "dense"} == {64}
    unbounded = Grid(hidden=(64, 512), target_rates=(0.1, 0.5))
    assert len(unbounded.stage1(6)) == 4
    assert Point("dense", "gru", 128) not in export.pareto.baselines(unbounded, 6, planned=True)


def test_points_round_trip_through_a_run_config():
    grid = Grid(cell="lstm")
    for point in (
        Point("sa-rnn", "lstm", 32, target_rate=0.35),
        Point("dense", "lstm", 20),
        Point("skip", "lstm", 32, skip_every=3),
        Point("random", "lstm", 32, random_mask=0.27),
    ):
        cfg = grid.train_config(point, seed=2)
        assert point_of(vars(cfg)) == point
        assert grid.run_dir(point, 2).name == f"{point.name}-s2"
        assert cfg.baseline == (None if point.family == "sa-rnn" else point.family)


def test_parts():
    points = [Point("sa-rnn", "gru", h, target_rate=0.2) for h in range(5)]
    assert parse_parts("1/2") == (1, 2)
    assert share(points, (0, 2)) + share(points, (1, 2)) == points[0::2] + points[1::2]
    assert sorted(p.hidden for n in range(3) for p in share(points, (n, 3))) == list(range(5))
    for bad in ("2/2", "a/b", "1", "-1/2"):
        with pytest.raises(ValueError, match="--parts"):
            parse_parts(bad)


def test_bootstrap_ci():
    scored = np.full(20, 100.0)
    same = np.full((3, 20), 70.0)
    assert bootstrap_ci(same, scored) == pytest.approx((0.7, 0.7))
    rng = np.random.default_rng(0)
    spread = rng.integers(0, 101, (3, 20)).astype(float)
    low, high = bootstrap_ci(spread, scored)
    mean = spread.sum(1).mean() / scored.sum()
    assert low < mean < high and high - low > 0.05


def _row(config: str, family: str, macs: float, val: float, test: float) -> Row:
    nan = math.nan
    return Row(
        config=config,
        family=family,
        cell="gru",
        hidden=8,
        schedule="",
        seeds=3,
        val_update_rate=0.5,
        macs_per_step=macs,
        val_streaming_mean=val,
        val_streaming_sd=nan,
        val_last_step_mean=val,
        val_last_step_sd=nan,
        test_streaming_mean=test,
        test_streaming_sd=nan,
        test_streaming_ci_low=test,
        test_streaming_ci_high=test,
        test_last_step_mean=test,
        test_last_step_sd=nan,
        test_correct=[[round(1000 * test)] * 28] * 3,  # 3 seeds, 28 recordings of 1000 steps
        test_scored=[1000] * 28,
    )


def test_selection_uses_validation_and_the_budget():
    rows = [
        _row("sa-a", "sa-rnn", 1000, 0.80, 0.70),
        _row("sa-b", "sa-rnn", 2000, 0.85, 0.90),
        _row("dense-a", "dense", 1040, 0.70, 0.99),  # within 5% of 1000
        _row("dense-b", "dense", 1100, 0.90, 0.50),  # over 1000 + 5%
        _row("skip-a", "skip", 900, 0.60, 0.60),
    ]
    picked = {(budget, r.family): r.config for budget, r in choose(rows)}
    assert picked == {
        (1000, "sa-rnn"): "sa-a",
        (1000, "dense"): "dense-a",
        (1000, "skip"): "skip-a",
        (2000, "sa-rnn"): "sa-b",
        (2000, "dense"): "dense-b",  # best on validation, though worse on test
        (2000, "skip"): "skip-a",
    }


def test_target_check_compares_test_figures_of_validation_choices():
    rows = [
        _row("dense-gru128", "dense", 1000, 0.80, 0.80),
        _row("sa-half", "sa-rnn", 520, 0.85, 0.84),  # within half + 5%
        _row("sa-dear", "sa-rnn", 600, 0.99, 0.99),  # over the budget
        _row("dense-mid", "dense", 700, 0.83, 0.82),
        _row("dense-cheap", "dense", 400, 0.90, 0.95),  # cheaper: not a rival
        _row("skip-half", "skip", 500, 0.70, 0.83),
    ]
    lines = target_check(rows)
    assert "Chosen on validation: sa-half at 520" in lines[0]
    assert lines[-1].startswith("Target met:")
    assert [line.split(" |")[0] for line in lines[4:-2]] == ["| dense-mid", "| skip-half"]
    assert "+2.0 [+2.0, +2.0] | met" in lines[4]
    rows.append(_row("random-half", "random", 510, 0.60, 0.845))
    assert target_check(rows)[-1].startswith("Target not met:")
    assert "| not met (worse) |" in target_check(rows)[-3]
    assert "not trained yet" in target_check(rows[1:])[0]


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_tiny_grid_runs_resumes_and_reports(tmp_path, monkeypatch):
    root, docs = tmp_path / "pareto", tmp_path / "docs"
    results = docs / "results"
    argv = ["pareto", "--dataset", "basicmotions", "--hidden", "8", "--target-rates", "0.3"]
    argv += ["--seeds", "0", "1", "--epochs", "1", "--batches-per-epoch", "2"]
    argv += ["--batch-size", "8", "--window", "50", "--results", str(results)]
    argv += ["--root", str(root)]
    code, out, err = _cli(argv)
    assert code == 0, err
    assert "estimating from timed batches" in out and "full grid: 2 SA-RNN runs" in out
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    families = sorted({d.split("-gru")[0] for d in dirs})
    assert families == ["dense", "random", "sa-rnn", "skip"]
    assert len(dirs) == 8 and all((root / d / "done.json").is_file() for d in dirs)
    assert sorted(p.stem for p in results.glob("*.json")) == dirs  # one record per run
    record = json.loads((results / "sa-rnn-gru8-t0.3-s1.json").read_text())
    assert record["seed"] == 1 and record["config"]["hidden"] == 8
    assert len(record["test"]["correct"]) == record["dataset"]["test_recordings"]
    assert {"selective_val", "dense"} <= set(record["macs_per_step"]) and record["seconds"] > 0
    with (docs / "pareto.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["seeds"] for r in rows} == {"2"}
    for r in rows:
        assert float(r["test_streaming_ci_low"]) <= float(r["test_streaming_ci_high"])
    macs = {r["family"]: float(r["macs_per_step"]) for r in rows}
    for family in ("dense", "skip", "random"):  # matched to the SA-RNN's cost
        assert macs[family] == pytest.approx(macs["sa-rnn"], rel=0.3), family
    md, table = (docs / "pareto.md").read_text(), (docs / "pareto.csv").read_text()
    assert "## Chosen on validation, tested once" in md and "sa-rnn-gru8-t0.3" in md
    assert (docs / "pareto.png").stat().st_size > 0

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(export.pareto, "train", no_training)
    monkeypatch.setattr(export.pareto, "estimate_seconds", no_training)
    (docs / "pareto.md").unlink()
    code, out, err = _cli(argv)
    assert code == 0, err
    assert "estimating" not in out
    assert (docs / "pareto.md").read_text() == md

    # A new session: the run directories are gone, the tracked records are not.
    shutil.rmtree(root)
    (docs / "pareto.md").unlink()
    code, out, err = _cli(argv)
    assert code == 0, err
    assert "estimating" not in out and not root.exists()
    assert (docs / "pareto.md").read_text() == md and (docs / "pareto.csv").read_text() == table

    code, out, _ = _cli(
        ["pareto", "--report-only", "--results", str(results), "--out", str(tmp_path)]
    )
    assert code == 0 and (tmp_path / "pareto.md").read_text() == md

    # Another recipe in the same root is refused, not mixed in.
    code, _, err = _cli([*argv[:-2], "--lam", "9", "--root", str(root)])
    assert code != 0 and "other settings (lam)" in err


def test_is_done_needs_the_marker(tmp_path):
    cfg = TrainConfig(hidden=8)
    assert not is_done(tmp_path, cfg)
    (tmp_path / "metrics.json").write_text("{}")  # a run that stopped before its marker
    assert not is_done(tmp_path, cfg)
    record = tmp_path / "records" / "run.json"
    assert not is_done(tmp_path, cfg, record)
    record.parent.mkdir()
    record.write_text(json.dumps({"config": asdict(cfg)}))
    assert is_done(tmp_path / "gone", cfg, record)  # the record alone is enough
    with pytest.raises(ValueError, match="other settings"):
        is_done(tmp_path / "gone", TrainConfig(hidden=9), record)


def test_seed_spread_of_result_records(tmp_path):
    from export.onnx_export import seed_spread

    def record(seed: int, val: float, test: float, lam: float = 2.5) -> dict:
        figures = {"streaming_accuracy": 0, "last_step_accuracy": 0.5, "update_rate": 0.4}
        return {
            "config": {"hidden": 8, "lam": lam, "seed": seed},
            "seed": seed,
            "validation": figures | {"streaming_accuracy": val},
            "test": figures | {"streaming_accuracy": test},
            "macs_per_step": {"selective_val": 100.0 * (seed + 1)},
        }

    paths = []
    for seed, val, test in ((0, 0.8, 0.7), (1, 0.9, 0.9)):
        paths.append(tmp_path / f"s{seed}.json")
        paths[-1].write_text(json.dumps(record(seed, val, test)))
    spread = seed_spread(paths)
    assert spread.seeds == [0, 1] and spread.macs_per_step_mean == 150.0
    assert spread.validation.streaming_accuracy_mean == pytest.approx(0.85)
    assert spread.test.streaming_accuracy_sd == pytest.approx(math.sqrt(0.02))
    assert spread.test.last_step_accuracy_sd == 0.0
    (tmp_path / "other.json").write_text(json.dumps(record(2, 0.5, 0.5, lam=9.0)))
    with pytest.raises(ValueError, match="different recipes"):
        seed_spread([*paths, tmp_path / "other.json"])
    newer = record(3, 0.6, 0.6)
    newer["config"]["fixed_rate"] = None  # a setting added later, at its default
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    assert seed_spread([*paths, tmp_path / "newer.json"]).seeds == [0, 1, 3]
