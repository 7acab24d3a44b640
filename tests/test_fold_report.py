"""The stream study over cross-subject folds (export/fold_report.py): pooling recordings of
several folds narrows the CI, and folds that do not pair up are refused."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("export.fold_report")  # the training side: not in the runtime wheel

from export.fold_report import main, markdown, report

RECORDINGS = 14


def _fold(root: Path, subjects: list[int], accuracies: dict[str, float], seeds: int = 1) -> Path:
    """A fold whose arms score their accuracy on every recording (100 steps each), with seeded
    noise per recording, and hold out `subjects` for test."""
    for arm, accuracy in accuracies.items():
        for seed in range(seeds):
            rng = np.random.default_rng([seed, *subjects, len(arm)])
            noise = rng.normal(0, 0.05, RECORDINGS)
            correct = [int(c) for c in np.clip(np.round(100 * (accuracy + noise)), 0, 100)]
            part = {
                "streaming_accuracy": sum(correct) / (100 * RECORDINGS),
                "update_rate": 0.03,
                "idle_update_rate": 0.01,
                "active_update_rate": 0.05,
                "scored": [100] * RECORDINGS,
                "correct": correct,
            }
            metrics = {
                "config": {
                    "seed": seed,
                    "hidden": 128,
                    "cell": "gru",
                    "dense": False,
                    "random_mask": None,
                },
                "dataset": {"test_subjects": subjects},
                "validation": part,
                "test": part,
            }
            run = root / f"{arm}-s{seed}"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps(metrics))
    return root


def test_pooled_folds_narrow_the_ci_and_judge_each_rival_by_its_bar(tmp_path: Path) -> None:
    arms = {"sa": 0.85, "dense-96": 0.75, "random": 0.84}
    folds = [_fold(tmp_path / f"f{i}", [2 * i + 1, 2 * i + 2], arms) for i in range(4)]
    result = report(folds, folds[:1], "sa", ["dense-96", "random"])
    one = result["primary"]["differences"]
    four = result["all"]["differences"]
    assert result["all"]["recordings"] == 4 * RECORDINGS
    width = {
        k: d["ci95"][1] - d["ci95"][0]
        for k, d in (("one", one["random"]), ("four", four["random"]))
    }
    assert width["four"] < 0.7 * width["one"]
    assert four["dense-96"]["bar_points"] == 3.0 and four["dense-96"]["verdict"] == "met"
    assert four["random"]["verdict"] == "not met (not distinguishable)"
    assert [row["test_subjects"] for row in result["folds"]][:2] == [["1", "2"], ["3", "4"]]
    page = markdown(result, ["dense-96", "random"])
    assert "## Pooled: all folds (56 recordings)" in page


def test_seeds_of_a_fold_are_averaged_per_recording(tmp_path: Path) -> None:
    a = _fold(tmp_path / "a", [1, 2], {"sa": 0.8, "random": 0.7}, seeds=3)
    b = _fold(tmp_path / "b", [3, 4], {"sa": 0.8, "random": 0.7})
    result = report([a, b], [a, b], "sa", ["random"])
    assert result["all"]["recordings"] == 2 * RECORDINGS
    assert result["folds"][0]["seeds"] == [0, 1, 2]
    rows = [row["test_accuracy"]["sa"] - row["test_accuracy"]["random"] for row in result["folds"]]
    assert result["all"]["differences"]["random"]["difference_points"] == pytest.approx(
        np.mean(rows), abs=0.01
    )


def test_a_fold_without_a_named_arm_or_a_stray_primary_is_refused(tmp_path: Path) -> None:
    full = _fold(tmp_path / "full", [1, 2], {"sa": 0.8, "random": 0.7})
    short = _fold(tmp_path / "short", [3, 4], {"sa": 0.8})
    with pytest.raises(ValueError, match="short has no finished runs of random"):
        report([full, short], [full], "sa", ["random"])
    with pytest.raises(ValueError, match="primary folds not among --folds"):
        report([full], [short], "sa", ["random"])
    with pytest.raises(SystemExit):
        main(
            [
                "--folds",
                str(full),
                str(short),
                "--primary",
                str(full),
                "--arm",
                "sa",
                "--against",
                "random",
                "--out",
                str(tmp_path / "out"),
            ]
        )
    assert not (tmp_path / "out").exists()


def test_recordings_scored_differently_do_not_pair(tmp_path: Path) -> None:
    fold = _fold(tmp_path / "f", [1, 2], {"sa": 0.8, "random": 0.7})
    path = fold / "random-s0" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["test"]["scored"][0] = 99
    path.write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match="random was not scored on the same recordings"):
        report([fold], [fold], "sa", ["random"])
