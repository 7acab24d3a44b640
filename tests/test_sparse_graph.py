"""The sparse chunk graph (export.onnx_sparse) against the dense one (export.onnx_graph).

Same inputs and outputs; per step only the gate rows of the neurons that update in some row of
the batch are computed. It must give the dense graph's answers: the same update masks exactly,
logits and state within 1e-5, for every cell, batch, chunking, padding and threshold.
"""

from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest

pytest.importorskip("torch")

import onnx
import onnxruntime as ort
import torch

from export.model import CELLS, GATES, SARNN
from export.onnx_export import build_model, cell_weights
from export.onnx_sparse import build_sparse_chunk_graph
from tests.tiny_models import build_tiny_sarnn, run_chunk_graph, tiny_inputs

pytestmark = pytest.mark.train  # needs the training extra

ATOL = 1e-5
CLOSED, OPEN = 0.999, 0.001
KNOWN_ORT_WARNINGS = (
    "Initializer lengths appears in graph inputs",
    "Initializer threshold appears in graph inputs",
)
Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Graphs:
    """A tiny SA-RNN with sessions of its dense and sparse chunk graphs."""

    model: SARNN
    sparse_proto: onnx.ModelProto
    dense: ort.InferenceSession
    sparse: ort.InferenceSession


def _session(proto: onnx.ModelProto, log_severity_level: int = 3) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = log_severity_level
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@cache
def _graphs(cell: str, hidden: int, coord_scale: float = 1.0) -> Graphs:
    """Both graphs of `build_tiny_sarnn(cell, hidden=hidden)`, its coordinator weights (W_x and
    w_d) scaled by `coord_scale`; the sparse graph passes the full checker."""
    model = build_tiny_sarnn(cell, hidden=hidden)
    with torch.no_grad():
        model.coord_x.weight.mul_(coord_scale)
        model.coord_d.mul_(coord_scale)
    proto = build_sparse_chunk_graph(cell_weights(model))
    onnx.checker.check_model(proto, full_check=True)
    return Graphs(model, proto, _session(build_model(model)), _session(proto))


def _both(g: Graphs, *args, **kwargs) -> tuple[Outputs, Outputs]:
    """(sparse, dense) outputs for the same feeds."""
    return run_chunk_graph(g.sparse, *args, **kwargs), run_chunk_graph(g.dense, *args, **kwargs)


def _assert_same(got: Outputs, want: Outputs, label: str = "") -> None:
    """Masks identical; logits and state within ATOL."""
    assert got[1].dtype == np.bool_ and got[1].shape == want[1].shape, label
    where = np.argwhere(got[1] != want[1])
    assert where.size == 0, f"{label}: {len(where)} updates differ, first at [b,t,h] {where[:3]}"
    np.testing.assert_allclose(got[0], want[0], atol=ATOL, rtol=0, err_msg=f"{label}: logits")
    np.testing.assert_allclose(got[2], want[2], atol=ATOL, rtol=0, err_msg=f"{label}: state")


def _state(model: SARNN, batch: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.5 * rng.standard_normal((batch, model.state_size))).astype(np.float32)


def _row_taus(batch: int) -> np.ndarray:
    return np.linspace(0.2, 0.8, batch).astype(np.float32) if batch > 1 else np.array([0.3])


def _torch(model: SARNN, x: np.ndarray, state: np.ndarray, **kwargs) -> Outputs:
    with torch.no_grad():
        out = model(torch.from_numpy(x), torch.from_numpy(state), deterministic=True, **kwargs)
    return out.logits.numpy(), out.updates.numpy() > 0, out.state.numpy()


def _cut(model: SARNN, tau: float) -> float:
    return (2 * tau - 1) / model.alpha


# --- the graph itself ---------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [1, 40])
@pytest.mark.parametrize("cell", CELLS)
def test_sparse_graph_passes_checker_with_the_dense_interface(cell, hidden, capfd):
    g = _graphs(cell, hidden)
    proto = g.sparse_proto
    onnx.checker.check_model(proto, full_check=True)
    dense = build_model(g.model)
    assert list(proto.graph.input) == list(dense.graph.input)
    assert list(proto.graph.output) == list(dense.graph.output)

    # One Scan whose body computes each gate block as Gemm(Gather(R), h, Gather(gx or bias)).
    scans = [n for n in proto.graph.node if n.op_type == "Scan"]
    assert len(scans) == 1
    body = next(onnx.helper.get_attribute_value(a) for a in scans[0].attribute if a.name == "body")
    made_by = {out: node.op_type for node in body.node for out in node.output}
    gemms = [n for n in body.node if n.op_type == "Gemm"]
    assert len(gemms) == GATES[cell]  # the GRU's n block: R_n h + b_hn, r applied after
    for gemm in gemms:
        assert made_by[gemm.input[0]] == "Gather" and made_by[gemm.input[2]] == "Gather"
    assert {"NonZero", "ScatterND"} <= set(made_by.values())

    capfd.readouterr()
    sess = _session(proto, log_severity_level=2)
    assert [i.name for i in sess.get_inputs()] == ["x", "state"]
    assert [i.name for i in sess.get_overridable_initializers()] == ["lengths", "threshold"]
    run_chunk_graph(
        sess, np.zeros((2, 4, 3), np.float32), np.zeros((2, g.model.state_size), np.float32)
    )
    log = capfd.readouterr().err
    problems = [
        line
        for line in log.splitlines()
        if ("[W:" in line or "[E:" in line) and not any(k in line for k in KNOWN_ORT_WARNINGS)
    ]
    assert problems == []


