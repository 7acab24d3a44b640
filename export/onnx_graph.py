"""Build the SA-RNN chunk graph directly with onnx.helper.

torch's exporters cannot give a loop over a dynamic number of steps without unrolling or fixing
T (shared/design.md 1b), so the graph is written by hand: one `Scan` over time with a small body.

    x [B,T,F], state [B,S], lengths [L] and threshold [L] (L = B, or 1 to broadcast)
    before the loop: normalise, one MatMul for the input projections of all gates and the
                     coordinator at every step; the gate cut (2 tau - 1) / alpha and the
                     lengths mask are folded into the coordinator's input term (-inf past a
                     row's length, so nothing there updates)
    loop body:       recurrent projection, candidate, u = [a > 0], s + u (s~ - s)
    after the loop:  the output head on all steps at once
    outputs:         logits [B,T,C], updates [B,T,H] bool, state_out [B,S]

For the GRU the z rows are negated so that one Sigmoid yields 1 - z, and r and z biases of
both projections are folded into the hoisted term; this keeps the body at 17 nodes.
"""

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
IR_VERSION = 8
LENGTHS_DEFAULT = 2**62


@dataclass
class CellWeights:
    """Weights of a trained SA-RNN as numpy arrays, in torch's layouts."""

    cell: str
    weight_ih: np.ndarray  # [G*H, F]
    weight_hh: np.ndarray  # [G*H, H]
    bias_ih: np.ndarray  # [G*H]
    bias_hh: np.ndarray  # [G*H]
    coord_w: np.ndarray  # [H, F]
    coord_b: np.ndarray  # [H]
    coord_d: np.ndarray  # [H]
    head_w: np.ndarray  # [C, H]
    head_b: np.ndarray  # [C]
    mean: np.ndarray  # [F]
    std: np.ndarray  # [F]
    alpha: float

    @property
    def hidden(self) -> int:
        return self.coord_d.shape[0]


def _const(name: str, array: np.ndarray | float | int, dtype=np.float32) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


class _Body:
    """Collects nodes of one graph and names their outputs."""

    def __init__(self, prefix: str) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.prefix = prefix
        self.count = 0

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs) -> str | list[str]:
        names = []
        for _ in range(outputs):
            self.count += 1
            names.append(f"{self.prefix}{op_type.lower()}_{self.count}")
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names


def _gru_body(w: CellWeights, init: list[TensorProto]) -> tuple[onnx.GraphProto, int]:
    """Scan body for the GRU; returns the body and the width of its hoisted input term."""
    h = w.hidden
    wr, wz, wn = np.split(w.weight_hh, 3)
    init += [
        _const("Wh", np.concatenate([wr, -wz, wn]).T),
        _const("bh", np.concatenate([np.zeros(2 * h), w.bias_hh[2 * h :]])),
        _const("wd", w.coord_d),
    ]
    b = _Body("b_")
    gh = b.op("Gemm", "h", "Wh", "bh")
    gh_rz, gh_n = b.op("Split", gh, "split_rz_n", outputs=2, axis=1)
    rz = b.op("Sigmoid", b.op("Add", "gx_rz", gh_rz))
    r, zc = b.op("Split", rz, outputs=2, axis=1, num_outputs=2)
    n = b.op("Tanh", b.op("Add", "gx_n", b.op("Mul", r, gh_n)))
    gate = b.op("Greater", b.op("Add", "ax", b.op("Mul", "wd", "h")), "zero")
    b.nodes.append(helper.make_node("Cast", [gate], ["u_f"], to=TensorProto.FLOAT))
    b.nodes.append(helper.make_node("Identity", [gate], ["u_t"]))
    step = b.op("Mul", b.op("Mul", "u_f", zc), b.op("Sub", n, "h"))
    b.nodes.append(helper.make_node("Add", ["h", step], ["h_next"]))
    b.nodes.append(helper.make_node("Identity", ["h_next"], ["h_t"]))
    body_init = [_const("split_rz_n", [2 * h, h], np.int64), _const("zero", 0.0)]
    graph = helper.make_graph(
        b.nodes,
        "gru_step",
        [
            _vi("h", ["B", h]),
            _vi("gx_rz", ["B", 2 * h]),
            _vi("gx_n", ["B", h]),
            _vi("ax", ["B", h]),
        ],
        [_vi("h_next", ["B", h]), _vi("h_t", ["B", h]), _vi("u_t", ["B", h], TensorProto.BOOL)],
        initializer=body_init,
    )
    return graph, 3 * h


