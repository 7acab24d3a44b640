"""Motion features: the accumulating coordinator weighs |x_t - xbar_{t-1}| / std, xbar the
input's moving average, carried in the state. The same in torch, both chunk graphs and the
native kernel; chunking changes nothing; counted in the cost and the card."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.model import (  # noqa: E402
    CELLS,
    MOTION_SMOOTHING,
    SARNN,
    ModelConfig,
    moving_deviation,
)
from export.train import TrainConfig  # noqa: E402
from sarnn_serve import native  # noqa: E402
from sarnn_serve.accounting import CellCost  # noqa: E402
from sarnn_serve.card import ModelCard  # noqa: E402
from tests.tiny_models import (  # noqa: E402
    TINY_FEATURES,
    assert_kernel_answers_as_graph,
    assert_padding_is_ignored,
    build_tiny_sarnn,
    graph_session,
    tiny_inputs,
)

HIDDEN = 24


def _model(cell: str = "gru", hidden: int = HIDDEN, seed: int = 0) -> SARNN:
    """A seeded accumulating SA-RNN with energy and motion features, updating now and then."""
    model = build_tiny_sarnn(
        cell, hidden=hidden, seed=seed, coord_energy=True, coord_accumulate=True, coord_delta=True
    )
    with torch.no_grad():
        model.coord_x.weight.mul_(0.5)
        model.coord_e.weight.mul_(0.3)
        model.coord_v.weight.mul_(0.5)
        model.coord_x.bias.fill_(-1.0)
    return model


def test_the_state_ends_with_the_moving_average() -> None:
    model = _model("lstm")
    x = torch.from_numpy(tiny_inputs(2, 300, seed=1))
    with torch.no_grad():
        out = model(x, deterministic=True)
    assert model.state_size == 3 * HIDDEN + TINY_FEATURES
    average = out.state[:, -TINY_FEATURES:]
    torch.testing.assert_close(average, x[:, -100:].mean(1), atol=0.6, rtol=0)  # near the mean
    start = torch.zeros(2, TINY_FEATURES)
    deviation, after_one = moving_deviation(x[:, :1], start)
    torch.testing.assert_close(after_one, MOTION_SMOOTHING * x[:, 0])
    torch.testing.assert_close(deviation[:, 0], x[:, 0].abs())


@pytest.mark.parametrize("cell", CELLS)
def test_chunks_update_as_the_whole_stream(cell: str) -> None:
    model = _model(cell)
    x = torch.from_numpy(tiny_inputs(2, 60, seed=1))
    with torch.no_grad():
        whole = model(x, deterministic=True)
        first = model(x[:, :25], deterministic=True)
        rest = model(x[:, 25:], first.state, deterministic=True)
        forgetful = model(x[:, 25:], first.state * 0, deterministic=True)
    assert torch.equal(torch.cat([first.updates, rest.updates], 1), whole.updates)
    torch.testing.assert_close(rest.state, whole.state)
    assert not torch.equal(forgetful.updates, rest.updates)  # the carried input matters


def test_motion_not_position_drives_the_gate() -> None:
    """With only motion weights, a held input asks for the same rate wherever it is held, and
    a moving one for another."""
    model = _model()
    with torch.no_grad():
        model.coord_x.weight.zero_()
        model.coord_e.weight.zero_()
        model.coord_d.zero_()
        model.coord_v.weight.fill_(1.0)
        model.coord_x.bias.fill_(-2.0)
    held = [torch.full((1, 200, TINY_FEATURES), level) for level in (-3.0, 0.0, 5.0)]
    moving = torch.from_numpy(tiny_inputs(1, 200, seed=3))
    rates = []
    with torch.no_grad():
        for x in held:
            state = torch.zeros(1, model.state_size)
            state[:, -TINY_FEATURES:] = x[:, 0]  # held since before: no motion at all
            rates.append(float(model(x, state, deterministic=True).updates.mean()))
        busy = float(model(moving, deterministic=True).updates.mean())
    assert rates[0] == rates[1] == rates[2]
    assert busy > 2 * rates[0]


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("cell", CELLS)
def test_chunk_graphs_answer_as_torch(cell: str, sparse: bool) -> None:
    model = _model(cell)
    x = tiny_inputs(3, 80, seed=1)
    taus = np.array([0.5, 0.2, 0.8], np.float32)
    state = np.zeros((3, model.state_size), np.float32)
    state[:, -TINY_FEATURES:] = x[:, 0] + 1.0
    with torch.no_grad():
        want = model(
            torch.from_numpy(x),
            torch.from_numpy(state),
            deterministic=True,
            threshold=torch.from_numpy(taus)[:, None],
        )
    logits, updates, state_out = graph_session(model, sparse).run(
        None, {"x": x, "state": state, "threshold": taus, "lengths": np.array([80], np.int64)}
    )
    assert 0.05 < updates.mean() < 0.9
    assert np.array_equal(updates, want.updates.numpy().astype(bool))
    np.testing.assert_allclose(logits, want.logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(state_out, want.state.numpy(), atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_padding_past_a_length_leaves_the_moving_average(sparse: bool) -> None:
    assert_padding_is_ignored(_model("gru"), sparse)


@pytest.mark.skipif(not native.available(), reason="the native kernel was not built")
@pytest.mark.parametrize("hidden", [5, 40])
@pytest.mark.parametrize("cell", CELLS)
def test_the_kernel_answers_as_the_graph(cell: str, hidden: int, tmp_path: Path) -> None:
    model = _model(cell, hidden)
    x = tiny_inputs(5, 120, seed=1)
    x[1:, 60:] = x[1:, 59:60]  # a sensor that freezes: motion 0
    feeds = {
        "x": x,
        "state": np.zeros((5, model.state_size), np.float32),
        "lengths": np.array([120, 0, 7, 119, 60], np.int64),
        "threshold": np.array([0.5, 0.3, 0.05, 0.95, 0.7], np.float32),
    }
    assert_kernel_answers_as_graph(model, feeds, tmp_path)


def test_motion_features_are_counted_and_carried_in_the_card() -> None:
    base = CellCost("gru", 6, 128, coordinator_energy=True, coordinator_accumulate=True)
    moving = CellCost(
        "gru", 6, 128, coordinator_energy=True, coordinator_accumulate=True, coordinator_delta=True
    )
    assert moving.coordinator - base.coordinator == 6 * 130
    shipped = Path(__file__).parent.parent / "models" / "watch-stream-sa" / "model.json"
    fields = json.loads(shipped.read_text())
    fields.pop("coordinator_delta", None)
    fields |= {"cell": "gru", "n_features": 6, "hidden": 128, "coordinator_accumulate": True}
    card = ModelCard.model_validate({**fields, "coordinator_delta": True})
    assert card.state_size == 2 * 128 + 6
    assert card.cost.coordinator == moving.coordinator
    old = ModelCard.model_validate(fields)
    assert old.state_size == 256 and "coordinator_delta" not in old.model_dump()


def test_motion_is_counted_in_mean_deviations() -> None:
    model = _model()
    recordings = [np.array([[0.0, 0.0, 0.0], [2.0, 1.0, -3.0], [2.0, 2.0, 0.0]], np.float32)]
    model.set_motion_scale(recordings)
    beta = MOTION_SMOOTHING  # xbar: x_0, then x_0 + beta (x_1 - x_0)
    second = np.abs(np.array([2.0, 2.0, 0.0]) - beta * np.array([2.0, 1.0, -3.0]))
    mean = (np.array([2.0, 1.0, 3.0]) + second) / 2
    np.testing.assert_allclose(model.motion_gain.numpy(), model.std.numpy() / mean, rtol=1e-6)


def test_a_training_step_keeps_motion_weights_at_zero_or_above() -> None:
    from export.train import optimiser_step

    model = _model()
    with torch.no_grad():
        model.coord_v.weight.fill_(0.01)
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    out = model.train()(torch.from_numpy(tiny_inputs(2, 30, seed=4)))
    assert optimiser_step(model, opt, out.updates.sum())  # the budget alone: shut every gate
    assert float(model.coord_v.weight.detach().min()) == 0.0
    assert float(model.coord_x.weight.detach().abs().sum()) > 0


def test_motion_features_need_an_accumulator() -> None:
    with pytest.raises(ValueError, match="coord_accumulate"):
        ModelConfig(coord_delta=True)
    with pytest.raises(ValueError, match="coord_accumulate"):
        TrainConfig(streams="rest", coord_delta=True)
    with pytest.raises(ValueError, match="streams"):
        TrainConfig(varied_rest=True)
