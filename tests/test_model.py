"""The SA-RNN in PyTorch (export.model), its datasets (export.data) and training (export.train).

docs/architecture.md, "The model": straight-through gate, diagonal coordinator, gates-open equals
the dense cell, gates-shut freezes the state, deterministic gate [a > (2 tau - 1) / alpha], ties
mean no update.
"""

import itertools
import json

import numpy as np
import pytest

pytest.importorskip("torch")

import torch

from export.data import load_basicmotions, load_dataset, load_watch
from export.model import (
    CELLS,
    SARNN,
    ModelConfig,
    budget_loss,
    gate_threshold,
    load_checkpoint,
    save_checkpoint,
)
from export.train import TrainConfig, evaluate, train

pytestmark = pytest.mark.train  # needs the training extra


def _x(model: SARNN, batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    """Raw inputs around the model's normalisation statistics."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, steps, model.config.n_features, generator=gen)
    return model.mean + model.std * z


def _state(model: SARNN, batch: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(batch, model.state_size, generator=gen)


def _zero_coordinator(model: SARNN) -> None:
    with torch.no_grad():
        model.coord_x.weight.zero_()
        model.coord_x.bias.zero_()
        model.coord_d.zero_()


# --- gradient and the diagonal restriction -------------------------------------------------


def test_task_loss_alone_trains_the_coordinator(tiny_sarnn):
    model = tiny_sarnn
    model.train()
    x, y = _x(model, 4, 12), torch.tensor([0, 1, 2, 3])
    out = model(x)
    assert 0 < float(out.updates.detach().mean()) < 1, "the fixture should give mixed gates"
    loss = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, out.logits.shape[-1]), y.repeat_interleave(12)
    ) + budget_loss(out.updates, 0.0)
    loss.backward()
    for grad in (model.coord_x.weight.grad, model.coord_x.bias.grad, model.coord_d.grad):
        assert grad is not None and grad.abs().sum() > 0

    # The deterministic (inference) gate is a hard step: no gradient reaches the coordinator.
    model.zero_grad(set_to_none=True)
    out = model(x, deterministic=True)
    out.logits.sum().backward()
    assert model.coord_x.weight.grad is None and model.coord_d.grad is None


def test_coordinator_stays_diagonal_after_training(tiny_sarnn):
    model = tiny_sarnn
    hidden = model.config.hidden
    start_d = model.coord_d.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(5):
        out = model(_x(model, 8, 16, seed=step))
        y = torch.arange(8) % model.config.n_classes
        task = torch.nn.functional.cross_entropy(
            out.logits.reshape(-1, out.logits.shape[-1]), y.repeat_interleave(16)
        )
        opt.zero_grad()
        (task + budget_loss(out.updates, 1.0)).backward()
        opt.step()
    model.eval()
    w_d = model.coord_d.detach()
    assert not torch.equal(w_d, start_d), "training should move w_d"
    assert (w_d != 0).all()

    x1, state = _x(model, 5, 1, seed=99), _state(model, 5)
    with torch.no_grad():
        base = model(x1, state, deterministic=True)
        for i in range(hidden):
            others = state.clone()
            others[:, [j for j in range(hidden) if j != i]] += 3.0
            if model.config.cell == "lstm":
                others[:, hidden:] -= 2.0  # the cell state c is not seen by the coordinator
            moved = model(x1, others, deterministic=True)
            assert torch.equal(moved.coordinator[..., i], base.coordinator[..., i])
            assert torch.equal(moved.updates[..., i], base.updates[..., i])

            own = state.clone()
            own[:, i] += 0.25
            mine = model(x1, own, deterministic=True)
            delta = mine.coordinator[:, 0, i] - base.coordinator[:, 0, i]
            assert torch.allclose(delta, torch.full_like(delta, 0.25 * float(w_d[i])), atol=1e-5)
            assert (delta != 0).all()

    # The same as a Jacobian: da/dh_{t-1} is exactly diag(w_d).
    def coordinator_of(h: torch.Tensor) -> torch.Tensor:
        full = torch.cat([h, state[:1, hidden:]], 1)
        return model(x1[:1], full, deterministic=True).coordinator[0, 0]

    jac = torch.autograd.functional.jacobian(coordinator_of, state[:1, :hidden])[:, 0]
    assert torch.equal(jac, torch.diag(w_d))


# --- gates forced open or shut ---------------------------------------------------------------


def test_all_gates_open_is_the_dense_cell(make_tiny_sarnn, sarnn_cell):
    model = make_tiny_sarnn(sarnn_cell)
    hidden = model.config.hidden
    x, state = _x(model, 3, 25), _state(model, 3)
    with torch.no_grad():
        out = model(x, state, force_gate=1)
        assert bool(out.updates.all())

        # A manual loop of the plain torch cell on the normalised input.
        xn = (x - model.mean) / model.std
        h, c = state[:, :hidden], state[:, hidden:]
        hs = []
        for t in range(x.shape[1]):
            if sarnn_cell == "lstm":
                h, c = model.cell(xn[:, t], (h, c))
            else:
                h = model.cell(xn[:, t], h)
            hs.append(h)
        final = torch.cat([h, c], 1) if sarnn_cell == "lstm" else h
        logits = model.head(torch.stack(hs, 1))
        assert torch.allclose(out.state, final, atol=1e-6)
        assert torch.allclose(out.logits, logits, atol=1e-6)

        # Bitwise the dense baseline with the same weights.
        dense = SARNN(ModelConfig(**{**model.config.to_dict(), "selective": False}))
        dense.load_state_dict(model.state_dict())
        dense.alpha = model.alpha
        ref = dense(x, state)
        assert bool(ref.updates.all())
        assert torch.equal(out.state, ref.state)
        assert torch.equal(out.logits, ref.logits)


def test_all_gates_shut_never_changes_the_state(make_tiny_sarnn, sarnn_cell):
    model = make_tiny_sarnn(sarnn_cell)
    x, state0 = _x(model, 3, 20), _state(model, 3)
    with torch.no_grad():
        state = state0
        for t in range(x.shape[1]):
            out = model(x[:, t : t + 1], state, force_gate=0)
            assert not bool(out.updates.any())
            assert torch.equal(out.state, state0), f"state moved at step {t}"
            state = out.state
        whole = model(x, state0, force_gate=0)
        assert torch.equal(whole.state, state0)
        # Every step predicts from the unchanged h.
        head = model.head(state0[:, : model.config.hidden])
        assert torch.equal(whole.logits, head[:, None].expand_as(whole.logits))


# --- budget, determinism, ties, thresholds ---------------------------------------------------


def test_budget_loss_rises_with_updates():
    size = (2, 5, 4)
    losses = []
    for k in range(41):
        u = torch.zeros(40)
        u[:k] = 1
        losses.append(float(budget_loss(u.reshape(size), 2.0)))
    assert losses[0] == 0.0 and losses[-1] == pytest.approx(2.0)
    assert all(b > a for a, b in itertools.pairwise(losses))
    # Normalised per step and neuron: the same rate costs the same on a longer window.
    assert float(budget_loss(torch.ones(2, 50, 4), 2.0)) == pytest.approx(2.0)


def test_budget_loss_of_a_model_rises_as_its_gates_open(make_tiny_sarnn):
    model = make_tiny_sarnn("gru")
    x = _x(model, 4, 10)
    losses = []
    with torch.no_grad():
        for bias in (-3.0, -1.0, 0.0, 1.0, 3.0):
            model.coord_x.bias.fill_(bias)
            out = model(x, deterministic=True)
            losses.append((float(out.updates.sum()), float(budget_loss(out.updates, 1.0))))
    updates = [u for u, _ in losses]
    assert updates == sorted(updates) and updates[0] < updates[-1]
    assert [b for _, b in losses] == sorted(b for _, b in losses)


def test_deterministic_mode_is_repeatable_and_is_a_gt_zero(make_tiny_sarnn, sarnn_cell):
    model = make_tiny_sarnn(sarnn_cell, alpha=2.3)
    x, state = _x(model, 4, 30), _state(model, 4)
    with torch.no_grad():
        one = model(x, state, deterministic=True)
        two = model(x, state, deterministic=True)
    for field in ("logits", "updates", "coordinator", "state"):
        assert torch.equal(getattr(one, field), getattr(two, field)), field
    assert torch.equal(one.updates, (one.coordinator > 0).float())
    assert 0.1 < float(one.updates.mean()) < 0.9, "mixed gates expected"
    # Another threshold: u = [a > (2 tau - 1) / alpha].
    with torch.no_grad():
        high = model(x, state, deterministic=True, threshold=0.8)
    cut = gate_threshold(0.8, 2.3)
    assert cut == pytest.approx(0.6 / 2.3)
    assert torch.equal(high.updates, (high.coordinator > cut).float())


def test_tie_means_no_update_in_both_modes(make_tiny_sarnn, sarnn_cell):
    model = make_tiny_sarnn(sarnn_cell)
    _zero_coordinator(model)
    x, state = _x(model, 3, 15), _state(model, 3)
    with torch.no_grad():
        for deterministic in (True, False):
            model.train(not deterministic)
            out = model(x, state, deterministic=deterministic)
            assert bool((out.coordinator == 0).all())
            assert not bool(out.updates.any()), f"deterministic={deterministic}"
            assert torch.equal(out.state, state)
    # round(0.5) = 0 in torch: the reference rule the tie follows.
    assert float(torch.round(torch.tensor(0.5))) == 0.0


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.7, 5.0])
def test_training_gate_equals_deterministic_gate(make_tiny_sarnn, sarnn_cell, alpha):
    model = make_tiny_sarnn(sarnn_cell, alpha=alpha)
    x, state = _x(model, 4, 30), _state(model, 4)
    model.train()
    with torch.no_grad():
        soft = model(x, state)
        hard = model(x, state, deterministic=True)
    assert torch.equal(soft.updates, hard.updates)
    assert torch.equal(soft.state, hard.state)
    assert torch.equal(soft.logits, hard.logits)


@pytest.mark.parametrize("alpha", [1.0, 5.0])
def test_training_gate_decides_tiny_coordinator_values_like_inference(make_tiny_sarnn, alpha):
    """0 < alpha a < 2^-24 rounds (alpha a + 1) / 2 to exactly 0.5, and round(0.5) = 0; the
    training gate must still update there, as [a > 0] does."""
    model = make_tiny_sarnn("gru", alpha=alpha)
    x = _x(model, 2, 4)
    for bias, expect in ((1e-9, 1.0), (-1e-9, 0.0)):
        with torch.no_grad():
            model.coord_x.weight.zero_()
            model.coord_d.zero_()
            model.coord_x.bias.fill_(bias)
            soft = model(x)
            hard = model(x, deterministic=True)
        assert bool((hard.updates == expect).all())
        assert torch.equal(soft.updates, hard.updates), f"bias {bias}"


@pytest.mark.parametrize("cell", CELLS)
def test_raising_the_threshold_never_adds_updates(make_tiny_sarnn, cell):
    """From the same state and input, u(tau_hi) <= u(tau_lo) neuron by neuron. (Over a free-running
    sequence the trajectories differ, so only the per-step statement is a law.)"""
    model = make_tiny_sarnn(cell, alpha=1.3)
    x, state = _x(model, 256, 1, seed=5), _state(model, 256, seed=6)
    taus = [0.01, 0.2, 0.4, 0.5, 0.6, 0.8, 0.99]
    with torch.no_grad():
        masks = [model(x, state, deterministic=True, threshold=t).updates for t in taus]
    counts = [float(m.sum()) for m in masks]
    for lo, hi in itertools.pairwise(masks):
        assert bool((hi <= lo).all())
    assert counts[0] > counts[-1], "the thresholds should matter on this data"


# --- errors ---------------------------------------------------------------------------------


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match=r"'nope'.*watch, basicmotions"):
        load_dataset("nope")


def test_bad_inputs_raise_clear_errors(make_tiny_sarnn):
    model = make_tiny_sarnn("gru")
    with pytest.raises(ValueError, match="expected 3 features, got 4"):
        model(torch.zeros(1, 5, 4))
    with pytest.raises(ValueError, match=r"\[batch, steps, features\]"):
        model(torch.zeros(5, 3))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.zeros(2, 5, 3)
        x[1, 3, 2] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            model(x)


def test_model_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown cell 'xyz'"):
        ModelConfig(cell="xyz")
    with pytest.raises(ValueError, match="hidden must be positive"):
        ModelConfig(hidden=0)


# --- data -----------------------------------------------------------------------------------


def test_watch_is_split_by_subject_with_train_only_statistics():
    """seglearn ships the watch data; loading takes about a second, fine for every run."""
    data = load_watch()
    assert (data.n_features, data.n_classes) == (6, 7)
    assert len(data.train) + len(data.val) + len(data.test) == 140
    train_subjects = {r.subject for r in data.train}
    val_subjects = {r.subject for r in data.val}
    test_subjects = {r.subject for r in data.test}
    assert test_subjects == {9, 10} and data.test_subjects == [9, 10]
    assert val_subjects == {7, 8} and data.val_subjects == [7, 8]
    assert not train_subjects & (test_subjects | val_subjects)
    assert len(train_subjects | val_subjects | test_subjects) == 10
    assert sorted(train_subjects) == data.train_subjects == list(range(1, 7))
    assert all(r.x.dtype == np.float32 and r.x.shape[1] == 6 for r in data.train + data.test)

    mean, std = data.normalisation()
    stacked = np.concatenate([r.x for r in data.train]).astype(np.float64)
    assert np.allclose(mean, stacked.mean(0), rtol=1e-5, atol=1e-5)
    assert np.allclose(std, stacked.std(0), rtol=1e-5, atol=1e-5)
    for part in (data.val, data.test):
        held = np.concatenate([r.x for r in data.train + part]).astype(np.float64)
        assert not np.allclose(mean, held.mean(0), rtol=1e-4, atol=1e-4), "held-out data leaked"

    with pytest.raises(ValueError, match="not in the watch data"):
        load_watch(test_subjects=(11,))


def test_basicmotions_loads():
    data = load_basicmotions()
    assert (data.n_features, data.n_classes) == (6, 4)
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 40)
    assert sorted(r.label for r in data.val) == [0, 0, 1, 1, 2, 2, 3, 3], "stratified"
    assert all(r.x.shape == (100, 6) and r.x.dtype == np.float32 for r in data.train)
    assert {r.label for r in data.test} == {0, 1, 2, 3}


# --- training end to end --------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_training_run_writes_everything_and_round_trips(tmp_path):
    cfg = TrainConfig(
        dataset="basicmotions", hidden=8, epochs=2, batches_per_epoch=3, batch_size=8, window=50
    )
    out = tmp_path / "run"
    metrics = train(cfg, out, progress=False)
    for name in ("checkpoint.pt", "metrics.json", "curves.png", "raster.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"] == metrics["test"]
    test = saved["test"]
    assert 0.0 <= test["update_rate"] <= 1.0
    assert 0.0 <= test["streaming_accuracy"] <= 1.0
    assert [h["epoch"] for h in saved["history"]] == [0, 1]
    assert "--dataset basicmotions" in saved["recipe"]

    model, blob = load_checkpoint(str(out / "checkpoint.pt"))
    assert model.config.hidden == 8 and model.config.selective
    assert blob["class_labels"] == ["badminton", "running", "standing", "walking"]
    # The loaded model reproduces the figures the run reported.
    data = load_dataset("basicmotions")
    again = evaluate(model, data, saved["dataset"]["scored_after_steps"])
    assert again.streaming_accuracy == test["streaming_accuracy"]
    assert again.update_rate == test["update_rate"]

    # save -> load -> identical outputs.
    save_checkpoint(model, str(tmp_path / "copy.pt"), {"dataset": "basicmotions"})
    copy, _ = load_checkpoint(str(tmp_path / "copy.pt"))
    assert copy.alpha == model.alpha
    x = _x(model, 2, 40)
    with torch.no_grad():
        a, b = model(x, deterministic=True), copy(x, deterministic=True)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.updates, b.updates)


@pytest.mark.slow
def test_tiny_dense_training_run(tmp_path):
    cfg = TrainConfig(
        dataset="basicmotions",
        hidden=8,
        dense=True,
        epochs=1,
        batches_per_epoch=3,
        batch_size=8,
        window=50,
    )
    metrics = train(cfg, tmp_path, progress=False)
    assert metrics["test"]["update_rate"] == 1.0
    assert metrics["macs_per_step"]["selective"] == metrics["macs_per_step"]["dense"]
    assert "--dense" in metrics["recipe"]
    model, _ = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert not model.config.selective


def test_load_checkpoint_rejects_other_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_checkpoint(str(garbage))
    other = tmp_path / "other.pt"
    torch.save({"a": 1}, other)
    with pytest.raises(ValueError, match="not an sarnn checkpoint"):
        load_checkpoint(str(other))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing.pt"))


def test_checkpoint_round_trips_every_tensor(tmp_path, make_tiny_sarnn):
    model = make_tiny_sarnn("lstm")
    save_checkpoint(model, str(tmp_path / "m.pt"), {})
    loaded, blob = load_checkpoint(str(tmp_path / "m.pt"))
    assert blob["format"] == "sarnn-checkpoint/1" and loaded.alpha == model.alpha
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
