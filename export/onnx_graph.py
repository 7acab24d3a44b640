"""Build the SA-RNN chunk graph directly with onnx.helper.

torch's exporters cannot give a loop over a dynamic number of steps without unrolling or fixing
T (docs/architecture.md, "The chunk graph"), so the graph is written by hand: one `Scan` over time
with a small body.

    x [B,T,F], state [B,S], lengths [L] and threshold [L] (L = B, or 1 to broadcast)
    before the loop: normalise, one MatMul + Add per gate block (and the coordinator, with
                     its energy term W_e (x * x) when the model has one) for the
                     input projections of every step, each its own tensor (no Split: a Split
                     of [T,B,*] is a full copy); the per-step, per-row gate cut
                     thr [T,L,1] = (2 tau - 1) / alpha while t < length, +inf after (so nothing
                     updates past a row's length) -- a tiny tensor, scanned alongside
    loop body:       each recurrent Gemm takes its step's input projection as C (the Add is
                     fused), candidate, u = [a > thr_t], s + u (s~ - s); an accumulating
                     coordinator scans the rate (1 - tau) / tau instead of the cut and
                     carries its accumulator as a third state (`gate_nodes`); with motion
                     features the input's moving average (raw) is a fourth, x is scanned
                     too, and the body adds |x_t - xbar| / std W_v to the coordinator
    after the loop:  the output head on all steps at once
    outputs:         logits [B,T,C], updates [B,T,H] bool, state_out [B,S]

For the GRU the z rows are negated so that Sigmoid yields 1 - z, and the r and z biases of
both projections are folded into the hoisted term; the body has 17 nodes and no Split.
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
    coord_e: np.ndarray | None = None  # [H, F]: energy features W_e (x * x), if the model has them
    phase: np.ndarray | None = None  # [H]: the accumulating coordinator's levels, if it has one
    coord_v: np.ndarray | None = None  # [H, F]: motion features W_v |x_t - xbar|, if it has them
    smoothing: float = 0.0  # the moving average's beta, with motion features
    mask_table: np.ndarray | None = None  # [P, H] bool: a random mask's pattern, for that baseline

    @property
    def hidden(self) -> int:
        return self.coord_d.shape[0]


def _const(name: str, array: np.ndarray | float | int, dtype=np.float32) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def _vi(name: str, shape: list, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


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

    def out(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        """A node whose output gets a fixed name (a graph output)."""
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output


def _blocks(w: CellWeights) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Per gate block: name, input weight [F, H] and bias [H] of the hoisted term, and the
    recurrent weight [H, H]. Coordinator last (its recurrent part is the diagonal w_d)."""
    h = w.hidden
    g = w.weight_ih.shape[0] // h
    wi, wh = np.split(w.weight_ih, g), np.split(w.weight_hh, g)
    bi, bh = np.split(w.bias_ih, g), np.split(w.bias_hh, g)
    if w.cell == "gru":
        # r: both biases hoisted; z negated (Sigmoid gives 1 - z); n: only b_in hoisted, b_hn
        # stays in the body because r multiplies it.
        blocks = [
            ("r", wi[0], bi[0] + bh[0], wh[0]),
            ("z", -wi[1], -(bi[1] + bh[1]), -wh[1]),
            ("n", wi[2], bi[2], wh[2]),
        ]
    else:
        names = ("i", "f", "g", "o") if w.cell == "lstm" else ("c",)
        blocks = [(n, wi[k], bi[k] + bh[k], wh[k]) for k, n in enumerate(names)]
    return [(n, a.T, b, r.T) for n, a, b, r in blocks]


