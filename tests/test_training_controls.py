"""Training controls (export.model, export.train): the slope schedule reaching 5, the two budget
forms, the penalty toward a target update rate and the calibrated start, the smooth gate
gradient, the guard against non-finite steps, and the validation split of every dataset."""

import itertools
import json

import numpy as np
import pytest

pytest.importorskip("torch")

import torch

from export.data import stratified_holdout
from export.model import ALPHA_END, budget_loss, slope
from export.train import TrainConfig, calibrate_gates, optimiser_step, train
from tests.tiny_models import build_tiny_sarnn, tiny_inputs

pytestmark = pytest.mark.train  # needs the training extra

# --- slope ---------------------------------------------------------------------------------


def test_slope_goes_from_1_to_5_over_the_run():
    total = 60
    alphas = [slope(step / (total - 1)) for step in range(total)]
    assert alphas[0] == 1.0 and alphas[-1] == ALPHA_END == 5.0
    assert all(b > a for a, b in itertools.pairwise(alphas))
    assert slope(1.5) == 5.0 and slope(-1.0) == 1.0


def test_a_lower_final_slope_ends_there_and_is_in_the_recipe():
    assert slope(1.0, 2.0) == 2.0 and slope(0.5, 2.0) == 1.5
    cfg = TrainConfig(final_slope=2.0)
    assert "--final-slope 2" in cfg.recipe("x")
    assert "--final-slope" not in TrainConfig().recipe("x")
    with pytest.raises(ValueError, match="final_slope"):
        TrainConfig(final_slope=0.5)


# --- budget forms and the target -----------------------------------------------------------


def test_budget_forms():
    u = (torch.rand(4, 30, 8, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    mean = budget_loss(u, 2.0, "mean")
    total = budget_loss(u, 2.0, "sum")
    assert float(mean) == pytest.approx(2.0 * float(u.mean()))
    # The reference: the sum over time, the mean over batch and neurons; T times "mean".
    assert float(total) == pytest.approx(2.0 * float(u.sum(1).mean()), rel=1e-6)
    assert float(total) == pytest.approx(30 * float(mean), rel=1e-6)
    with pytest.raises(ValueError, match="unknown budget form 'max'"):
        budget_loss(u, 1.0, "max")


@pytest.mark.parametrize("form", ["mean", "sum"])
def test_target_penalty_pushes_the_rate_toward_the_target(form):
    """d loss / d u: positive (shut gates) above the target, negative (open them) below."""
    u = torch.full((2, 10, 4), 0.5, requires_grad=True)
    for target, sign in ((0.3, 1.0), (0.7, -1.0)):
        u.grad = None
        loss = budget_loss(u, 1.5, form, target)
        loss.backward()
        scale = 10 if form == "sum" else 1
        assert float(loss.detach()) == pytest.approx(1.5 * scale * 0.2)
        assert bool((torch.sign(u.grad) == sign).all()), target


def test_a_target_per_row_is_met_row_by_row():
    """Row 0 above its target is pushed shut, row 1 below its target pushed open; the batch
    mean alone (0.5, on target) would push neither."""
    u = torch.cat([torch.full((1, 10, 4), 0.7), torch.full((1, 10, 4), 0.3)]).requires_grad_()
    loss = budget_loss(u, 2.0, "mean", torch.tensor([0.5, 0.5]))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(2.0 * 0.2)
    assert bool((u.grad[0] > 0).all()) and bool((u.grad[1] < 0).all())
    assert float(budget_loss(u.detach(), 2.0, "mean", 0.5)) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_slope": 0.5, "target_rate": 0.5},
        {"target_slope": 0.5, "threshold_range": (0.1, 0.9)},
    ],
)
def test_target_slope_needs_a_target_and_a_threshold_range(kwargs):
    with pytest.raises(ValueError, match="target_slope needs target_rate and threshold_range"):
        TrainConfig(**kwargs)


def test_target_penalty_moves_the_coordinator_bias_the_right_way():
    """One step of gradient descent on the penalty alone lowers the coordinator biases of a
    model above its target rate and raises them below it."""
    model = build_tiny_sarnn("gru", alpha=2.0)
    model.train()
    x = torch.from_numpy(tiny_inputs(8, 20))
    rate = float(model(x).updates.detach().mean())
    assert 0.2 < rate < 0.8
    for target, direction in ((rate - 0.15, -1.0), (rate + 0.15, 1.0)):
        model.zero_grad()
        budget_loss(model(x).updates, 1.0, "mean", target).backward()
        assert float(-model.coord_x.bias.grad.sum()) * direction > 0, target


def test_calibrated_gates_open_at_the_target_rate():
    model = build_tiny_sarnn("lstm", hidden=32)
    with torch.no_grad():
        model.coord_d.zero_()  # as at initialisation
    x = tiny_inputs(16, 50, seed=3)
    for target in (0.1, 0.3, 0.75):
        calibrate_gates(model, x, target)
        with torch.no_grad():
            per_neuron = model(torch.from_numpy(x), deterministic=True).updates.mean((0, 1))
        assert np.allclose(per_neuron.numpy(), target, atol=2 / (16 * 50)), target


