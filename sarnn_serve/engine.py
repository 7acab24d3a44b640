"""One onnxruntime session per model: run a padded batch of chunks in one call."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort


@dataclass
class EngineOutput:
    """Raw graph outputs: logits [B,T,C], updates [B,T,H] bool, state [B,S]."""

    logits: np.ndarray
    updates: np.ndarray
    state: np.ndarray


class Engine:
    """Wraps the chunk graph; knows nothing of sessions or HTTP. Thread-safe (ORT run is)."""

    def __init__(self, path: Path, intra_op_threads: int = 1, inter_op_threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        optional = self.session.get_overridable_initializers()
        self.inputs = {i.name: i for i in [*self.session.get_inputs(), *optional]}
        self.outputs = {o.name: o for o in self.session.get_outputs()}

    def run(
        self,
        x: np.ndarray,
        state: np.ndarray,
        lengths: np.ndarray | None = None,
        threshold: np.ndarray | None = None,
    ) -> EngineOutput:
        """Advance every row of x [B,T,F] from state [B,S]; rows stop at their `lengths`,
        each with its own `threshold` (shape [B] or [1])."""
        feed = {"x": x, "state": state}
        if lengths is not None:
            feed["lengths"] = lengths.astype(np.int64, copy=False)
        if threshold is not None:
            feed["threshold"] = threshold.astype(np.float32, copy=False)
        logits, updates, state_out = self.session.run(None, feed)
        return EngineOutput(logits, updates, state_out)
