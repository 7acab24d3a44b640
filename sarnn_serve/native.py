"""The native engine path: the chunk computed by the package's C kernel (`csrc/step_kernel.c`,
built at install as the `sarnn_serve._step_kernel` library and called through ctypes).

It reads its weights from `model.onnx` itself (`onnx_initializers`), so it cannot drift from the
graph it stands in for, and it answers as that graph does: the same masks, logits and state to
float32 rounding. Per step it reads only the weight rows of the neurons that update, where they
lie, so its cost follows each row's update count; there is no per-node runtime overhead either.
Where the library was not built (no C compiler at install) the engine runs without this path.
"""

import ctypes
import importlib.util
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

from sarnn_serve.onnx_initializers import OnnxFormatError, read_initializers

LIBRARY = "sarnn_serve._step_kernel"
CELL_BLOCKS = {"gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o"), "rnn": ("c",)}
CELL_CODES = {"gru": 0, "lstm": 1, "rnn": 2}
ABI_VERSION = 3  # SARNN_ABI_VERSION of csrc/step_kernel.c
# `verify`'s probe: one row per threshold, with these lengths, and its tolerance (the kernel
# matches the graph to about 1e-6; a head or cell with other weights differs by far more)
PROBE_THRESHOLDS = (0.5, 0.3, 0.7, 0.5, 0.1)
PROBE_LENGTHS = (8, 3, 8, 0, 5)
PROBE_STEPS = 8
PROBE_TOLERANCE = 1e-4
_FLOATS = ctypes.POINTER(ctypes.c_float)


class NativeKernelError(RuntimeError):
    """The graph's weights are not those of a chunk graph the kernel computes."""


class _Weights(ctypes.Structure):
    _fields_ = [
        *[(n, ctypes.c_int32) for n in ("cell", "hidden", "features", "classes", "blocks")],
        ("alpha", ctypes.c_float),
        *[
            (n, _FLOATS)
            for n in (
                "mean",
                "std",
                "w_in",
                "b_in",
                "w_rec",
                "b_hn",
                "w_coord",
                "b_coord",
                "w_diag",
                "w_out",
                "b_out",
                "w_energy",
                "phase",
                "w_motion",
            )
        ],
        ("pattern", ctypes.POINTER(ctypes.c_uint8)),
        ("period", ctypes.c_int32),
        ("smoothing", ctypes.c_float),
    ]


def library_path() -> Path | None:
    """Where the built kernel library is, or None if it was not built."""
    spec = importlib.util.find_spec(LIBRARY)
    return Path(spec.origin) if spec is not None and spec.origin else None


def load_library(path: Path) -> ctypes.CDLL:
    """The kernel library at `path`, checked against this module's idea of it: the ABI version
    and the size of the weight struct (`_Weights` mirrors the C struct by hand; a library
    built from other source would read its fields at other offsets). NativeKernelError says
    why a library cannot be used."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise NativeKernelError(f"{path}: cannot be loaded: {exc}") from None
    try:
        lib.sarnn_abi_version.restype = lib.sarnn_weights_size.restype = ctypes.c_size_t
        version, size = lib.sarnn_abi_version(), lib.sarnn_weights_size()
        chunk = lib.sarnn_chunk
    except AttributeError as exc:
        raise NativeKernelError(f"{path}: not this version's kernel ({exc}); reinstall") from None
    if (version, size) != (ABI_VERSION, ctypes.sizeof(_Weights)):
        raise NativeKernelError(
            f"{path}: built for ABI {version} with a {size}-byte weight struct, this module "
            f"expects ABI {ABI_VERSION} and {ctypes.sizeof(_Weights)} bytes; reinstall"
        )
    chunk.restype = ctypes.c_int
    chunk.argtypes = [ctypes.POINTER(_Weights), ctypes.c_int, ctypes.c_int, *[ctypes.c_void_p] * 7]
    return lib


@cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    """The package's kernel library, or None and why not."""
    path = library_path()
    if path is None:
        return None, "not built (the package was installed without a C compiler)"
    try:
        return load_library(path), ""
    except NativeKernelError as exc:
        return None, str(exc)


def available() -> bool:
    """Whether the kernel library was built and loads (`unavailable_reason` says why not)."""
    return _library()[0] is not None


def unavailable_reason() -> str:
    """Why the kernel library cannot be used ("" if it can)."""
    return _library()[1]


def _cell(tensors: dict[str, np.ndarray]) -> str:
    for cell, blocks in CELL_BLOCKS.items():
        if all(f"R_{b}" in tensors for b in blocks):
            return cell
    raise NativeKernelError("no recurrent weights of a GRU, LSTM or RNN chunk graph")


