"""The accumulating coordinator: evenly spaced updates at the rate it asks for, the same in
torch, both chunk graphs and the native kernel, its state carried across chunks, its knob, its
cost and its card."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.model import (  # noqa: E402
    CELLS,
    SARNN,
    accumulator_phase,
    accumulator_scale,
)
from export.train import TrainConfig  # noqa: E402
from sarnn_serve import native  # noqa: E402
from sarnn_serve.accounting import CellCost  # noqa: E402
from sarnn_serve.card import ModelCard  # noqa: E402
from tests.tiny_models import (  # noqa: E402
    assert_kernel_answers_as_graph,
    assert_padding_is_ignored,
    build_tiny_sarnn,
    graph_session,
    tiny_inputs,
)


def _model(cell: str = "gru", hidden: int = 24, bias: float = -1.0, seed: int = 0) -> SARNN:
    """A seeded accumulating SA-RNN with energy features; `bias` sets how often it updates."""
    model = build_tiny_sarnn(
        cell, hidden=hidden, seed=seed, coord_energy=True, coord_accumulate=True
    )
    with torch.no_grad():
        model.coord_x.weight.mul_(0.5)
        model.coord_e.weight.mul_(0.3)
        model.coord_x.bias.fill_(bias)
    return model


def _inputs(batch: int, steps: int, seed: int = 1) -> np.ndarray:
    return tiny_inputs(batch, steps, seed)


def test_a_constant_rate_gives_evenly_spaced_updates_on_different_steps() -> None:
    model = _model(hidden=16)
    with torch.no_grad():
        model.coord_x.weight.zero_()
        model.coord_e.weight.zero_()
        model.coord_d.zero_()
        model.coord_x.bias.fill_(float(np.log(0.1 / 0.9)))  # sigmoid: 0.1, every 10th step
    out = model(torch.from_numpy(_inputs(1, 200)), deterministic=True)
    updates = out.updates[0].numpy()
    for neuron in range(16):
        steps = np.flatnonzero(updates[:, neuron])
        assert set(np.diff(steps)) <= {9, 10, 11}
        assert len(steps) in (19, 20)
    assert updates.sum(axis=1).max() <= 3  # spread: never all 16 on one step


def test_the_threshold_scales_the_rate_over_a_wide_range() -> None:
    model = _model(bias=-3.0)
    x = torch.from_numpy(_inputs(2, 400))
    rates = {
        tau: float(model(x, deterministic=True, threshold=tau).updates.mean())
        for tau in (0.05, 0.5, 0.95)
    }
    assert rates[0.05] > 8 * rates[0.5] > 64 * rates[0.95] > 0
    assert accumulator_scale(0.5) == 1.0


def test_phases_lie_in_the_unit_interval_and_differ() -> None:
    phase = accumulator_phase(128).numpy()
    assert (phase > 0).all() and (phase < 1).all()
    assert len(np.unique(phase)) == 128


@pytest.mark.parametrize("gate", [0.0, 1.0])
def test_forced_gates_leave_the_accumulator_as_it_was(gate: float) -> None:
    model = _model()
    state = torch.rand(2, model.state_size)
    with torch.no_grad():
        out = model(torch.from_numpy(_inputs(2, 5)), state, force_gate=gate)
    assert bool((out.updates == gate).all())
    assert torch.equal(out.state[:, 24:], state[:, 24:])


def test_the_gate_passes_gradient_to_the_coordinator() -> None:
    model = _model().train()
    out = model(torch.from_numpy(_inputs(2, 50)))
    (out.logits.sum() + out.updates.mean()).backward()
    assert model.coord_x.bias.grad.abs().sum() > 0
    assert model.coord_e.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cell", CELLS)
def test_the_state_carries_the_accumulator(cell: str) -> None:
    model = _model(cell)
    x = torch.from_numpy(_inputs(2, 60))
    with torch.no_grad():
        whole = model(x, deterministic=True)
        first = model(x[:, :25], deterministic=True)
        rest = model(x[:, 25:], first.state, deterministic=True)
    assert model.state_size == (3 if cell == "lstm" else 2) * 24
    assert torch.equal(torch.cat([first.updates, rest.updates], 1), whole.updates)
    torch.testing.assert_close(rest.state, whole.state)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("cell", CELLS)
def test_chunk_graphs_answer_as_torch(cell: str, sparse: bool) -> None:
    model = _model(cell)
    x = _inputs(3, 80)
    taus = np.array([0.5, 0.2, 0.8], np.float32)
    state = np.zeros((3, model.state_size), np.float32)
    with torch.no_grad():
        want = model(
            torch.from_numpy(x), deterministic=True, threshold=torch.from_numpy(taus)[:, None]
        )
    logits, updates, state_out = graph_session(model, sparse).run(
        None, {"x": x, "state": state, "threshold": taus, "lengths": np.array([80], np.int64)}
    )
    assert 0.05 < updates.mean() < 0.9
    assert np.array_equal(updates, want.updates.numpy().astype(bool))
    np.testing.assert_allclose(logits, want.logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(state_out, want.state.numpy(), atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_padding_past_a_length_changes_nothing(sparse: bool) -> None:
    assert_padding_is_ignored(_model("lstm"), sparse)


@pytest.mark.skipif(not native.available(), reason="the native kernel was not built")
@pytest.mark.parametrize("hidden", [5, 40])
@pytest.mark.parametrize("cell", CELLS)
def test_the_kernel_answers_as_the_graph(cell: str, hidden: int, tmp_path: Path) -> None:
    model = _model(cell, hidden)
    feeds = {
        "x": _inputs(5, 120),
        "state": np.zeros((5, model.state_size), np.float32),
        "lengths": np.array([120, 0, 7, 119, 60], np.int64),
        "threshold": np.array([0.5, 0.3, 0.05, 0.95, 0.7], np.float32),
    }
    assert_kernel_answers_as_graph(model, feeds, tmp_path)


def test_the_accumulator_is_counted_and_carried_in_the_card() -> None:
    plain = CellCost("gru", 6, 128, coordinator_energy=True)
    accumulating = CellCost("gru", 6, 128, coordinator_energy=True, coordinator_accumulate=True)
    assert accumulating.coordinator - plain.coordinator == 128
    fields = {"cell": "gru", "n_features": 6, "hidden": 128, "n_classes": 7}
    card = ModelCard.model_validate(_card_fields(**fields, coordinator_accumulate=True))
    assert card.state_size == 256
    assert card.cost == accumulating
    old = ModelCard.model_validate(_card_fields(**fields))
    assert old.state_size == 128 and "coordinator_accumulate" not in old.model_dump()


def _card_fields(**fields: object) -> dict:
    shipped = Path(__file__).parent.parent / "models" / "watch-stream-sa" / "model.json"
    card = json.loads(shipped.read_text())
    card.pop("coordinator_accumulate", None)
    card.pop("coordinator_delta", None)
    return {**card, **fields, "coordinator_energy": True}


def test_a_baseline_has_no_accumulator() -> None:
    with pytest.raises(ValueError, match="coord_accumulate"):
        TrainConfig(random_mask=0.05, coord_accumulate=True)
