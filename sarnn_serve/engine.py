"""The ways one model's chunks can be computed: onnxruntime sessions of the dense chunk graph
and of its sparse twin if exported, and the package's native kernel if it was built.

All take and give the same tensors. The sparse graph computes only the gate rows of the neurons
that update in some row of the batch; the native kernel (`native`) reads, in place, only the
weight rows of each row's updating neurons. Both are faster at low update rates and large state
sizes (`routing` decides which path runs a batch). The engine knows nothing of sessions or HTTP.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sarnn_serve.native import NativeKernel, verify

DENSE, SPARSE, NATIVE = "dense", "sparse", "native"


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
    """Wraps the chunk graphs (and kernel) of one model. Thread-safe (ORT run is; the kernel
    keeps no state between calls)."""

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
        self.native: NativeKernel | None = None
        if sparse_path is not None:
            self.load_sparse(sparse_path)
        dense = self.sessions[DENSE]
        optional = dense.get_overridable_initializers()
        self.inputs = {i.name: i for i in [*dense.get_inputs(), *optional]}
        self.outputs = {o.name: o for o in dense.get_outputs()}

    def load_sparse(self, path: Path) -> None:
        """Add the sparse twin of the dense graph."""
        self.sessions[SPARSE] = _session(path, *self._threads)

    def load_native(self) -> None:
        """Add the native kernel, with the dense graph's weights, once it has answered a probe
        as the dense graph does (NativeKernelError if it was not built, the graph is not a chunk
        graph it computes, or it answers otherwise: `native.verify`)."""
        kernel = NativeKernel.from_graph(self.path)

        def dense(*feed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            out = self.run(*feed)
            return out.logits, out.updates, out.state

        verify(kernel, dense)
        self.native = kernel

    @property
    def paths(self) -> list[str]:
        """What this engine can run: "dense", "sparse" if exported, "native" if loaded."""
        return [*self.sessions, *([NATIVE] if self.native is not None else [])]

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
        if path == NATIVE:
            return EngineOutput(*self.native.run(x, state, lengths, threshold))
        feed = {"x": x, "state": state}
        if lengths is not None:
            feed["lengths"] = lengths.astype(np.int64, copy=False)
        if threshold is not None:
            feed["threshold"] = threshold.astype(np.float32, copy=False)
        logits, updates, state_out = self.sessions[path].run(None, feed)
        return EngineOutput(logits, updates, state_out)
