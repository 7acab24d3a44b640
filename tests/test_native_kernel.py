"""The native kernel (sarnn_serve/csrc/step_kernel.c through sarnn_serve.native) against the dense
chunk graph (export.onnx_graph), and the paths that serve it: engine, registry, router, server.

The kernel reads its weights from the dense graph's initializers (onnx_initializers, without the
onnx package) and must answer as that graph does: the same update masks exactly, logits and state
within 1e-5, for every cell, hidden size, batch (its 4-row blocks and their remainder), chunking,
padding and threshold; and a row's answer must not depend on the other rows of its batch.
"""

import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from export.model import CELLS, SARNN
from export.onnx_export import build_model
from sarnn_serve.engine import DENSE, NATIVE, Engine
from sarnn_serve.native import NativeKernel, NativeKernelError
from sarnn_serve.onnx_initializers import read_initializers
from sarnn_serve.routing import BATCHES, THRESHOLDS, Router, calibrate
from tests.fixtures import ATOL, Outputs, assert_same_outputs
from tests.service_fixtures import SHIPPED_MODELS
from tests.tiny_models import TINY_FEATURES, build_tiny_sarnn, run_chunk_graph, tiny_inputs

pytestmark = pytest.mark.train  # tiny models built with torch; the rest: test_native_runtime

CLOSED, OPEN = 0.999, 0.001
SHIPPED = sorted(p.parent.name for p in SHIPPED_MODELS.glob("*/model.onnx"))
SHIPPED_GRAPHS = sorted(SHIPPED_MODELS.glob("*/model*.onnx"))
SERVED = "watch-gru"


@dataclass(frozen=True)
class Pair:
    """A tiny SA-RNN, a session of its dense chunk graph and the kernel with its weights."""

    model: SARNN
    proto: onnx.ModelProto
    dense: ort.InferenceSession
    kernel: NativeKernel

    def both(self, x: np.ndarray, state: np.ndarray, **feeds) -> tuple[Outputs, Outputs]:
        """(kernel, dense graph) outputs for the same inputs."""
        return self.run(x, state, **feeds), run_chunk_graph(self.dense, x, state, **feeds)

    def run(
        self,
        x: np.ndarray,
        state: np.ndarray,
        lengths: list[int] | np.ndarray | None = None,
        threshold: list[float] | np.ndarray | None = None,
    ) -> Outputs:
        """The kernel's outputs; lists are taken as the graph would take them."""
        lengths = None if lengths is None else np.asarray(lengths, np.int64)
        threshold = None if threshold is None else np.asarray(threshold, np.float32)
        return self.kernel.run(x, state, lengths, threshold)


