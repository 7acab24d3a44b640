"""Dense models skipping at evaluation (export/eval_skipping.py) and how the stream report
counts and places them: the still gate's cut, skip's period, the cost of each gating, and an
evaluated arm listed but never chosen as a rival."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export import eval_skipping  # noqa: E402
from export.data import Recording  # noqa: E402
from export.model import SARNN, save_checkpoint  # noqa: E402
from export.stream_report import load_arms, markdown, report  # noqa: E402
from export.train import TrainConfig  # noqa: E402
from tests.tiny_models import wrist_recordings  # noqa: E402

pytestmark = pytest.mark.train
RATE = 50.0
NAMES = ["ax", "ay", "az", "wx", "wy", "wz"]
HIDDEN = 8
RECORDINGS = 28


def _recordings() -> list[Recording]:
    return wrist_recordings(15, rate=RATE)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study root with two seeds of a tiny trained-so-far dense arm `dense-8`, gated at
    evaluation at rate 0.2 by the command (every gating, both parts)."""
    root = tmp_path_factory.mktemp("study")
    data = root / "data"
    data.mkdir()
    for i, rec in enumerate(_recordings()):
        rows = [",".join(f"{v:.5f}" for v in row) + f",c{rec.label}" for row in rec.x]
        (data / f"r{i:02d}.csv").write_text("\n".join([",".join([*NAMES, "label"]), *rows]))
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = TrainConfig(
            data=str(data), sample_rate=RATE, streams="rest", dense=True, hidden=HIDDEN, seed=seed
        )
        model = SARNN(cfg.model_config(6, 3))
        out = root / f"dense-8-s{seed}"
        out.mkdir()
        extra = {"train_config": asdict(cfg), "feature_names": NAMES}
        save_checkpoint(model, str(out / "checkpoint.pt"), extra)
    assert eval_skipping.main(["--root", str(root), "--from", "dense-8", "--rate", "0.2"]) == 0
    return root


def _metrics(root: Path, gating: str, seed: int = 0) -> dict:
    return json.loads((root / f"dense-8-{gating}-eval-s{seed}" / "metrics.json").read_text())


def test_the_still_cut_gives_the_asked_rate_on_validation(study: Path) -> None:
    run = _metrics(study, "still")
    cfg = run["config"]
    assert cfg["eval_gating"] == "still" and cfg["eval_from"] == "dense-8"
    assert cfg["still_features"] == ["wx", "wy", "wz"] and cfg["still_cut"] > 0
    steps = run["validation"]["steps"]
    assert run["validation"]["update_rate"] == pytest.approx(0.2, abs=2 / steps)
    # a gate that opens on motion: far more updates on active steps than on idle ones
    val = run["validation"]
    assert val["idle_update_rate"] < 0.5 * val["active_update_rate"]
    # the same cut on test (not re-chosen there)
    assert _metrics(study, "still", 1)["config"]["still_cut"] == pytest.approx(cfg["still_cut"])


def test_skip_updates_every_kth_step() -> None:
    assert eval_skipping.skip_every(0.053) == 19
    assert eval_skipping.skip_every(0.25) == 4
    assert eval_skipping.skip_every(0.7) == 2  # never every step: that is the dense model
    with pytest.raises(ValueError, match="between 0 and 1"):
        eval_skipping.skip_every(1.0)


def test_each_gating_runs_at_the_asked_rate(study: Path) -> None:
    skip, random = _metrics(study, "skip"), _metrics(study, "random")
    assert skip["config"]["skip_every"] == 5 and skip["config"]["random_mask"] is None
    assert random["config"]["random_mask"] == 0.2 and not random["config"]["dense"]
    for run in (skip, random):
        for part in ("validation", "test"):
            assert run[part]["update_rate"] == pytest.approx(0.2, abs=0.02)
            assert len(run[part]["scored"]) == len(run[part]["correct"]) > 0


