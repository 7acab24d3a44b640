"""The shared-gate coordinator: one gate for all neurons learns rest or motion, each neuron a
constant rate, p_j = sigmoid(c_j) sigmoid(g_t). Its rate in motion does not follow how far the
input swings; chunking changes nothing; it is counted, trained and refused by the exporter."""

import pytest

torch = pytest.importorskip("torch")

from export.model import SARNN, ModelConfig  # noqa: E402
from export.onnx_export import build_model  # noqa: E402
from export.train import TrainConfig, fix_rate, optimiser_step, parameter_groups  # noqa: E402
from sarnn_serve.accounting import CellCost  # noqa: E402

FEATURES = 3
HIDDEN = 16


def _model(gate_bias: float = 0.0) -> SARNN:
    """A seeded shared-gate SA-RNN whose gate reads motion alone; neuron j asks for the rate
    sigmoid(c_j), from about 2% to 50%."""
    torch.manual_seed(0)
    model = SARNN(
        ModelConfig(
            n_features=FEATURES,
            hidden=HIDDEN,
            n_classes=2,
            coord_energy=True,
            coord_accumulate=True,
            coord_delta=True,
            coord_shared_gate=True,
        )
    )
    with torch.no_grad():
        model.coord_x.weight.zero_()
        model.coord_e.weight.zero_()
        model.coord_v.weight.fill_(4.0)
        model.coord_x.bias.fill_(gate_bias)
        model.coord_rate.copy_(torch.linspace(-4.0, 0.0, HIDDEN))
    return model.eval()


def _swing(amplitude: float, steps: int = 400) -> torch.Tensor:
    """A sine of this amplitude on every feature, [1, steps, F]."""
    t = torch.arange(steps, dtype=torch.float32)
    return (amplitude * torch.sin(t / 3.0))[None, :, None].repeat(1, 1, FEATURES)


def test_in_motion_each_neuron_keeps_its_own_rate_however_far_the_input_swings() -> None:
    model = _model(gate_bias=2.0)
    with torch.no_grad():
        small = model(_swing(10.0), deterministic=True).updates[0].sum(0)
        large = model(_swing(40.0), deterministic=True).updates[0].sum(0)
    assert ((small - large).abs() <= 0.05 * large + 1).all()  # four times the swing
    assert small[-1] > 5 * small[0]  # the neurons' own rates differ


def test_at_rest_the_gate_shuts_every_neuron() -> None:
    model = _model(gate_bias=-2.0)
    held = torch.full((1, 400, FEATURES), 3.0)
    state = torch.zeros(1, model.state_size)
    state[:, -FEATURES:] = 3.0  # held since before: no motion
    with torch.no_grad():
        rest = float(model(held, state, deterministic=True).updates.mean())
        moving = float(model(_swing(4.0), deterministic=True).updates.mean())
    assert moving > 5 * rest


def test_chunks_update_as_the_whole_stream() -> None:
    model = _model()
    x = torch.randn(2, 90, FEATURES)
    with torch.no_grad():
        whole = model(x, deterministic=True)
        first = model(x[:, :31], deterministic=True)
        rest = model(x[:, 31:], first.state, deterministic=True)
    assert torch.equal(torch.cat([first.updates, rest.updates], 1), whole.updates)
    torch.testing.assert_close(rest.state, whole.state)


def test_the_gate_and_rates_learn_at_the_coordinators_rate() -> None:
    model = _model().train()
    cfg = TrainConfig(coord_accumulate=True, coord_lr_scale=10.0)
    coordinator = parameter_groups(model, cfg)[1]["params"]
    assert any(p is model.coord_rate for p in coordinator)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = model.coord_rate.detach().clone()
    out = model(torch.randn(2, 40, FEATURES))
    assert optimiser_step(model, opt, out.updates.sum())  # the budget alone: shut the gates
    assert (model.coord_rate.detach() < before).all()


def test_a_fixed_rate_freezes_every_neurons_rate_and_leaves_the_gate_to_learn() -> None:
    model = _model().train()
    fix_rate(model, 0.075)
    assert torch.allclose(torch.sigmoid(model.coord_rate), torch.tensor(0.075))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    rates, bias = model.coord_rate.detach().clone(), float(model.coord_x.bias.detach())
    out = model(torch.randn(2, 40, FEATURES))
    assert optimiser_step(model, opt, out.updates.sum())
    assert torch.equal(model.coord_rate.detach(), rates)
    assert float(model.coord_x.bias.detach()) < bias  # the budget shuts the gate
    with torch.no_grad():
        updates = model.eval()(_swing(40.0), deterministic=True).updates[0].sum(0)
    assert int(updates.max() - updates.min()) <= 1  # every neuron at the same rate


def test_fixed_rate_needs_a_plain_accumulator_or_a_shared_gate() -> None:
    TrainConfig(streams="rest", coord_accumulate=True, fixed_rate=0.05)
    flags = {"coord_energy": True, "coord_accumulate": True, "coord_delta": True}
    TrainConfig(streams="rest", **flags, coord_shared_gate=True, fixed_rate=0.05)
    with pytest.raises(ValueError, match="fixed_rate"):
        TrainConfig(streams="rest", **flags, fixed_rate=0.05)


def test_it_is_counted_once_per_step_not_per_neuron() -> None:
    def cost(shared: bool) -> CellCost:
        return CellCost("gru", 6, 128, True, True, True, True, coordinator_shared=shared)

    assert cost(False).coordinator == 2578
    assert cost(True).coordinator == 6 + 128 + 6 * 2 + 128 + 6 * 3  # W_x, c g, W_e, acc, W_v


def test_it_needs_motion_features_and_is_not_exported_yet() -> None:
    with pytest.raises(ValueError, match="coord_delta"):
        ModelConfig(coord_accumulate=True, coord_shared_gate=True)
    with pytest.raises(ValueError, match="coord_delta"):
        TrainConfig(streams="rest", coord_accumulate=True, coord_shared_gate=True)
    with pytest.raises(ValueError, match="shared-gate coordinator"):
        build_model(_model())