def _random_gate(w: CellWeights, b: _Body, neuron_major: bool) -> str:
    """A random mask's gate: row `place` of the pattern (a place outside [0, P), or not a
    number, reads as 0), while t < length, when the place moves on by one, wrapping at P."""
    live = b.op("Greater", "rate", "zero")
    inside = b.op("And", b.op("GreaterOrEqual", "place", "zero"), b.op("Less", "place", "period"))
    place = b.op("Where", inside, "place", "zero")
    idx = b.op("Cast", b.op("Reshape", place, "flat"), to=TensorProto.INT64)  # [B]
    row = b.op("Gather", "pattern", idx, axis=1 if neuron_major else 0)
    gate = b.out("And", [row, live], "u_t")
    ahead = b.op("Add", place, "one")
    wrapped = b.op(
        "Where", b.op("GreaterOrEqual", ahead, "period"), b.op("Sub", ahead, "period"), ahead
    )
    b.out("Where", [live, wrapped, "place"], "place_next")
    return b.op("Cast", gate, to=TensorProto.FLOAT)


def gate_nodes(w: CellWeights, b: _Body, neuron_major: bool = False) -> str:
    """The scan body's gate u_t (bool) from ax, wd, h and the per-step cut: u = [a > thr], or
    for an accumulating coordinator acc' = acc + min(rate p, 1) with p = sigmoid(a),
    u = [acc' >= phase] and acc_next = acc' - u, where rate > 0 (past a row's length rate is
    0 and nothing changes, whatever the padding's a); with motion features a gains
    |x_t - xbar| / std W_v and the moving average xbar moves by beta (x_t - xbar) while
    t < length; a random mask reads its pattern (`_random_gate`). Returns u as float."""
    if w.mask_table is not None:
        return _random_gate(w, b, neuron_major)
    ax = "ax"
    if w.coord_v is not None:
        change = b.op("Sub", "x_t", "average")
        deviation = b.op("Div", b.op("Abs", change), "std_in")
        term = (
            b.op("MatMul", "W_vt", deviation) if neuron_major else b.op("MatMul", deviation, "W_v")
        )
        ax = b.op("Add", ax, term)
    a = b.op("Add", ax, b.op("Mul", "wd", "h"))
    if w.phase is None:
        gate = b.out("Greater", [a, "thr"], "u_t")
        return b.op("Cast", gate, to=TensorProto.FLOAT)
    live = b.op("Greater", "rate", "zero")
    added = b.op("Min", b.op("Mul", "rate", b.op("Sigmoid", a)), "one")
    acc = b.op("Add", "acc", b.op("Where", live, added, "zero"))
    gate = b.out("And", [b.op("GreaterOrEqual", acc, "phase"), live], "u_t")
    u = b.op("Cast", gate, to=TensorProto.FLOAT)
    b.out("Sub", [acc, u], "acc_next")
    if w.coord_v is not None:
        moved = b.op("Add", "average", b.op("Mul", "beta", change))
        b.out("Where", [live, moved, "average"], "average_next")
    return u


def _step(w: CellWeights, b: _Body, gx: dict[str, str]) -> None:
    """Scan body nodes: inputs h (c, acc, average), gx_<block>, ax, the cut (`gate_nodes`) and
    x_t with motion features; outputs h_next (c_next, acc_next, average_next), h_t, u_t."""
    pre = {k: b.op("Gemm", "h", f"R_{k}", v) for k, v in gx.items() if k != "n"}
    u = gate_nodes(w, b)
    if w.cell == "gru":
        r, zc = b.op("Sigmoid", pre["r"]), b.op("Sigmoid", pre["z"])
        hn = b.op("Gemm", "h", "R_n", "bh_n")
        n = b.op("Tanh", b.op("Add", gx["n"], b.op("Mul", r, hn)))
        step = b.op("Mul", b.op("Mul", u, zc), b.op("Sub", n, "h"))
        b.out("Add", ["h", step], "h_next")
    elif w.cell == "lstm":
        c_new = b.op(
            "Add",
            b.op("Mul", b.op("Sigmoid", pre["f"]), "c"),
            b.op("Mul", b.op("Sigmoid", pre["i"]), b.op("Tanh", pre["g"])),
        )
        h_new = b.op("Mul", b.op("Sigmoid", pre["o"]), b.op("Tanh", c_new))
        b.out("Add", ["c", b.op("Mul", u, b.op("Sub", c_new, "c"))], "c_next")
        b.out("Add", ["h", b.op("Mul", u, b.op("Sub", h_new, "h"))], "h_next")
    else:
        h_new = b.op("Tanh", pre["c"])
        b.out("Add", ["h", b.op("Mul", u, b.op("Sub", h_new, "h"))], "h_next")
    b.out("Identity", ["h_next"], "h_t")


