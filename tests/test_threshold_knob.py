"""The threshold knob: training at thresholds drawn per row (`--threshold-range`), and the
threshold curve (update rate and validation accuracy per threshold) in metrics.json and the
model card."""

import io
import itertools
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest

pytest.importorskip("torch")

import torch

from export.cli import main
from export.data import Dataset, Recording
from export.model import gate_threshold
from export.train import CURVE_THRESHOLDS, TrainConfig, threshold_curve
from sarnn_serve.card import ModelCard
from tests.tiny_models import TINY_CLASSES, TINY_FEATURES, build_tiny_sarnn, tiny_inputs

pytestmark = pytest.mark.train  # needs the training extra


def test_training_forward_cuts_at_each_rows_threshold(sarnn_cell):
    """Training with tau [B, 1] forwards u = [a > (2 tau - 1) / alpha] row by row: the same gates
    and logits as inference at those thresholds."""
    model = build_tiny_sarnn(sarnn_cell, alpha=2.5)
    x = torch.from_numpy(tiny_inputs(6, 25))
    tau = torch.tensor([0.3, 0.45, 0.5, 0.6, 0.75, 0.9]).unsqueeze(1)
    model.train()
    out = model(x, threshold=tau)
    cut = gate_threshold(tau, model.alpha).unsqueeze(1)  # [B, 1, 1] against a [B, T, H]
    assert torch.equal(out.updates, (out.coordinator > cut).float())
    with torch.no_grad():
        ref = model(x, deterministic=True, threshold=tau)
    assert torch.equal(out.updates, ref.updates) and torch.equal(out.logits, ref.logits)
    rates = out.updates.mean((1, 2))
    assert rates[0] > rates[-1]  # a lower threshold means more updates


def test_default_training_gate_is_unchanged():
    """tau = 0.5 (default, float or per row) forwards [a > 0], as without a threshold."""
    model = build_tiny_sarnn("gru")
    model.train()
    x = torch.from_numpy(tiny_inputs(4, 20))
    out = model(x)
    assert torch.equal(out.updates, (out.coordinator > 0).float())
    per_row = model(x, threshold=torch.full((4, 1), 0.5))
    assert torch.equal(per_row.logits, out.logits)


def test_surrogate_gradient_is_centred_on_the_cut():
    """The band surrogate is nonzero only within 1 / alpha of the cut: a = 0.3 is outside the
    band around 0 but inside the one around the cut of tau = 0.8 (0.12 at alpha 5)."""
    model = build_tiny_sarnn("gru", alpha=5.0)
    model.train()
    with torch.no_grad():
        model.coord_x.weight.zero_()
        model.coord_d.zero_()
        model.coord_x.bias.fill_(0.3)
    x = torch.from_numpy(tiny_inputs(2, 10))
    grads = {}
    for tau in (0.5, 0.8):
        model.zero_grad()
        model(x, threshold=torch.full((2, 1), tau), gate_grad="band").logits.sum().backward()
        grads[tau] = model.coord_x.bias.grad.abs().sum()
    assert float(grads[0.5]) == 0.0 and float(grads[0.8]) > 0.0


def _tiny_dataset() -> Dataset:
    recs = [Recording(x=tiny_inputs(1, 40, seed=i)[0], label=i % TINY_CLASSES) for i in range(8)]
    return Dataset(
        name="tiny",
        feature_names=[f"f{i}" for i in range(TINY_FEATURES)],
        class_labels=[str(c) for c in range(TINY_CLASSES)],
        sample_rate_hz=None,
        train=recs,
        test=recs,
        val=recs,
    )


def test_update_rate_never_rises_along_the_curve():
    model = build_tiny_sarnn("lstm", hidden=16)
    curve = threshold_curve(model, _tiny_dataset(), skip_steps=5)
    assert [p["threshold"] for p in curve] == list(CURVE_THRESHOLDS)
    rates = [p["update_rate"] for p in curve]
    assert all(b <= a for a, b in itertools.pairwise(rates)), rates
    assert rates[0] > rates[-1]
    assert all(0 <= p["val_streaming_accuracy"] <= 1 for p in curve)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold_range": (0.9, 0.3)}, "0 < LO <= HI < 1"),
        ({"threshold_range": (0.0, 0.5)}, "0 < LO <= HI < 1"),
        ({"threshold_range": (0.3, 0.9), "dense": True}, "no coordinator to threshold"),
    ],
)
def test_threshold_range_is_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_threshold_range_trains_and_the_curve_reaches_the_card(tmp_path):
    run, model_dir = tmp_path / "run", tmp_path / "models" / "knob"
    argv = ["train", "--dataset", "basicmotions", "--hidden", "8", "--epochs", "1"]
    argv += ["--batches-per-epoch", "3", "--batch-size", "8", "--window", "50", "--quiet"]
    code, _, err = _cli([*argv, "--threshold-range", "0.3", "0.9", "--out", str(run)])
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["threshold_range"] == [0.3, 0.9]
    assert "--threshold-range 0.3 0.9" in metrics["recipe"]
    curve = metrics["threshold_curve"]
    assert [p["threshold"] for p in curve] == list(CURVE_THRESHOLDS)
    at_half = curve[CURVE_THRESHOLDS.index(0.5)]
    assert at_half["update_rate"] == metrics["validation"]["update_rate"]
    assert at_half["val_streaming_accuracy"] == metrics["validation"]["streaming_accuracy"]

    code, _, err = _cli(
        ["onnx", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(model_dir)]
    )
    assert code == 0, err
    card = ModelCard.model_validate_json((model_dir / "model.json").read_text())
    assert card.threshold_curve is not None
    assert [p.model_dump() for p in card.threshold_curve] == curve

    # an older card's shorter curve is measured again in place; the graph and the rest stay
    older = card.model_copy(update={"threshold_curve": card.threshold_curve[1:]})
    (model_dir / "model.json").write_text(older.model_dump_json(indent=2))
    graph = (model_dir / "model.onnx").read_bytes()
    code, out, err = _cli(["curve", "--model", str(model_dir)])
    assert code == 0, err
    assert f"threshold {CURVE_THRESHOLDS[0]:g}:" in out
    again = ModelCard.model_validate_json((model_dir / "model.json").read_text())
    assert [p.threshold for p in again.threshold_curve] == list(CURVE_THRESHOLDS)
    assert again.model_dump(exclude={"threshold_curve"}) == card.model_dump(
        exclude={"threshold_curve"}
    )
    assert (model_dir / "model.onnx").read_bytes() == graph

    # a checkpoint that does not build the card's graph is refused, the card untouched
    stamped = again.model_copy(update={"version": "0" * 12})
    (model_dir / "model.json").write_text(stamped.model_dump_json(indent=2))
    code, _, err = _cli(["curve", "--model", str(model_dir)])
    assert code != 0 and "not the card's" in err
    assert ModelCard.model_validate_json((model_dir / "model.json").read_text()) == stamped


@pytest.mark.slow
def test_target_slope_trains_and_reaches_the_recipe(tmp_path):
    argv = ["train", "--dataset", "basicmotions", "--hidden", "8", "--epochs", "1"]
    argv += ["--batches-per-epoch", "2", "--batch-size", "8", "--window", "50", "--quiet"]
    argv += ["--target-rate", "0.5", "--threshold-range", "0.1", "0.9", "--target-slope", "0.6"]
    code, _, err = _cli([*argv, "--out", str(tmp_path)])
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["budget"]["target_slope"] == 0.6
    assert "--threshold-range 0.1 0.9 --target-slope 0.6" in metrics["recipe"]
