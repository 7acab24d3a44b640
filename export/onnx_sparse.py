"""The sparse chunk graph: the same inputs, outputs and answers as `onnx_graph`'s dense graph,
but each step computes only the gate rows of the neurons that update.

Per step the coordinator decides first (it needs only x_t and h_{t-1}); the neurons that update
in any row of the batch (their union) are found with NonZero, and only their rows of the
recurrent weights are gathered and multiplied; their new values are scattered back into the
state, and every other neuron keeps its value with no work at all.

To make the gathers copies of contiguous rows and the scatter a ScatterND of whole rows, every
per-step tensor inside the loop is neuron-major, [H, B]: the state h^T, the hoisted input
projections gx^T [T,H,B], the coordinator's input part a_x^T and the update mask. So the body
has no transposes, and each gate is one Gemm  R[idx] [K,H] x h^T [H,B] + gx^T[idx] [K,B].

    before the loop: normalise; input projections of every step and block as [T,H,B];
                     the per-step, per-row gate cut thr [T,1,L] (+inf past a row's length)
    loop body:       a = a_x + w_d h; u = [a > thr]; idx = rows where any u;
                     per block: Gemm(R_rows[idx], h, gx[idx]); candidate rows; blend;
                     ScatterND into h (and c)
    after the loop:  the output head on all steps at once; transposes back to [B,T,*]
"""

import numpy as np
import onnx
from onnx import TensorProto, helper

from export.onnx_graph import (
    LENGTHS_DEFAULT,
    CellWeights,
    _blocks,
    _Body,
    _const,
    _vi,
    chunk_model,
    cut_inputs,
    gate_nodes,
    motion_constants,
    split_state,
    state_names,
    state_widths,
)


def _rows(b: _Body, table: str, idx: str) -> str:
    return b.op("Gather", table, idx, axis=0)


def _blend(b: _Body, old_rows: str, new_rows: str, mask_rows: str) -> str:
    """old + u (new - old) on the gathered rows: exact where u = 0."""
    return b.op("Add", old_rows, b.op("Mul", mask_rows, b.op("Sub", new_rows, old_rows)))


def _sparse_step(w: CellWeights, b: _Body) -> None:
    """Scan body: inputs h (c, acc, average), gx_<block>, ax, the cut (`gate_nodes`) and x_t
    with motion features; outputs h_next (c_next, acc_next, average_next), h_t, u_t."""
    u = gate_nodes(w, b, neuron_major=True)  # [H,B]
    any_row = b.op("ReduceMax", u, "axis_b", keepdims=0)  # [H]
    nz = b.op("NonZero", any_row)  # [1,K]
    idx = b.op("Reshape", nz, "flat")  # [K]
    idx2 = b.op("Transpose", nz, perm=[1, 0])  # [K,1]
    hk, uk = _rows(b, "h", idx), _rows(b, u, idx)

    def pre(name: str, bias: str | None = None) -> str:
        c_term = _rows(b, bias or f"gx_{name}", idx)
        return b.op("Gemm", _rows(b, f"R_{name}", idx), "h", c_term)

    if w.cell == "gru":
        r, zc = b.op("Sigmoid", pre("r")), b.op("Sigmoid", pre("z"))
        hn = pre("n", bias="bh_n")
        n = b.op("Tanh", b.op("Add", _rows(b, "gx_n", idx), b.op("Mul", r, hn)))
        new = b.op("Add", hk, b.op("Mul", b.op("Mul", uk, zc), b.op("Sub", n, hk)))
    elif w.cell == "lstm":
        ck = _rows(b, "c", idx)
        c_new = b.op(
            "Add",
            b.op("Mul", b.op("Sigmoid", pre("f")), ck),
            b.op("Mul", b.op("Sigmoid", pre("i")), b.op("Tanh", pre("g"))),
        )
        h_new = b.op("Mul", b.op("Sigmoid", pre("o")), b.op("Tanh", c_new))
        b.out("ScatterND", ["c", idx2, _blend(b, ck, c_new, uk)], "c_next")
        new = _blend(b, hk, h_new, uk)
    else:
        new = _blend(b, hk, b.op("Tanh", pre("c")), uk)
    b.out("ScatterND", ["h", idx2, new], "h_next")
    b.out("Identity", ["h_next"], "h_t")