def build_chunk_graph(w: CellWeights, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """The chunk graph (docs/architecture.md, "The chunk graph") of a GRU, LSTM or RNN SA-RNN."""
    h = w.hidden
    blocks = _blocks(w)
    init: list[TensorProto] = []
    for name, w_in, b_in, w_h in blocks:
        init += [_const(f"W_{name}", w_in), _const(f"b_{name}", b_in), _const(f"R_{name}", w_h)]
    if w.cell == "gru":
        init.append(_const("bh_n", np.split(w.bias_hh, 3)[2]))
    init += [
        _const("W_a", w.coord_w.T),
        _const("b_a", w.coord_b),
        _const("wd", w.coord_d),
        _const("mean", w.mean),
        _const("std", w.std),
        _const("alpha", w.alpha),
        _const("W_out", w.head_w.T),
        _const("b_out", w.head_b),
        _const("lengths", [LENGTHS_DEFAULT], np.int64),
        _const("threshold", [0.5]),
        _const("axis1", [1], np.int64),
        _const("i0", 0, np.int64),
        _const("i1", 1, np.int64),
        _const("axes_t", [1, 2], np.int64),
        _const("axes_l", [0, 2], np.int64),
        _const("pos_inf", np.inf),
        _const("one", 1.0),
        _const("two", 2.0),
    ]
    g = _Body("")
    xt = g.op("Transpose", "x", perm=[1, 0, 2])  # [T,B,F]
    xn = g.op("Div", g.op("Sub", xt, "mean"), "std")
    gx = {name: g.op("Add", g.op("MatMul", xn, f"W_{name}"), f"b_{name}") for name, *_ in blocks}
    ax = g.op("Add", g.op("MatMul", xn, "W_a"), "b_a")  # [T,B,H] each
    if w.coord_e is not None:
        init.append(_const("W_e", w.coord_e.T))
        ax = g.op("Add", ax, g.op("MatMul", g.op("Mul", xn, xn), "W_e"))
    parts = state_names(w)
    state0 = split_state(w, g, init)
    if w.coord_v is not None:
        init += motion_constants(w, neuron_major=False)
    tau = g.op("Unsqueeze", "threshold", "axis1")  # [L,1]: per row, broadcast over H
    cut = g.op("Div", g.op("Sub", g.op("Mul", tau, "two"), "one"), "alpha")
    steps = g.op("Gather", g.op("Shape", "x"), "i1")
    t_idx = g.op("Range", "i0", steps, "i1")  # [T]
    valid = g.op(
        "Less",
        g.op("Unsqueeze", t_idx, "axes_t"),
        g.op("Unsqueeze", "lengths", "axes_l"),
    )  # [T,L,1]
    cut_name, cuts = cut_inputs(w, g, init, valid, tau, cut)  # [T,L,1]

    b = _Body("b_")
    body_gx = {name: f"gx_{name}" for name, *_ in blocks}
    _step(w, b, body_gx)
    widths = state_widths(w)
    state_in = [_vi(name, ["B", n]) for name, n in zip(parts, widths, strict=True)]
    state_out = [_vi(f"{name}_next", ["B", n]) for name, n in zip(parts, widths, strict=True)]
    raw = [_vi("x_t", ["B", w.mean.shape[0]])] if w.coord_v is not None else []
    body = helper.make_graph(
        b.nodes,
        f"{w.cell}_step",
        [
            *state_in,
            *[_vi(v, ["B", h]) for v in body_gx.values()],
            _vi("ax", ["B", h]),
            _vi(cut_name, ["L", 1]),
            *raw,
        ],
        [*state_out, _vi("h_t", ["B", h]), _vi("u_t", ["B", h], TensorProto.BOOL)],
    )
    scan_inputs = [*gx.values(), ax, cuts, *([xt] if raw else [])]
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
    g.out("Transpose", [logits_tb], "logits", perm=[1, 0, 2])
    g.out("Transpose", ["u_seq"], "updates", perm=[1, 0, 2])
    if len(hidden_names) > 1:
        g.out("Concat", hidden_names, "state_out", axis=1)
    else:
        g.out("Identity", hidden_names, "state_out")
    return chunk_model(w, g.nodes, init, f"sarnn_{w.cell}_chunk", metadata)


def state_names(w: CellWeights) -> list[str]:
    """The scan state's parts, in the flat state's order: h, then c (LSTM), then acc, then the
    input's moving average (motion features)."""
    return [
        "h",
        *(["c"] if w.cell == "lstm" else []),
        *(["acc"] if w.phase is not None else []),
        *(["average"] if w.coord_v is not None else []),
        *(["place"] if w.mask_table is not None else []),
    ]


def state_widths(w: CellWeights) -> list[int]:
    """The width of each part of `state_names`: H, F for the moving average, 1 for the place."""
    widths = {"average": w.mean.shape[0], "place": 1}
    return [widths.get(name, w.hidden) for name in state_names(w)]


def split_state(w: CellWeights, g: _Body, init: list[TensorProto]) -> list[str]:
    """The flat input `state` [B,S] split into its parts (`state_names`), each [B,width]."""
    widths = state_widths(w)
    if len(widths) == 1:
        return ["state"]
    init.append(_const("state_widths", widths, np.int64))
    return g.op("Split", "state", "state_widths", outputs=len(widths), axis=1)


def motion_constants(w: CellWeights, neuron_major: bool) -> list[TensorProto]:
    """The scan body's motion weights (`W_v` [F,H], or `W_vt` [H,F] for a `neuron_major`
    body), the std its deviations are divided by ([F], or [F,1]) and beta."""
    if neuron_major:
        return [
            _const("W_vt", w.coord_v),
            _const("std_in", w.std[:, None]),
            _const("beta", w.smoothing),
        ]
    return [_const("W_v", w.coord_v.T), _const("std_in", w.std), _const("beta", w.smoothing)]


def cut_inputs(
    w: CellWeights,
    g: _Body,
    init: list[TensorProto],
    valid: str,
    tau: str,
    cut: str,
    neuron_major: bool = False,
) -> tuple[str, str]:
    """The per-step, per-row gate input scanned beside x, by body name: `thr` (the cut while
    t < length, +inf after), or for an accumulating coordinator `rate` ((1 - tau) / tau while
    t < length, 0 after), with the levels `phase` as an initializer: [H], or [H, 1] for a
    `neuron_major` body (the sparse graph's [H, B] state); a random mask scans `rate` too (its
    sign alone: whether t < length), with its pattern as an initializer ([P, H], or [H, P])."""
    if w.phase is None and w.mask_table is None:
        return "thr", g.op("Where", valid, cut, "pos_inf")  # a > +inf never holds
    scale = g.op("Div", g.op("Sub", "one", tau), tau)
    init.append(_const("zero", 0.0))
    if w.phase is not None:
        init.append(_const("phase", w.phase[:, None] if neuron_major else w.phase))
    else:
        table = w.mask_table.T if neuron_major else w.mask_table
        init += [
            _const("pattern", np.ascontiguousarray(table), np.bool_),
            _const("period", float(w.mask_table.shape[0])),
        ]
        if not neuron_major:
            init.append(_const("flat", [-1], np.int64))
    return "rate", g.op("Where", valid, scale, "zero")


def chunk_model(
    w: CellWeights,
    nodes: list[onnx.NodeProto],
    initializers: list[TensorProto],
    name: str,
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """A chunk graph's model: its nodes behind the interface every chunk graph shares."""
    h, f = w.hidden, w.mean.shape[0]
    c = w.head_b.shape[0]
    s = sum(state_widths(w))
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
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
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