def _initializers(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """What onnx itself reads from the graph: its float32 and int64 initializers, by name."""
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return {k: v for k, v in arrays.items() if v.dtype in (np.float32, np.int64)}


@cache
def _pair(cell: str, hidden: int, coord_scale: float = 1.0, selective: bool = True) -> Pair:
    """`build_tiny_sarnn(cell, hidden=hidden, selective=selective)`, its coordinator (W_x, w_d)
    scaled by `coord_scale`, with its dense graph and kernel."""
    model = build_tiny_sarnn(cell, hidden=hidden, selective=selective)
    with torch.no_grad():
        model.coord_x.weight.mul_(coord_scale)
        model.coord_d.mul_(coord_scale)
    proto = build_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return Pair(model, proto, sess, NativeKernel(_initializers(proto)))


def _assert_same_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """The same names in the same order, each with the same dtype, shape and values."""
    assert want and list(got) == list(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        assert np.array_equal(got[name], array), name


def _assert_identical(got: Outputs, want: Outputs, label: str) -> None:
    """Logits, updates and state bit for bit."""
    for name, a, b in zip(("logits", "updates", "state"), got, want, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b), f"{label}: {name} not bit-identical"


def _state(model: SARNN, batch: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.5 * rng.standard_normal((batch, model.state_size))).astype(np.float32)


def _row_taus(batch: int) -> np.ndarray:
    return np.linspace(0.2, 0.8, batch).astype(np.float32) if batch > 1 else np.array([0.3])


def _row_lengths(batch: int, steps: int) -> np.ndarray:
    return np.array([steps, 0, 1, steps // 2, steps - 1, 3, steps, 2, 5][:batch]).clip(0, steps)


def _padded(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """x with huge values past each row's length (which nothing may read)."""
    out, rng = x.copy(), np.random.default_rng(1)
    for i, n in enumerate(lengths):
        out[i, n:] = rng.choice([1e3, -1e4, 1e30], size=out[i, n:].shape)
    return out


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _key(number, 2) + _varint(len(payload)) + payload


def _unpacked_floats(name: str, values: list[float]) -> bytes:
    """A TensorProto whose float_data is written one fixed32 field per value (valid protobuf,
    which every protobuf parser must accept, though onnx's own writer packs them)."""
    floats = b"".join(_key(4, 5) + struct.pack("<f", v) for v in values)
    dims = _key(1, 0) + _varint(len(values))
    return dims + _key(2, 0) + _varint(TensorProto.FLOAT) + floats + _field(8, name.encode())


# --- the library and the weight reader ----------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("cell", CELLS)
def test_reader_gives_onnx_initializers_of_tiny_graphs(
    cell: str, sparse: bool, tmp_path: Path
) -> None:
    proto = build_model(build_tiny_sarnn(cell, hidden=5), sparse=sparse)
    path = tmp_path / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    _assert_same_arrays(read_initializers(path), _initializers(proto))


@pytest.mark.parametrize("graph", SHIPPED_GRAPHS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_reader_gives_onnx_initializers_of_shipped_graphs(graph: Path) -> None:
    _assert_same_arrays(read_initializers(graph), _initializers(onnx.load(str(graph))))


def test_reader_decodes_typed_data_and_leaves_out_other_types(tmp_path: Path) -> None:
    tensors = [
        helper.make_tensor("f", TensorProto.FLOAT, [2, 2], [1.5, -2.0, 3.25, 0.1]),
        helper.make_tensor("i", TensorProto.INT64, [3], [-5, 2**40, 0]),
        helper.make_tensor("scalar", TensorProto.FLOAT, [], [7.0]),
        helper.make_tensor("empty", TensorProto.INT64, [0], []),
        helper.make_tensor("d", TensorProto.DOUBLE, [1], [1.0]),
        helper.make_tensor("i32", TensorProto.INT32, [2], [1, 2]),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["f"], ["y"])], "g", [], [out], tensors)
    proto = helper.make_model(graph)
    path = tmp_path / "typed.onnx"
    path.write_bytes(proto.SerializeToString())
    got = read_initializers(path)
    assert set(got) == {"f", "i", "scalar", "empty"}
    _assert_same_arrays(got, _initializers(proto))


def test_reader_decodes_unpacked_float_data(tmp_path: Path) -> None:
    proto = helper.make_model(helper.make_graph([], "g", [], []))
    graph = proto.graph.SerializeToString() + _field(5, _unpacked_floats("u", [1.5, -2.0]))
    proto.ClearField("graph")
    path = tmp_path / "unpacked.onnx"
    path.write_bytes(proto.SerializeToString() + _field(7, graph))
    want = _initializers(onnx.load(str(path)))
    assert want["u"].tolist() == [1.5, -2.0]
    _assert_same_arrays(read_initializers(path), want)


# --- parity with the dense graph ----------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 7, 33])
@pytest.mark.parametrize("batch", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("hidden", [1, 5, 37, 40])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_dense_graph(cell: str, hidden: int, batch: int, steps: int) -> None:
    p = _pair(cell, hidden)
    x = tiny_inputs(batch, steps, seed=batch * 100 + steps)
    lengths, taus = _row_lengths(batch, steps), _row_taus(batch)
    state = _state(p.model, batch)
    feeds = {
        "defaults": {},
        "broadcast": {"lengths": [max(1, steps // 2)], "threshold": [0.4]},
        "per row": {"lengths": lengths, "threshold": taus},
    }
    for start in (np.zeros_like(state), state):
        for feed_label, feed in feeds.items():
            label = f"{cell} H={hidden} B={batch} T={steps} |state|={start.any()} {feed_label}"
            assert_same_outputs(*p.both(x, start, **feed), label)
    if hidden > 1 and steps > 1:
        # not a trivial case: some row skips some neurons and updates others at some step
        k = p.run(x, state)[1].sum(axis=-1)
        assert ((k > 0) & (k < hidden)).any()

    # padding: past its length a row reads nothing, updates nothing and keeps its state
    garbage = _padded(x, lengths)
    got, want = p.both(garbage, state, lengths=lengths, threshold=taus)
    assert_same_outputs(got, want, f"{cell} H={hidden} B={batch} T={steps} padded")
    assert_same_outputs(got, p.run(x, state, lengths=lengths, threshold=taus), "padding read")
    for i, n in enumerate(lengths):
        assert not got[1][i, n:].any(), f"row {i} updated past its length {n}"
        if n == 0:
            assert np.array_equal(got[2][i], state[i]), f"row {i} of length 0 moved"
            continue
        alone = p.run(x[i : i + 1, :n], state[i : i + 1], threshold=[taus[i]])
        assert_same_outputs(
            (got[0][i : i + 1, :n], got[1][i : i + 1, :n], got[2][i : i + 1]), alone
        )
        frozen = np.broadcast_to(alone[0][0, -1], got[0][i, n:].shape)
        np.testing.assert_allclose(got[0][i, n:], frozen, atol=ATOL, rtol=0)


@pytest.mark.parametrize("steps", [1, 33])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("hidden", [1, 40])
@pytest.mark.parametrize("cell", CELLS)
def test_thresholds_that_close_or_open_every_gate(
    cell: str, hidden: int, batch: int, steps: int
) -> None:
    # scaled by 0.05 the tiny coordinator stays within (2 * 0.999 - 1) / alpha: tau = 0.999
    # closes every gate and tau = 0.001 opens every one (as in test_sparse_graph)
    p = _pair(cell, hidden, coord_scale=0.05)
    x, state = tiny_inputs(batch, steps, seed=5), _state(p.model, batch)
    label = f"{cell} H={hidden} B={batch} T={steps}"

    got, want = p.both(x, state, threshold=[CLOSED])
    assert_same_outputs(got, want, f"{label} closed")
    assert not got[1].any()
    assert np.array_equal(got[2], state), "no update: the state must be exactly the input"

    got, want = p.both(x, state, threshold=[OPEN])
    assert_same_outputs(got, want, f"{label} open")
    assert got[1].all()

    if batch > 1:
        taus = np.where(np.arange(batch) % 2 == 0, CLOSED, OPEN)
        mixed, want = p.both(x, state, threshold=taus)
        assert_same_outputs(mixed, want, f"{label} mixed")
        assert not mixed[1][::2].any() and mixed[1][1::2].all()
        assert np.array_equal(mixed[2][::2], state[::2])


@pytest.mark.parametrize("hidden", [5, 40])
@pytest.mark.parametrize("cell", CELLS)
def test_dense_baseline_matches_its_graph(cell: str, hidden: int) -> None:
    # exported with a coordinator that always opens: every neuron updates at every threshold
    p = _pair(cell, hidden, selective=False)
    x, state = tiny_inputs(5, 7, seed=8), _state(p.model, 5)
    for taus in (None, [CLOSED], _row_taus(5)):
        got, want = p.both(x, state, threshold=taus)
        assert_same_outputs(got, want, f"{cell} H={hidden} dense baseline threshold={taus}")
        assert got[1].all()


# --- chunking and batching ----------------------------------------------------------------


@pytest.mark.parametrize("hidden", [5, 40])
@pytest.mark.parametrize("cell", CELLS)
def test_chunking_does_not_change_the_answer(cell: str, hidden: int) -> None:
    p = _pair(cell, hidden)
    steps, batch = 33, 5
    x, state0, taus = tiny_inputs(batch, steps, seed=11), _state(p.model, batch), _row_taus(batch)
    whole = p.run(x, state0, threshold=taus)
    assert_same_outputs(
        whole, run_chunk_graph(p.dense, x, state0, threshold=taus), f"{cell} H={hidden}"
    )
    for plan in ([1] * steps, [7, 7, 7, 7, 5], [5, 1, 27]):
        state, logits, updates, t = state0, [], [], 0
        for n in plan:
            lo, up, state = p.run(x[:, t : t + n], state, threshold=taus)
            logits.append(lo)
            updates.append(up)
            t += n
        chunked = (np.concatenate(logits, 1), np.concatenate(updates, 1), state)
        assert_same_outputs(chunked, whole, f"{cell} H={hidden} chunks={plan[:5]}")


@pytest.mark.parametrize("hidden", [5, 37, 40, 64])
@pytest.mark.parametrize("cell", CELLS)
def test_a_row_answers_the_same_bits_in_any_batch(cell: str, hidden: int) -> None:
    p = _pair(cell, hidden)
    steps, batch = 17, 9
    x, state = tiny_inputs(batch, steps, seed=13), _state(p.model, batch)
    taus = np.linspace(0.15, 0.6, batch).astype(np.float32)
    lengths = np.array([17, 17, 9, 17, 4, 17, 16, 17, 1])
    full = p.run(x, state, lengths=lengths, threshold=taus)
    # the 4-row blocks of the kernel ran: some neuron updated in at least 4 rows at some step
    assert (full[1][:4].sum(axis=0) == 4).any() and (full[1].sum(axis=0) > 4).any()
    for rows in ([0, 1, 2, 3], [5, 6, 7, 8], [0, 2, 4, 6, 8], [4, 1, 7, 3, 0]):
        got = p.run(x[rows], state[rows], lengths=lengths[rows], threshold=taus[rows])
        for k, i in enumerate(rows):
            label = f"{cell} H={hidden}: row {i} at {k} of {rows}"
            _assert_identical(
                tuple(o[k : k + 1] for o in got), tuple(o[i : i + 1] for o in full), label
            )
    for i in range(batch):
        alone = p.run(
            x[i : i + 1], state[i : i + 1], lengths=lengths[i : i + 1], threshold=taus[i : i + 1]
        )
        _assert_identical(
            alone, tuple(o[i : i + 1] for o in full), f"{cell} H={hidden}: row {i} alone"
        )


def test_concurrent_calls_answer_as_sequential_ones() -> None:
    # the engine calls the kernel from a thread pool; ctypes lets the calls overlap
    p = _pair("lstm", 40)
    jobs = [(tiny_inputs(b, 33, seed=b), _state(p.model, b, seed=b)) for b in (1, 3, 4, 5, 9)]
    copies = [(x.copy(), state.copy()) for x, state in jobs]
    sequential = [p.run(x, state, threshold=_row_taus(len(x))) for x, state in jobs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            futures = [pool.submit(p.run, x, s, threshold=_row_taus(len(x))) for x, s in jobs]
            for k, future in enumerate(futures):
                _assert_identical(future.result(), sequential[k], f"job {k}")
    for (x, state), (x0, state0) in zip(jobs, copies, strict=True):
        assert np.array_equal(x, x0) and np.array_equal(state, state0), "inputs were written"


def test_read_only_inputs_answer_as_writable_ones() -> None:
    # binary frames arrive as read-only views of the received bytes; the kernel takes their
    # address another way and must read the same values
    p = _pair("gru", 37)
    x, state = tiny_inputs(3, 7, seed=5), _state(p.model, 3)
    frozen_x, frozen_state = x.copy(), state.copy()
    frozen_x.flags.writeable = frozen_state.flags.writeable = False
    _assert_identical(p.run(frozen_x, frozen_state), p.run(x, state), "read-only inputs")


# --- bad input and bad weights ------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_bad_shapes_raise_value_error(cell: str) -> None:
    p = _pair(cell, 5)
    x, state = tiny_inputs(2, 3), _state(p.model, 2)
    with pytest.raises(ValueError, match="F=3"):
        p.run(np.zeros((2, 3, TINY_FEATURES + 1), np.float32), state)
    with pytest.raises(ValueError, match=f"S={p.model.state_size}"):
        p.run(x, np.zeros((2, p.model.state_size + 1), np.float32))
    with pytest.raises(ValueError):
        p.run(x, state[:1])  # a state for another batch
    assert p.kernel.state_size == p.model.state_size and p.kernel.cell == cell


@pytest.mark.parametrize("feed", ["lengths", "threshold"])
def test_lengths_or_thresholds_of_another_batch_are_refused(feed: str) -> None:
    p = _pair("gru", 5)
    x, state = tiny_inputs(3, 4), _state(p.model, 3)
    values = {"lengths": [2, 4], "threshold": [0.2, 0.9]}[feed]
    with pytest.raises(Exception, match="Scan"):
        run_chunk_graph(p.dense, x, state, **{feed: values})
    with pytest.raises(ValueError):
        p.run(x, state, **{feed: values})


def test_weights_of_no_chunk_graph_are_refused() -> None:
    tensors = _initializers(_pair("gru", 5).proto)
    with pytest.raises(NativeKernelError):
        NativeKernel({k: v for k, v in tensors.items() if not k.startswith("R_")})


@pytest.mark.parametrize("name", ["R_z", "W_a", "W_out", "bh_n", "std"])
def test_weights_of_another_shape_are_refused_before_any_call(name: str) -> None:
    """The kernel trusts the sizes it is given: a wrong one is refused, naming the weight."""
    tensors = _initializers(_pair("gru", 5).proto)
    shape = tensors[name].shape
    bad = {**tensors, name: np.zeros((*shape[:-1], shape[-1] + 1), np.float32)}
    with pytest.raises(NativeKernelError, match=name):
        NativeKernel(bad)
    missing = {k: v for k, v in tensors.items() if k != name}
    with pytest.raises(NativeKernelError):  # a missing recurrent block: no cell at all
        NativeKernel(missing)


# --- engine and registry ------------------------------------------------------------------


def test_calibration_of_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sarnn_serve.routing.SAMPLE_S", 1e-3)  # the shape, not the timings
    path = tmp_path / "model.onnx"
    path.write_bytes(_pair("gru", 24).proto.SerializeToString())
    engine = Engine(path)
    engine.load_native()
    assert engine.paths == [DENSE, NATIVE]
    cal = calibrate(engine, TINY_FEATURES, 24, NATIVE)
    report = cal.as_dict()
    assert report["path"] == NATIVE and cal.graph == NATIVE
    assert cal.batches == list(BATCHES) and all(d > 0 for d in cal.dense)
    assert all(0.0 <= c <= 1.0 for c in cal.crossover())
    # the thresholds spread the measured mean row rates
    for rates in cal.measured_rates:
        assert len(rates) == len(THRESHOLDS) and 0 <= min(rates) < max(rates) <= 1
    plan = Router("auto", cal).plan([0.1, 0.2])
    assert plan in ([(NATIVE, [0, 1])], [(DENSE, [0, 1])])