# --- parity with the dense graph ----------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 7, 64])
@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("hidden", [1, 40])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_dense_graph(cell, hidden, batch, steps):
    g = _graphs(cell, hidden)
    x = tiny_inputs(batch, steps, seed=batch * 100 + steps)
    zeros = np.zeros((batch, g.model.state_size), np.float32)
    for state_label, state in (("zero state", zeros), ("non-zero state", _state(g.model, batch))):
        for threshold in ([0.5], _row_taus(batch)):
            label = f"{cell} H={hidden} B={batch} T={steps} {state_label} threshold={threshold}"
            sparse, dense = _both(g, x, state, threshold=threshold)
            assert sparse[0].shape == (batch, steps, g.model.config.n_classes), label
            assert sparse[2].shape == state.shape, label
            _assert_same(sparse, dense, label)
    if hidden > 1 and batch < 8 and steps > 1:
        # Not a trivial case: some steps skip neurons (0 < K < H) in the last run.
        k = sparse[1].any(axis=0).sum(axis=-1)
        assert ((k > 0) & (k < hidden)).any()


@pytest.mark.parametrize("steps", [1, 7, 64])
@pytest.mark.parametrize("batch", [3, 8])
@pytest.mark.parametrize("hidden", [1, 40])
@pytest.mark.parametrize("cell", CELLS)
def test_padding_leaves_state_untouched_past_each_length(cell, hidden, batch, steps):
    g = _graphs(cell, hidden)
    lengths = np.array([steps, 0, 1, steps // 2, steps - 1, 3, steps, 2][:batch]).clip(0, steps)
    taus = _row_taus(batch)
    x = tiny_inputs(batch, steps, seed=21)
    state = _state(g.model, batch)
    garbage = x.copy()
    rng = np.random.default_rng(1)
    for i, n in enumerate(lengths):
        garbage[i, n:] = rng.choice([1e3, -1e4, 1e30], size=garbage[i, n:].shape)
    label = f"{cell} H={hidden} B={batch} T={steps} lengths={lengths.tolist()}"
    sparse, dense = _both(g, garbage, state, lengths=lengths, threshold=taus)
    _assert_same(sparse, dense, label)
    logits, updates, state_out = sparse
    for i, n in enumerate(lengths):
        assert not updates[i, n:].any(), f"{label}: row {i} updated past its length"
        if n == 0:
            assert np.array_equal(state_out[i], state[i]), f"{label}: row {i} of length 0"
            continue
        # The row alone, unpadded, up to its length.
        alone = run_chunk_graph(g.sparse, x[i : i + 1, :n], state[i : i + 1], threshold=[taus[i]])
        assert np.array_equal(updates[i : i + 1, :n], alone[1]), f"{label}: row {i}"
        np.testing.assert_allclose(logits[i : i + 1, :n], alone[0], atol=ATOL, rtol=0)
        np.testing.assert_allclose(state_out[i : i + 1], alone[2], atol=ATOL, rtol=0)
        # Past its length the row keeps predicting from its frozen state.
        frozen = np.broadcast_to(alone[0][0, -1], logits[i, n:].shape)
        np.testing.assert_allclose(logits[i, n:], frozen, atol=ATOL, rtol=0)

    # One length broadcast to every row is the same as that length given per row.
    one, each = steps // 2, [steps // 2] * batch
    broadcast, per_row = (
        run_chunk_graph(g.sparse, x, state, lengths=[one]),
        run_chunk_graph(g.sparse, x, state, lengths=each),
    )
    for a, b in zip(broadcast, per_row, strict=True):
        assert np.array_equal(a, b)
    _assert_same(
        broadcast, run_chunk_graph(g.dense, x, state, lengths=[one]), f"{label} lengths=[{one}]"
    )


@pytest.mark.parametrize("steps", [1, 64])
@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("hidden", [1, 40])
@pytest.mark.parametrize("cell", CELLS)
def test_thresholds_that_close_or_open_every_gate(cell, hidden, batch, steps):
    # The stock tiny coordinator reaches |a| > (2 * 0.999 - 1) / 1.6; scaled by 0.05 it does not,
    # so tau = 0.999 closes every gate (K = 0 at every step) and tau = 0.001 opens every one.
    g = _graphs(cell, hidden, coord_scale=0.05)
    model, h = g.model, hidden
    x, state = tiny_inputs(batch, steps, seed=5), _state(g.model, batch)
    with torch.no_grad():
        coord = model(
            torch.from_numpy(x), torch.from_numpy(state), deterministic=True, threshold=CLOSED
        )
    assert np.abs(coord.coordinator.numpy()).max() < _cut(model, CLOSED)
    label = f"{cell} H={hidden} B={batch} T={steps}"

    sparse, dense = _both(g, x, state, threshold=[CLOSED])
    _assert_same(sparse, dense, f"{label} threshold={CLOSED}")
    assert not sparse[1].any()
    assert np.array_equal(sparse[2], state), "no update: the state must be exactly the input"
    head = state[:, :h] @ model.head.weight.detach().numpy().T + model.head.bias.detach().numpy()
    np.testing.assert_allclose(sparse[0], np.repeat(head[:, None], steps, 1), atol=ATOL, rtol=0)

    sparse, dense = _both(g, x, state, threshold=[OPEN])
    _assert_same(sparse, dense, f"{label} threshold={OPEN}")
    assert sparse[1].all()
    plain = _torch(model, x, state, force_gate=1.0)  # the plain torch cell
    np.testing.assert_allclose(sparse[0], plain[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(sparse[2], plain[2], atol=ATOL, rtol=0)

    if batch > 1:
        taus = np.where(np.arange(batch) % 2 == 0, CLOSED, OPEN)
        sparse, dense = _both(g, x, state, threshold=taus)
        _assert_same(sparse, dense, f"{label} threshold={taus.tolist()}")
        assert not sparse[1][::2].any() and sparse[1][1::2].all()
        assert np.array_equal(sparse[2][::2], state[::2])
        np.testing.assert_allclose(sparse[2][1::2], plain[2][1::2], atol=ATOL, rtol=0)


# --- chunking -----------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [1, 40])
@pytest.mark.parametrize("cell", CELLS)
def test_chunking_does_not_change_the_answer(cell, hidden):
    g = _graphs(cell, hidden)
    steps, batch = 64, 3
    x, state0 = tiny_inputs(batch, steps, seed=11), _state(g.model, batch)
    taus = _row_taus(batch)
    wholes = {}
    for name, sess in (("sparse", g.sparse), ("dense", g.dense)):
        whole = wholes[name] = run_chunk_graph(sess, x, state0, threshold=taus)
        for plan in ([1] * steps, [7] * 9 + [1], [5, 1, 30, 28]):
            assert sum(plan) == steps
            state, logits, updates, t = state0, [], [], 0
            for n in plan:
                lo, up, state = run_chunk_graph(sess, x[:, t : t + n], state, threshold=taus)
                logits.append(lo)
                updates.append(up)
                t += n
            chunked = (np.concatenate(logits, 1), np.concatenate(updates, 1), state)
            _assert_same(chunked, whole, f"{cell} H={hidden} {name} chunks={plan[:4]}...")
    _assert_same(wholes["sparse"], wholes["dense"], f"{cell} H={hidden} whole")


# --- parity with PyTorch ------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 37])
@pytest.mark.parametrize("hidden", [1, 40])
@pytest.mark.parametrize("cell", CELLS)
def test_sparse_graph_matches_pytorch(cell, hidden, steps):
    g = _graphs(cell, hidden)
    model, batch = g.model, 4
    x, state = tiny_inputs(batch, steps, seed=steps), _state(model, batch)
    taus = [0.3, 0.5, 0.8, 0.5]
    label = f"{cell} H={hidden} T={steps}"
    for tau in (0.3, 0.5, 0.8):
        with torch.no_grad():
            coord = model(
                torch.from_numpy(x), torch.from_numpy(state), deterministic=True, threshold=tau
            )
        assert np.abs(coord.coordinator.numpy() - _cut(model, tau)).min() > 1e-5, "near tie"
        got, want = (
            run_chunk_graph(g.sparse, x, state, threshold=[tau]),
            _torch(model, x, state, threshold=tau),
        )
        _assert_same(got, want, f"{label} tau={tau}")
    # Per-row thresholds: each row as torch runs it alone with its own threshold.
    got = run_chunk_graph(g.sparse, x, state, threshold=taus)
    for i, tau in enumerate(taus):
        want = _torch(model, x[i : i + 1], state[i : i + 1], threshold=tau)
        _assert_same(tuple(o[i : i + 1] for o in got), want, f"{label} row {i} tau={tau}")
    if hidden > 1 and steps > 1:
        assert 0.05 < got[1].mean() < 0.95, "mixed gates expected"
