"""The stream study's report (export/stream_report.py): paired bootstrap over recordings and
seeds, choices on validation, and verdicts that say "met" only past the bar."""

import fcntl
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("export.stream_report")  # the training side: not in the runtime wheel

from export.paired import verdict
from export.stream_report import markdown, report
from export.stream_study import arm_flags, run_one, split_flags

RECORDINGS = 28


def _run(root: Path, arm: str, seed: int, accuracy: float, hidden: int = 128, **cfg) -> None:
    """A finished run whose recordings all score `accuracy` (val and test), 100 steps each,
    with a little seeded noise per recording."""
    rng = np.random.default_rng(seed + 100 * hidden)
    scored = [100] * RECORDINGS

    def part() -> dict:
        correct = np.clip(np.round(100 * (accuracy + rng.normal(0, 0.02, RECORDINGS))), 0, 100)
        return {
            "streaming_accuracy": float(correct.sum() / (100 * RECORDINGS)),
            "update_rate": cfg.get("rate", 1.0),
            "idle_update_rate": cfg.get("idle", cfg.get("rate", 1.0)),
            "active_update_rate": cfg.get("active", cfg.get("rate", 1.0)),
            "scored": scored,
            "correct": [int(c) for c in correct],
        }

    config = {
        "seed": seed,
        "hidden": hidden,
        "cell": "gru",
        "dense": arm.startswith("dense"),
        "random_mask": cfg.get("rate") if arm.startswith("random") else None,
        "coord_energy": arm.startswith("sa"),
        "coord_accumulate": arm in ("sa-accumulate", "periodic"),
        "fixed_rate": cfg.get("rate") if arm.startswith("periodic") else None,
    } | cfg.get("extra", {})
    out = root / f"{arm}-s{seed}"
    out.mkdir(parents=True)
    metrics = {"config": config, "validation": part(), "test": part()}
    (out / "metrics.json").write_text(json.dumps(metrics))


def test_verdicts_say_met_only_past_the_bar() -> None:
    assert verdict(3.5, 9.0, 3.0) == "met"
    assert verdict(1.0, 9.0, 3.0).startswith("not met (better")
    assert verdict(-2.0, 4.0, 0.0) == "not met (not distinguishable)"
    assert verdict(-9.0, -1.0, 0.0) == "not met (worse)"


def test_a_clear_win_is_met_and_a_tie_is_not(tmp_path: Path) -> None:
    for seed in range(3):
        _run(tmp_path, "sa-energy", seed, 0.90, rate=0.2, idle=0.05, active=0.35)
        _run(tmp_path, "dense-62", seed, 0.80, hidden=62)
        _run(tmp_path, "random", seed, 0.895, rate=0.2)
    result = report(tmp_path)
    targets = result["targets"]
    assert result["chosen_on_validation"]["best_dense"] == "dense-62"
    dense = targets["sa-energy - dense-62"]
    assert dense["verdict"] == "met" and dense["ci95"][0] > 3
    assert targets["sa-energy - random"]["verdict"] == "not met (not distinguishable)"
    assert targets["idle rate <= active / 3"]["verdict"] == "met"
    assert targets["macs <= 25% of dense GRU-128"]["verdict"] == "met"


def test_the_report_says_how_long_the_rest_was_and_whether_runs_were_rescored(
    tmp_path: Path,
) -> None:
    _run(tmp_path / "trained", "sa-energy", 0, 0.9, rate=0.05)
    assert "Idle periods log-uniform in 5-90 s." in markdown(report(tmp_path / "trained"))
    assert "scored again" not in markdown(report(tmp_path / "trained"))
    rescored = {"idle_min_s": 30.0, "idle_max_s": 300.0, "rescored_from": "x/checkpoint.pt"}
    _run(tmp_path / "long", "sa-energy", 0, 0.9, rate=0.05, extra=rescored)
    text = markdown(report(tmp_path / "long"))
    assert "Idle periods log-uniform in 30-300 s. The runs were trained" in text
    assert "scored again on these" in text


