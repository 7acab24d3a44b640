"""onnxruntime sessions per model: the dense chunk graph, and its sparse twin if exported.

Both graphs take and give the same tensors; the sparse one computes only the gate rows of the
neurons that update, so it is faster at low update rates and large state sizes (`routing`
decides which one runs a batch). The engine knows nothing of sessions or HTTP.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

DENSE, SPARSE = "dense", "sparse"


@dataclass
class EngineOutput:
    """Raw graph outputs: logits [B,T,C], updates [B,T,H] bool, state [B,S]."""

    logits: np.ndarray
    updates: np.ndarray
    state: np.ndarray


def _session(path: Path, intra_op_threads: int, inter_op_threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class Engine:
    """Wraps the chunk graphs of one model. Thread-safe (ORT run is)."""

    def __init__(
        self,
        path: Path,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        sparse_path: Path | None = None,
    ) -> None:
        self.path = path
        self._threads = (intra_op_threads, inter_op_threads)
        self.sessions = {DENSE: _session(path, *self._threads)}
        if sparse_path is not None:
            self.load_sparse(sparse_path)
        dense = self.sessions[DENSE]
        optional = dense.get_overridable_initializers()
        self.inputs = {i.name: i for i in [*dense.get_inputs(), *optional]}
        self.outputs = {o.name: o for o in dense.get_outputs()}

    def load_sparse(self, path: Path) -> None:
        """Add the sparse twin of the dense graph."""
        self.sessions[SPARSE] = _session(path, *self._threads)

    @property
    def paths(self) -> list[str]:
        """The graphs this engine can run: "dense", and "sparse" if exported."""
        return list(self.sessions)

    def run(
        self,
        x: np.ndarray,
        state: np.ndarray,
        lengths: np.ndarray | None = None,
        threshold: np.ndarray | None = None,
        path: str = DENSE,
    ) -> EngineOutput:
        """Advance every row of x [B,T,F] from state [B,S] on the `path` graph; rows stop at
        their `lengths`, each with its own `threshold` (shape [B] or [1])."""
        feed = {"x": x, "state": state}
        if lengths is not None:
            feed["lengths"] = lengths.astype(np.int64, copy=False)
        if threshold is not None:
            feed["threshold"] = threshold.astype(np.float32, copy=False)
        logits, updates, state_out = self.sessions[path].run(None, feed)
        return EngineOutput(logits, updates, state_out)