def test_validation_alone_writes_no_run(study: Path, tmp_path: Path) -> None:
    (tmp_path / "dense-8-s0").symlink_to(study / "dense-8-s0")
    args = ["--root", str(tmp_path), "--from", "dense-8", "--rate", "0.2", "--parts", "val"]
    assert eval_skipping.main([*args, "--gatings", "skip"]) == 0
    assert not list(tmp_path.glob("*-eval-s*"))


def _run(root: Path, arm: str, accuracy: float, hidden: int, rate: float, **config) -> None:
    """A finished run (val and test) scoring `accuracy` on every recording of 100 steps."""
    rng = np.random.default_rng(hidden)
    part = lambda: {  # noqa: E731
        "update_rate": rate,
        "idle_update_rate": rate,
        "active_update_rate": rate,
        "scored": [100] * RECORDINGS,
        "correct": [int(c) for c in np.clip(100 * accuracy + rng.normal(0, 2, RECORDINGS), 0, 100)],
    }
    base = {"seed": 0, "hidden": hidden, "cell": "gru", "dense": False, "random_mask": None}
    out = root / f"{arm}-s0"
    out.mkdir(parents=True)
    run = {"config": base | config, "validation": part(), "test": part()}
    (out / "metrics.json").write_text(json.dumps(run))


def _evaluated(gating: str, rate: float) -> dict:
    return {
        "eval_gating": gating,
        "eval_from": "dense-96",
        "random_mask": rate if gating == "random" else None,
        "eval_gate_macs": 3 if gating == "still" else 0,
    }


def test_an_evaluated_arm_is_listed_but_never_a_rival(tmp_path: Path) -> None:
    _run(tmp_path, "sa-energy", 0.8, 128, 0.2, coord_energy=True)
    _run(tmp_path, "dense-62", 0.7, 62, 1.0, dense=True)
    # dearer than the SA-RNN and the best on validation: it would win the dense pick
    _run(tmp_path, "dense-128-random-eval", 0.95, 128, 0.5, **_evaluated("random", 0.5))
    result = report(tmp_path)
    assert result["chosen_on_validation"]["best_dense"] == "dense-62"
    assert "dense-128-random-eval" not in result["chosen_on_validation"]["dense_candidates"]
    assert not any("eval" in name for name in result["targets"])
    assert "dense-128-random-eval" in result["arms"]
    against = result["against_evaluated"]["sa-energy - dense-128-random-eval"]
    assert against["gating"] == "random" and against["reading"] == "SA-RNN worse"
    text = markdown(result)
    assert "| dense-128-random-eval |" in text
    section = text.index("Against dense models skipping at evaluation (informational, not a")
    assert section > text.index("## Targets")
    assert "sa-energy - dense-128-random-eval" in text[section:]


def test_costs_of_evaluated_arms(tmp_path: Path) -> None:
    rate = 0.053
    _run(tmp_path, "dense-96", 0.8, 96, 1.0, dense=True)
    for gating in eval_skipping.GATINGS:
        _run(tmp_path, f"dense-96-{gating}-eval", 0.7, 96, rate, **_evaluated(gating, rate))
    arms = load_arms(tmp_path)
    dense_step, head = 96 * 3 * (6 + 96), 96 * 7
    assert arms["dense-96"].macs() == dense_step + head
    assert arms["dense-96-random-eval"].macs() == pytest.approx(rate * dense_step + head)
    assert arms["dense-96-skip-eval"].macs() == pytest.approx(rate * dense_step + head)
    assert arms["dense-96-still-eval"].macs() == pytest.approx(rate * dense_step + 3 + head)


def test_the_command_records_the_still_gates_cost(study: Path) -> None:
    run = _metrics(study, "still")
    dense_step = HIDDEN * 3 * (6 + HIDDEN)
    assert run["config"]["eval_gate_macs"] == 3
    expected = run["validation"]["update_rate"] * dense_step + 3
    assert run["macs_per_step"]["selective_val"] == pytest.approx(expected)
    assert _metrics(study, "skip")["macs_per_step"]["dense"] == dense_step