def _gated_update(b: _Body, cand: str, prev: str, u: str) -> str:
    return b.op("Add", prev, b.op("Mul", u, b.op("Sub", cand, prev)))


def _lstm_rnn_body(w: CellWeights, init: list[TensorProto]) -> tuple[onnx.GraphProto, int]:
    """Scan body for the LSTM (state h, c) or the tanh RNN (state h)."""
    h = w.hidden
    g = w.weight_hh.shape[0] // h
    init += [_const("Wh", w.weight_hh.T), _const("wd", w.coord_d)]
    b = _Body("b_")
    pre = b.op("Add", "gx", b.op("MatMul", "h", "Wh"))
    gate = b.op("Greater", b.op("Add", "ax", b.op("Mul", "wd", "h")), "zero")
    u = b.op("Cast", gate, to=TensorProto.FLOAT)
    b.nodes.append(helper.make_node("Identity", [gate], ["u_t"]))
    state_in = [_vi("h", ["B", h])]
    state_out = [_vi("h_next", ["B", h])]
    if w.cell == "lstm":
        i, f, gg, o = b.op("Split", pre, outputs=4, axis=1, num_outputs=4)
        c_new = b.op(
            "Add",
            b.op("Mul", b.op("Sigmoid", f), "c"),
            b.op("Mul", b.op("Sigmoid", i), b.op("Tanh", gg)),
        )
        h_new = b.op("Mul", b.op("Sigmoid", o), b.op("Tanh", c_new))
        b.nodes.append(helper.make_node("Identity", [_gated_update(b, c_new, "c", u)], ["c_next"]))
        state_in.append(_vi("c", ["B", h]))
        state_out.append(_vi("c_next", ["B", h]))
    else:
        h_new = b.op("Tanh", pre)
    b.nodes.append(helper.make_node("Identity", [_gated_update(b, h_new, "h", u)], ["h_next"]))
    b.nodes.append(helper.make_node("Identity", ["h_next"], ["h_t"]))
    graph = helper.make_graph(
        b.nodes,
        f"{w.cell}_step",
        [*state_in, _vi("gx", ["B", g * h]), _vi("ax", ["B", h])],
        [*state_out, _vi("h_t", ["B", h]), _vi("u_t", ["B", h], TensorProto.BOOL)],
        initializer=[_const("zero", 0.0)],
    )
    return graph, g * h