def test_a_cheaper_dense_model_is_compared_only_when_none_costs_as_much(tmp_path: Path) -> None:
    _run(tmp_path, "sa-energy", 0, 0.7, rate=0.5)
    _run(tmp_path, "dense-62", 0, 0.9, hidden=62)
    result = report(tmp_path)
    chosen = result["chosen_on_validation"]
    assert chosen["best_dense"] == "dense-62" and chosen["best_dense_cheaper"]
    assert result["targets"]["sa-energy - dense-62"]["verdict"] == "not met (worse)"
    arms = result["arms"]
    assert arms["dense-62"]["macs_per_step"] < arms["sa-energy"]["macs_per_step"]


def test_rivals_are_the_sa_rnn_chosen_on_validation_and_masks_nearest_its_rate(
    tmp_path: Path,
) -> None:
    for seed in range(2):
        _run(tmp_path, "sa-energy", seed, 0.70, rate=0.05, idle=0.01, active=0.1)
        _run(tmp_path, "sa-accumulate", seed, 0.85, rate=0.04, idle=0.01, active=0.08)
        _run(tmp_path, "random", seed, 0.75, rate=0.045)
        _run(tmp_path, "random-053", seed, 0.90, rate=0.053)
        _run(tmp_path, "periodic", seed, 0.80, rate=0.045)
    result = report(tmp_path)
    chosen = result["chosen_on_validation"]
    assert chosen["sa_rnn"] == "sa-accumulate"
    assert (chosen["random"], chosen["periodic"]) == ("random", "periodic")
    targets = result["targets"]
    assert targets["sa-accumulate - random"]["verdict"] == "met"
    assert targets["sa-accumulate - periodic"]["against"] == "periodic"
    assert "sa-accumulate - random-053" not in targets


def test_the_sweep_table_reads_validation_unless_asked_for_test() -> None:
    from export.sweep import table

    run = {
        "config": {"cell": "gru", "hidden": 8, "dense": False, "lam": 2.0, "seed": 0},
        "validation": {"streaming_accuracy": 0.8, "last_step_accuracy": 0.8, "update_rate": 0.3},
        "test": {"streaming_accuracy": 0.6, "last_step_accuracy": 0.6, "update_rate": 0.3},
        "macs_per_step": {"dense": 100, "selective": 50},
    }
    assert "validation streaming" in table([run]) and "| 80.0 |" in table([run])
    assert "| 60.0 |" in table([run], "test")


def test_a_run_another_driver_holds_is_left_to_it(tmp_path: Path) -> None:
    with (tmp_path / "sa-accumulate-s0.log").open("a") as log:
        log.write("epoch lines of the other driver\n")
        log.flush()
        fcntl.flock(log, fcntl.LOCK_EX)
        line = run_one(tmp_path, "sa-accumulate", 0, ["--no-such-flag"])
    assert line == "sa-accumulate-s0: being trained by another driver"
    assert (tmp_path / "sa-accumulate-s0.log").read_text().startswith("epoch lines")


def test_the_knob_arm_is_the_motion_arm_trained_over_the_threshold_range() -> None:
    motion = arm_flags("sa-motion-energy", 4, 0.1, 10)
    knob = arm_flags("sa-knob", 4, 0.1, 10)
    assert knob[: len(motion)] == motion
    assert knob[len(motion) :] == ["--threshold-range", "0.05", "0.95"]


def test_hidden_widens_the_selective_arms_and_the_masks_but_not_the_dense_ones() -> None:
    def width(arm: str) -> str:
        flags = arm_flags(arm, 4, 0.1, 10, hidden=256)
        return flags[flags.index("--hidden") + 1]

    assert [width(arm) for arm in ("sa-motion-energy", "random", "periodic")] == ["256"] * 3
    assert width("dense-96") == "96"


def test_a_fold_holds_out_the_subjects_it_names() -> None:
    assert split_flags("3,4", "1,2") == ["--val-groups", "3,4", "--test-groups", "1,2"]
    assert split_flags(None, None) == []