def _check_shapes(t: dict[str, np.ndarray], blocks: tuple[str, ...], cell: str) -> None:
    """Every weight the kernel reads, with the shape the chunk graph gives it (the kernel
    trusts these sizes: a wrong one would read past an array)."""
    try:
        h, f, c = t["wd"].shape[0], t["mean"].shape[0], t["b_out"].shape[0]
    except (KeyError, IndexError):
        raise NativeKernelError("no coordinator, normalisation or output head weights") from None
    want = {"std": (f,), "W_a": (f, h), "b_a": (h,), "wd": (h,), "W_out": (h, c), "alpha": ()}
    for b in blocks:
        want |= {f"W_{b}": (f, h), f"b_{b}": (h,), f"R_{b}": (h, h)}
    if cell == "gru":
        want["bh_n"] = (h,)
    if "W_e" in t:
        want["W_e"] = (f, h)
    if "phase" in t:
        want["phase"] = (h,)
    if "pattern" in t:
        if t["pattern"].ndim != 2 or t["pattern"].shape[1] != h or t["pattern"].dtype != bool:
            raise NativeKernelError(f"pattern: shape {t['pattern'].shape}, expected (P, {h}) bool")
        want["period"] = ()
    if "W_v" in t:
        if "phase" not in t:
            raise NativeKernelError("motion features (W_v) without an accumulator (phase)")
        want["W_v"] = (f, h)
        want["std_in"] = (f,)
        want["beta"] = ()
    for name, shape in want.items():
        got = t[name].shape if name in t else None
        if got != shape:
            raise NativeKernelError(f"weight {name}: shape {got}, expected {shape}")