# --- the gate gradient ---------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 5.0])
def test_smooth_gate_gradient_reaches_neurons_outside_the_band(alpha):
    """With every |a| >= 1 / alpha (outside the hard sigmoid's band) the band surrogate gives the
    coordinator no gradient; the smooth one does. Both forward exactly [a > 0]."""
    model = build_tiny_sarnn("gru", alpha=alpha)
    model.train()
    with torch.no_grad():
        model.coord_x.weight.zero_()
        model.coord_d.zero_()
        signs = torch.tensor([1.0, -1.0]).repeat(model.config.hidden // 2)
        model.coord_x.bias.copy_(signs * 1.5 / alpha)
    x = torch.from_numpy(tiny_inputs(3, 12))
    with torch.no_grad():
        hard = model(x, deterministic=True)
    grads = {}
    for gate_grad in ("band", "smooth"):
        model.zero_grad()
        out = model(x, gate_grad=gate_grad)
        assert torch.equal(out.updates, hard.updates) and torch.equal(out.logits, hard.logits)
        out.logits.square().sum().backward()
        grads[gate_grad] = model.coord_x.bias.grad.clone()
    assert bool((grads["band"] == 0).all())
    assert bool((grads["smooth"] != 0).all())
    with pytest.raises(ValueError, match="unknown gate_grad"):
        model(x, gate_grad="hard")


# --- non-finite steps ------------------------------------------------------------------------


def test_non_finite_loss_or_gradient_skips_the_step():
    model = build_tiny_sarnn("rnn")
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.from_numpy(tiny_inputs(2, 5))
    assert not optimiser_step(model, opt, model(x).logits.sum() * float("nan"))
    assert not optimiser_step(model, opt, model(x).logits.sum() * float("inf"))
    # A finite loss (0) whose gradient is infinite: d sqrt(b - b0) / db at b = b0.
    bias = model.head.bias
    assert not optimiser_step(model, opt, torch.sqrt(bias - bias.detach()).sum())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert optimiser_step(model, opt, model(x).logits.square().mean())
    assert not torch.equal(model.head.bias, before["head.bias"])


# --- configuration and splits ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget": "max"}, "unknown budget"),
        ({"gate_grad": "hard"}, "unknown gate_grad"),
        ({"target_rate": 1.2}, "between 0 and 1"),
        ({"target_rate": 0.3, "dense": True}, "dense baseline"),
        ({"epochs": 0}, "epochs must be at least 1"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_recipe_names_the_data_and_the_controls():
    cfg = TrainConfig(data="/d/my recs", group_column="subject", val_groups=("a", "b"))
    recipe = cfg.recipe("runs/x")
    assert cfg.dataset is None and "--dataset" not in recipe
    assert "--data '/d/my recs'" in recipe and "--val-groups a,b" in recipe
    assert "--budget mean --gate-grad smooth" in recipe and "--target-rate" not in recipe
    assert "--target-rate 0.3" in TrainConfig(target_rate=0.3).recipe("x")


def test_stratified_holdout_keeps_every_class_in_both_parts():
    labels = [0] * 10 + [1] * 10 + [2] * 5
    kept, held = stratified_holdout(labels, 0.2, seed=1)
    assert sorted(kept + held) == list(range(25))
    assert sorted(labels[i] for i in held) == [0, 0, 1, 1, 2]
    assert stratified_holdout(labels, 0.2, seed=1) == (kept, held)
    assert stratified_holdout(labels, 0.2, seed=2) != (kept, held)
    with pytest.raises(ValueError, match="none would be left"):
        stratified_holdout([0, 1], 0.5, seed=0)


# --- short runs --------------------------------------------------------------------------------


@pytest.mark.slow
def test_target_rate_is_reached_on_validation(tmp_path):
    """The watch data, 60 steps: the update rate on the validation subjects lands near 0.3."""
    cfg = TrainConfig(
        hidden=32, epochs=6, batches_per_epoch=10, window=64, target_rate=0.3, threads=1
    )
    metrics = train(cfg, tmp_path, progress=False)
    assert metrics["validation"]["update_rate"] == pytest.approx(0.3, abs=0.03)
    assert metrics["budget"]["val_update_rate"] == metrics["validation"]["update_rate"]
    assert metrics["alpha"] == 5.0 and metrics["history"][-1]["alpha"] == 5.0
    assert metrics["dataset"]["val_subjects"] == [7, 8]
    assert metrics["dataset"]["test_subjects"] == [9, 10]
    assert metrics["dataset"]["train_subjects"] == [1, 2, 3, 4, 5, 6]
    assert {"val_streaming_accuracy", "val_update_rate"} <= set(metrics["history"][0])
    assert not any(k.startswith("test_") for k in metrics["history"][0])


@pytest.mark.slow
def test_sum_budget_band_gradient_and_final_slope_train(tmp_path):
    cfg = TrainConfig(
        dataset="basicmotions",
        hidden=8,
        epochs=2,
        batches_per_epoch=3,
        batch_size=8,
        window=50,
        budget="sum",
        lam=0.05,
        gate_grad="band",
        final_slope=2.0,
    )
    metrics = train(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["budget"]["form"] == "sum" and saved["gate_grad"] == "band"
    assert "--budget sum --gate-grad band" in saved["recipe"]
    assert saved["alpha"] == 2.0 and "--final-slope 2" in saved["recipe"]
    assert saved["dataset"]["val_recordings"] == 8 and saved["dataset"]["test_recordings"] == 40
    assert metrics["skipped_nonfinite_steps"] == 0