def build_sparse_chunk_graph(
    w: CellWeights, metadata: dict[str, str] | None = None
) -> onnx.ModelProto:
    """The sparse chunk graph of a GRU, LSTM or RNN SA-RNN (same interface as the dense one)."""
    h = w.hidden
    blocks = _blocks(w)
    init: list[TensorProto] = []
    for name, w_in, b_in, w_h in blocks:
        # input part as [H,F] (for W x^T), bias as a column, recurrent rows [H_out, H_in]
        init += [
            _const(f"Wt_{name}", w_in.T),
            _const(f"b_{name}", b_in[:, None]),
            _const(f"R_{name}", np.ascontiguousarray(w_h.T)),
        ]
    if w.cell == "gru":
        init.append(_const("bh_n", np.split(w.bias_hh, 3)[2][:, None]))
    init += [
        _const("Wt_a", w.coord_w),
        _const("b_a", w.coord_b[:, None]),
        _const("wd", w.coord_d[:, None]),
        _const("mean", w.mean),
        _const("std", w.std),
        _const("alpha", w.alpha),
        _const("Wt_out", w.head_w),
        _const("b_out", w.head_b[:, None]),
        _const("lengths", [LENGTHS_DEFAULT], np.int64),
        _const("threshold", [0.5]),
        _const("axis0", [0], np.int64),
        _const("axis_b", [1], np.int64),
        _const("flat", [-1], np.int64),
        _const("i0", 0, np.int64),
        _const("i1", 1, np.int64),
        _const("axes_t", [1, 2], np.int64),
        _const("axes_l", [0, 1], np.int64),
        _const("pos_inf", np.inf),
        _const("one", 1.0),
        _const("two", 2.0),
    ]
    g = _Body("")
    xn = g.op("Div", g.op("Sub", "x", "mean"), "std")  # [B,T,F]
    xt = g.op("Transpose", xn, perm=[1, 2, 0])  # [T,F,B]
    gx = {name: g.op("Add", g.op("MatMul", f"Wt_{name}", xt), f"b_{name}") for name, *_ in blocks}
    ax = g.op("Add", g.op("MatMul", "Wt_a", xt), "b_a")  # [T,H,B] each
    if w.coord_e is not None:
        init.append(_const("Wt_e", w.coord_e))
        ax = g.op("Add", ax, g.op("MatMul", "Wt_e", g.op("Mul", xt, xt)))
    parts = state_names(w)
    state0 = [g.op("Transpose", part, perm=[1, 0]) for part in split_state(w, g, init)]
    raw = g.op("Transpose", "x", perm=[1, 2, 0])  # [T,F,B]
    if w.coord_v is not None:
        init += motion_constants(w, neuron_major=True)
    tau = g.op("Unsqueeze", "threshold", "axis0")  # [1,L]
    cut = g.op("Div", g.op("Sub", g.op("Mul", tau, "two"), "one"), "alpha")
    steps = g.op("Gather", g.op("Shape", "x"), "i1")
    t_idx = g.op("Range", "i0", steps, "i1")
    valid = g.op(
        "Less",
        g.op("Unsqueeze", t_idx, "axes_t"),
        g.op("Unsqueeze", "lengths", "axes_l"),
    )  # [T,1,L]
    cut_name, cuts = cut_inputs(w, g, init, valid, tau, cut, neuron_major=True)  # [T,1,L]

    b = _Body("b_")
    body_gx = [f"gx_{name}" for name, *_ in blocks]
    _sparse_step(w, b)
    widths = state_widths(w)
    state_in = [_vi(name, [n, "B"]) for name, n in zip(parts, widths, strict=True)]
    state_out = [_vi(f"{name}_next", [n, "B"]) for name, n in zip(parts, widths, strict=True)]
    raw_in = [_vi("x_t", [w.mean.shape[0], "B"])] if w.coord_v is not None else []
    body = helper.make_graph(
        b.nodes,
        f"{w.cell}_sparse_step",
        [
            *state_in,
            *[_vi(v, [h, "B"]) for v in body_gx],
            _vi("ax", [h, "B"]),
            _vi(cut_name, [1, "L"]),
            *raw_in,
        ],
        [*state_out, _vi("h_t", [h, "B"]), _vi("u_t", [h, "B"], TensorProto.BOOL)],
    )
    scan_inputs = [*gx.values(), ax, cuts, *([raw] if raw_in else [])]
    finals = [f"final_{i}" for i in range(len(state0))]
    g.nodes.append(
        helper.make_node(
            "Scan",
            state0 + scan_inputs,
            [*finals, "h_seq", "u_seq"],
            body=body,
            num_scan_inputs=len(scan_inputs),
        )
    )
    logits = g.op("Add", g.op("MatMul", "Wt_out", "h_seq"), "b_out")  # [T,C,B]
    g.out("Transpose", [logits], "logits", perm=[2, 0, 1])
    g.out("Transpose", ["u_seq"], "updates", perm=[2, 0, 1])
    back = [g.op("Transpose", name, perm=[1, 0]) for name in finals]
    if len(back) > 1:
        g.out("Concat", back, "state_out", axis=1)
    else:
        g.out("Identity", back, "state_out")
    return chunk_model(w, g.nodes, init, f"sarnn_{w.cell}_sparse_chunk", metadata)