def _rows(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def _address(array: np.ndarray) -> int:
    """Where a C-contiguous array's data lies: through the buffer protocol, a third of the cost
    of `array.ctypes.data`, which a call pays seven times (read-only or empty arrays take the
    slow way)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError):
        return array.ctypes.data


def _per_row(values: np.ndarray | None, batch: int, dtype: type, default: float) -> np.ndarray:
    """A graph input of shape [B] or [1] (or None: the graph's default) as B contiguous values;
    ValueError for any other size, as the graph refuses it."""
    if values is None:
        return np.full(batch, default, dtype)
    if len(values) == batch:
        return np.ascontiguousarray(values, dtype=dtype)
    if len(values) == 1:
        return np.full(batch, values[0], dtype)
    raise ValueError(f"{len(values)} values for {batch} rows (give {batch} or 1)")


class NativeKernel:
    """The kernel bound to one model's weights: the initializers of its dense chunk graph, by
    name (`from_graph` reads them from the file); `library`: another build of the kernel
    (`load_library`) instead of the package's."""

    def __init__(self, t: dict[str, np.ndarray], library: ctypes.CDLL | None = None) -> None:
        lib, why = (library, "") if library is not None else _library()
        if lib is None:
            raise NativeKernelError(f"the kernel library: {why}")
        self._lib = lib
        self.cell = _cell(t)
        blocks = CELL_BLOCKS[self.cell]
        _check_shapes(t, blocks, self.cell)
        # the dense graph multiplies x [.,F] @ W [F,H] and h [.,H] @ R [H,H]; the kernel reads
        # one row per output neuron
        self._arrays = {
            "mean": _rows(t["mean"]),
            "std": _rows(t["std"]),
            "w_in": _rows(np.concatenate([t[f"W_{b}"].T for b in blocks])),
            "b_in": _rows(np.concatenate([t[f"b_{b}"] for b in blocks])),
            "w_rec": _rows(np.concatenate([t[f"R_{b}"].T for b in blocks])),
            "b_hn": _rows(t.get("bh_n", np.zeros_like(t["wd"]))),
            "w_coord": _rows(t["W_a"]),
            "b_coord": _rows(t["b_a"]),
            "w_diag": _rows(t["wd"]),
            "w_out": _rows(t["W_out"].T),
            "b_out": _rows(t["b_out"]),
        }
        if "W_e" in t:
            self._arrays["w_energy"] = _rows(t["W_e"])
        if "phase" in t:
            self._arrays["phase"] = _rows(t["phase"])
        if "W_v" in t:
            self._arrays["w_motion"] = _rows(t["W_v"])
        self.hidden = int(t["wd"].shape[0])
        self.features = int(t["mean"].shape[0])
        self.classes = int(t["b_out"].shape[0])
        parts = 1 + (self.cell == "lstm") + ("phase" in t)
        self.state_size = parts * self.hidden + (self.features if "W_v" in t else 0)
        self._pattern = None
        if "pattern" in t:
            self._pattern = np.ascontiguousarray(t["pattern"], dtype=np.uint8)
            self.state_size += 1
        self._weights = _Weights(  # by name: the struct's field order is the C header's
            cell=CELL_CODES[self.cell],
            hidden=self.hidden,
            features=self.features,
            classes=self.classes,
            blocks=len(blocks),
            alpha=float(t["alpha"]),
            **{name: a.ctypes.data_as(_FLOATS) for name, a in self._arrays.items()},
        )
        if "W_v" in t:
            self._weights.smoothing = float(t["beta"])
        if self._pattern is not None:
            self._weights.pattern = self._pattern.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
            self._weights.period = int(self._pattern.shape[0])

    @property
    def normalisation(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and std [F] that inputs are normalised by (raw units)."""
        return self._arrays["mean"], self._arrays["std"]

    @classmethod
    def from_graph(cls, graph: Path) -> "NativeKernel":
        """The kernel with the weights of the dense chunk graph at `graph`."""
        try:
            return cls(read_initializers(graph))
        except OnnxFormatError as exc:
            raise NativeKernelError(f"{graph}: {exc}") from exc

    def run(
        self,
        x: np.ndarray,
        state: np.ndarray,
        lengths: np.ndarray | None = None,
        threshold: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """logits [B,T,C], updates [B,T,H] bool, state [B,S], as the chunk graph gives them;
        `lengths` and `threshold` have shape [B] or [1] (broadcast), as the graph's inputs."""
        batch, steps, features = x.shape
        if features != self.features or state.shape != (batch, self.state_size):
            raise ValueError(
                f"x {x.shape} / state {state.shape} do not fit F={self.features}, "
                f"S={self.state_size}"
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        state = np.ascontiguousarray(state, dtype=np.float32)
        lengths = _per_row(lengths, batch, np.int64, 2**62)
        threshold = _per_row(threshold, batch, np.float32, 0.5)
        logits = np.empty((batch, steps, self.classes), np.float32)
        updates = np.empty((batch, steps, self.hidden), np.bool_)
        state_out = np.empty_like(state)
        status = self._lib.sarnn_chunk(
            ctypes.byref(self._weights),
            batch,
            steps,
            *[_address(a) for a in (x, state, lengths, threshold, logits, updates, state_out)],
        )
        if status != 0:
            raise MemoryError("the native kernel could not allocate its scratch memory")
        return logits, updates, state_out


Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


def verify(kernel: NativeKernel, graph: Callable[..., Outputs]) -> None:
    """Check that `kernel` answers a probe as the dense chunk graph `graph` (called as
    `graph(x, state, lengths, threshold)`) does: the same masks, logits and state within
    PROBE_TOLERANCE, for a few rows of random inputs at several thresholds and lengths. The
    kernel reads its weights by name, so a graph whose head or cell reads other tensors (a
    duplicate or shadowed initializer) is caught here. NativeKernelError names what differs."""
    rng = np.random.default_rng(0)
    mean, std = kernel.normalisation
    z = rng.standard_normal((len(PROBE_THRESHOLDS), PROBE_STEPS, kernel.features))
    x = (mean + std * z).astype(np.float32)
    state = (0.5 * rng.standard_normal((len(x), kernel.state_size))).astype(np.float32)
    lengths = np.asarray(PROBE_LENGTHS, np.int64)
    taus = np.asarray(PROBE_THRESHOLDS, np.float32)
    try:
        want = graph(x, state, lengths, taus)
    except Exception as exc:
        raise NativeKernelError(
            f"the graph refuses inputs of the kernel's sizes (F={kernel.features}, "
            f"S={kernel.state_size}): {' '.join(str(exc).split())}"
        ) from None
    got = kernel.run(x, state, lengths, taus)
    for name, a, b in zip(("logits", "updates", "state"), got, want, strict=True):
        if a.shape != b.shape:
            raise NativeKernelError(f"{name}: shape {a.shape}, the graph's {b.shape}")
        if name == "updates":
            same = np.array_equal(a, b.astype(np.bool_))
        else:
            same = np.allclose(a, b, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE)
        if not same:
            worst = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            raise NativeKernelError(
                f"it answers a probe otherwise than the graph ({name} differ by up to "
                f"{worst:.3g}): the graph computes with other weights than the ones it names"
            )