def _vi(name: str, shape: list, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _input_projection(w: CellWeights) -> tuple[np.ndarray, np.ndarray]:
    """Hoisted [F, G*H + H] weight and bias: the cell's input gates, then the coordinator."""
    h = w.hidden
    if w.cell == "gru":
        wr, wz, wn = np.split(w.weight_ih, 3)
        bi, bh = np.split(w.bias_ih, 3), np.split(w.bias_hh, 3)
        gates_w = np.concatenate([wr, -wz, wn])
        gates_b = np.concatenate([bi[0] + bh[0], -(bi[1] + bh[1]), bi[2]])
    else:
        gates_w, gates_b = w.weight_ih, w.bias_ih + w.bias_hh
    assert gates_w.shape[0] % h == 0
    return (
        np.concatenate([gates_w, w.coord_w]).T,
        np.concatenate([gates_b, w.coord_b]),
    )


def build_chunk_graph(w: CellWeights, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """The chunk graph of design section 2 for a GRU, LSTM or RNN SA-RNN."""
    h, f = w.hidden, w.mean.shape[0]
    c = w.head_b.shape[0]
    s = 2 * h if w.cell == "lstm" else h
    init: list[TensorProto] = []
    body, gates_width = (_gru_body if w.cell == "gru" else _lstm_rnn_body)(w, init)
    w_in, b_in = _input_projection(w)
    init += [
        _const("mean", w.mean),
        _const("std", w.std),
        _const("W_in", w_in),
        _const("b_in", b_in),
        _const("alpha", w.alpha),
        _const("W_out", w.head_w.T),
        _const("b_out", w.head_b),
        _const("lengths", [LENGTHS_DEFAULT], np.int64),
        _const("threshold", [0.5]),
        _const("axis1", [1], np.int64),
        _const("split_in", [gates_width, h], np.int64),
        _const("i0", 0, np.int64),
        _const("i1", 1, np.int64),
        _const("axes_t", [1, 2], np.int64),
        _const("axes_l", [0, 2], np.int64),
        _const("neg_inf", -np.inf),
        _const("one", 1.0),
        _const("two", 2.0),
    ]
    g = _Body("")
    xt = g.op("Transpose", "x", perm=[1, 0, 2])  # [T,B,F]
    xn = g.op("Div", g.op("Sub", xt, "mean"), "std")
    proj = g.op("Add", g.op("MatMul", xn, "W_in"), "b_in")  # [T,B,G*H+H]
    gx, ax = g.op("Split", proj, "split_in", outputs=2, axis=2)
    tau = g.op("Unsqueeze", "threshold", "axis1")  # [L,1]: per row, broadcast over H
    cut = g.op("Div", g.op("Sub", g.op("Mul", tau, "two"), "one"), "alpha")
    steps = g.op("Gather", g.op("Shape", "x"), "i1")
    t_idx = g.op("Range", "i0", steps, "i1")  # [T]
    valid = g.op(
        "Less",
        g.op("Unsqueeze", t_idx, "axes_t"),
        g.op("Unsqueeze", "lengths", "axes_l"),
    )  # [T,L,1]
    ax_cut = g.op("Where", valid, g.op("Sub", ax, cut), "neg_inf")  # [T,B,H]
    if w.cell == "gru":
        gx_rz, gx_n = g.op("Split", gx, "split_gru_in", outputs=2, axis=2)
        init.append(_const("split_gru_in", [2 * h, h], np.int64))
        scan_inputs = [gx_rz, gx_n, ax_cut]
        state0 = ["state"]
    elif w.cell == "lstm":
        h0, c0 = g.op("Split", "state", outputs=2, axis=1, num_outputs=2)
        scan_inputs = [gx, ax_cut]
        state0 = [h0, c0]
    else:
        scan_inputs = [gx, ax_cut]
        state0 = ["state"]
    hidden_names = [f"final_{i}" for i in range(len(state0))]
    g.nodes.append(
        helper.make_node(
            "Scan",
            state0 + scan_inputs,
            [*hidden_names, "h_seq", "u_seq"],
            body=body,
            num_scan_inputs=len(scan_inputs),
        )
    )
    logits_tb = g.op("Add", g.op("MatMul", "h_seq", "W_out"), "b_out")
    g.nodes.append(helper.make_node("Transpose", [logits_tb], ["logits"], perm=[1, 0, 2]))
    g.nodes.append(helper.make_node("Transpose", ["u_seq"], ["updates"], perm=[1, 0, 2]))
    if w.cell == "lstm":
        g.nodes.append(helper.make_node("Concat", hidden_names, ["state_out"], axis=1))
    else:
        g.nodes.append(helper.make_node("Identity", hidden_names, ["state_out"]))
    inputs = [
        _vi("x", ["B", "T", f]),
        _vi("state", ["B", s]),
        _vi("lengths", ["L"], TensorProto.INT64),
        _vi("threshold", ["L"]),
    ]
    outputs = [
        _vi("logits", ["B", "T", c]),
        _vi("updates", ["B", "T", h], TensorProto.BOOL),
        _vi("state_out", ["B", s]),
    ]
    graph = helper.make_graph(g.nodes, f"sarnn_{w.cell}_chunk", inputs, outputs, initializer=init)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="sarnn-serve export",
    )
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model
