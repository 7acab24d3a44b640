"""export.verify's step parity: a gate that flips at a near tie is counted and its row left out
of that step's differences; a flip far from a tie fails the export.

The runtime here is a stand-in that answers as PyTorch does except where the test flips a gate:
a real float32 tie that onnxruntime breaks the other way cannot be produced on demand."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from export.verify import NEAR_TIE, Report, StepParity, step_parity  # noqa: E402
from tests.tiny_models import build_tiny_sarnn, tiny_inputs  # noqa: E402

pytestmark = pytest.mark.train  # needs the training extra


class FlippingRuntime:
    """Answers as `model` does, with neuron `neuron` of row 0 flipped (and its state moved)."""

    def __init__(self, model, neuron: int):
        self.model, self.neuron = model, neuron

    def run(self, _outputs, feeds):
        with torch.no_grad():
            x, state = torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["state"])
            ref = self.model(x, state, deterministic=True)
        updates = ref.updates.numpy() > 0
        state = ref.state.numpy().copy()
        updates[0, :, self.neuron] = ~updates[0, :, self.neuron]
        state[0, self.neuron] += 1.0
        return ref.logits.numpy(), updates, state


def tied_model():
    """A tiny SA-RNN whose neuron 0 sits on a near tie at every step (a = NEAR_TIE / 10)."""
    model = build_tiny_sarnn()
    with torch.no_grad():
        model.coord_x.weight[0].zero_()
        model.coord_d[0] = 0.0
        model.coord_x.bias[0] = NEAR_TIE / 10
    return model


def test_a_flip_at_a_near_tie_is_counted_not_failed():
    model = tied_model()
    x = tiny_inputs(batch=3, steps=5)
    parity = step_parity(model, FlippingRuntime(model, neuron=0), x, np.full(3, 5))
    assert parity.flips_near == 5  # row 0, every step
    assert parity.mismatches_far == 0
    assert parity.max_state_diff < 1e-6 and parity.max_logit_diff < 1e-6
    assert Report(data=parity, random=StepParity()).ok


def test_a_flip_far_from_a_tie_fails():
    model = tied_model()
    x = tiny_inputs(batch=3, steps=5)
    with torch.no_grad():
        a = model(torch.from_numpy(x), deterministic=True).coordinator.numpy()
    far = int(np.argmax(np.abs(a[0]).min(axis=0)[1:])) + 1  # never near a tie in row 0
    parity = step_parity(model, FlippingRuntime(model, neuron=far), x, np.full(3, 5))
    assert parity.mismatches_far > 0 and parity.max_state_diff >= 1.0
    assert not Report(data=parity, random=StepParity()).ok
