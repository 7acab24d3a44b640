"""Tiny seeded SA-RNNs and their in-memory ONNX chunk graphs, for the suites of the offline side
(they need torch: the training extra). Registered as fixtures by conftest when torch is there.

Everything here is small on purpose (F = 3, H = 12, C = 4) so the whole suite stays fast on two
busy cores. Fixture names carry a `sarnn_` / `tiny_` prefix so that service suites can add their
own fixtures next to these without clashes.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.data import Recording
from export.model import CELLS, SARNN, ModelConfig

torch.set_num_threads(1)

TINY_FEATURES = 3
TINY_HIDDEN = 12
TINY_CLASSES = 4
TINY_MEAN = (0.5, -1.0, 2.0)
TINY_STD = (2.0, 0.5, 1.5)


def build_tiny_sarnn(
    cell: str = "gru",
    *,
    hidden: int = TINY_HIDDEN,
    seed: int = 0,
    alpha: float = 1.6,
    selective: bool = True,
    coord_energy: bool = False,
    coord_accumulate: bool = False,
    coord_delta: bool = False,
) -> SARNN:
    """A seeded SA-RNN whose gates are mixed (coordinator bias 0, random W_x, w_d, W_e and W_v)
    and whose normalisation is not the identity; in eval mode."""
    torch.manual_seed(seed)
    model = SARNN(
        ModelConfig(
            cell=cell,
            n_features=TINY_FEATURES,
            hidden=hidden,
            n_classes=TINY_CLASSES,
            selective=selective,
            coord_energy=coord_energy,
            coord_accumulate=coord_accumulate,
            coord_delta=coord_delta,
        )
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.coord_x.weight.copy_(torch.randn(hidden, TINY_FEATURES, generator=gen))
        model.coord_x.bias.zero_()
        model.coord_d.copy_(torch.randn(hidden, generator=gen))
        if model.coord_e is not None:
            model.coord_e.weight.copy_(torch.randn(hidden, TINY_FEATURES, generator=gen))
        if model.coord_v is not None:
            model.coord_v.weight.copy_(torch.randn(hidden, TINY_FEATURES, generator=gen))
            model.motion_gain.copy_(torch.rand(TINY_FEATURES, generator=gen) + 0.5)
    model.set_normalisation(torch.tensor(TINY_MEAN), torch.tensor(TINY_STD))
    model.alpha = alpha
    model.eval()
    return model


def tiny_inputs(batch: int, steps: int, seed: int = 0) -> np.ndarray:
    """Raw-unit inputs [B, T, F] float32 around the tiny models' normalisation statistics."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((batch, steps, TINY_FEATURES))
    return (np.asarray(TINY_MEAN) + np.asarray(TINY_STD) * z).astype(np.float32)


def ort_session_for(model: SARNN, log_severity_level: int = 3) -> ort.InferenceSession:
    """Build the chunk graph of `model` in memory (export.onnx_export.build_model, which also
    runs onnx's full checker) and open it in onnxruntime on one thread."""
    from export.onnx_export import build_model

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = log_severity_level
    return ort.InferenceSession(
        build_model(model).SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )


@pytest.fixture(params=CELLS)
def sarnn_cell(request: pytest.FixtureRequest) -> str:
    """Each recurrent cell in turn: gru, lstm, rnn."""
    return request.param


@pytest.fixture
def make_tiny_sarnn() -> Callable[..., SARNN]:
    """Factory: make_tiny_sarnn(cell, hidden=, seed=, alpha=, selective=) -> SARNN."""
    return build_tiny_sarnn


@pytest.fixture
def make_tiny_inputs() -> Callable[..., np.ndarray]:
    """Factory: make_tiny_inputs(batch, steps, seed=) -> raw inputs [B, T, F] float32."""
    return tiny_inputs


@pytest.fixture
def make_tiny_onnx() -> Callable[..., ort.InferenceSession]:
    """Factory: make_tiny_onnx(model) -> onnxruntime session of its chunk graph."""
    return ort_session_for


@pytest.fixture
def tiny_sarnn(sarnn_cell: str) -> SARNN:
    """The tiny SA-RNN of the current cell."""
    return build_tiny_sarnn(sarnn_cell)


@pytest.fixture
def tiny_onnx(tiny_sarnn: SARNN) -> ort.InferenceSession:
    """onnxruntime session of `tiny_sarnn`'s chunk graph."""
    return ort_session_for(tiny_sarnn)


def run_chunk_graph(
    sess: ort.InferenceSession,
    x: np.ndarray,
    state: np.ndarray,
    lengths: list[int] | np.ndarray | None = None,
    threshold: list[float] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, updates, state_out) of a chunk graph session; lengths and threshold are fed
    only when given (else the graph's defaults)."""
    feeds = {"x": x, "state": state}
    if lengths is not None:
        feeds["lengths"] = np.asarray(lengths, np.int64)
    if threshold is not None:
        feeds["threshold"] = np.asarray(threshold, np.float32)
    logits, updates, state_out = sess.run(None, feeds)
    return logits, updates, state_out


def wrist_recordings(n: int, seed: int = 0, rate: float = 50.0) -> list[Recording]:
    """Wrist recordings of three classes at `rate` Hz: gravity plus swinging accelerometer and
    gyroscope after a still first second (where the rest model finds its quiet windows)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = np.arange(int(rng.integers(300, 500))) / rate
        swing = np.sin(2 * np.pi * (0.7 + i % 3) * t[:, None] + np.arange(6))
        amplitude = np.r_[0.4, 0.4, 0.4, 1.5, 1.5, 1.5]
        x = np.r_[0.0, 0.3, -0.95, 0, 0, 0] + (t >= 1.0)[:, None] * swing * amplitude
        x = x + 0.02 * rng.standard_normal(x.shape)
        out.append(Recording(x.astype(np.float32), i % 3, i))
    return out


def graph_session(model: SARNN, sparse: bool = False) -> ort.InferenceSession:
    """onnxruntime session of `model`'s dense chunk graph, or of its sparse twin."""
    from export.onnx_export import build_model

    proto = build_model(model, sparse=sparse).SerializeToString()
    return ort.InferenceSession(proto, providers=["CPUExecutionProvider"])


def assert_padding_is_ignored(model: SARNN, sparse: bool) -> None:
    """Rows of lengths 30, 12 and 0 whose padding overflows (1e30): nothing updates past a
    row's length, a row of length 0 keeps its state, and a short row ends as torch on its steps."""
    x = tiny_inputs(3, 30, seed=1)
    lengths = np.array([30, 12, 0], np.int64)
    for row, n in enumerate(lengths):
        x[row, n:] = 1e30  # squares and motion overflow: the padding must not reach the state
    state = np.random.default_rng(2).uniform(-1, 1, (3, model.state_size)).astype(np.float32)
    feeds = {"x": x, "state": state, "lengths": lengths, "threshold": np.array([0.5], np.float32)}
    _, updates, state_out = graph_session(model, sparse).run(None, feeds)
    with torch.no_grad():
        short = model(
            torch.from_numpy(x[1:2, :12]), torch.from_numpy(state[1:2]), deterministic=True
        )
    assert not updates[1, 12:].any() and not updates[2].any()
    np.testing.assert_array_equal(state_out[2], state[2])
    np.testing.assert_allclose(state_out[1], short.state.numpy()[0], atol=1e-5)


def assert_kernel_answers_as_graph(model: SARNN, feeds: dict, directory: Path) -> None:
    """The native kernel, bound to the weights of `model`'s dense graph (written to
    `directory`), gives the graph's masks exactly, and its logits and state within 1e-5."""
    from export.onnx_export import build_model
    from sarnn_serve.native import NativeKernel
    from sarnn_serve.onnx_initializers import read_initializers

    graph = directory / "model.onnx"
    graph.write_bytes(build_model(model).SerializeToString())
    kernel = NativeKernel(read_initializers(graph))
    want = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = kernel.run(**feeds)
    assert kernel.state_size == model.state_size
    assert np.array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[2], want[2], atol=1e-5, rtol=0)
