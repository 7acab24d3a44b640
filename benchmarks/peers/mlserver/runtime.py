"""MLServer custom runtime for a sarnn-serve chunk graph (models/<name>/model.onnx).

Stateless, as MLServer is: the client sends the state it got back last time.

    inputs   x          FP32 [B,T,F]  raw sensor values
             state      FP32 [B,S]    zeros for a new stream
             threshold  FP32 [B]      optional, default: the card's `threshold`
    outputs  logits     FP32 [B,T,C]
             updates    INT32 [B,T]   neurons updated per step (the graph's mask summed over H)
             state      FP32 [B,S]    state after the last step

The model settings' `parameters.uri` is the model directory (model.onnx and its card
model.json). onnxruntime runs on one intra-op and one inter-op thread, like sarnn-serve's engine.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    RequestInput,
)
from mlserver.utils import get_model_uri


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _decode(tensor: RequestInput, ndim: int) -> np.ndarray:
    """A FP32 request input as a float32 array of `ndim` dimensions."""
    if tensor.datatype != "FP32":
        raise InferenceError(f"input {tensor.name!r} must be FP32, got {tensor.datatype}")
    try:
        array = NumpyCodec.decode_input(tensor).astype(np.float32, copy=False)
    except ValueError as exc:
        raise InferenceError(f"input {tensor.name!r}: {exc}") from None
    if array.ndim != ndim:
        raise InferenceError(f"input {tensor.name!r} must have {ndim} dimensions")
    return array


class SarnnChunkRuntime(MLModel):
    """Advances B streams by T steps each on the dense chunk graph."""

    async def load(self) -> bool:
        model_dir = Path(await get_model_uri(self.settings))
        card = json.loads((model_dir / "model.json").read_text())
        self._session = _session(model_dir / "model.onnx")
        self._features = card["n_features"]
        self._state_size = {i.name: i for i in self._session.get_inputs()}["state"].shape[1]
        self._threshold = np.asarray([card["threshold"]], np.float32)
        self._set_metadata(card["n_classes"])
        return True

    def _set_metadata(self, classes: int) -> None:
        """Publish the tensor shapes on GET /v2/models/{name} (clients read S there)."""
        f, s = self._features, self._state_size
        self.inputs = [
            MetadataTensor(name="x", datatype="FP32", shape=[-1, -1, f]),
            MetadataTensor(name="state", datatype="FP32", shape=[-1, s]),
            MetadataTensor(name="threshold", datatype="FP32", shape=[-1]),
        ]
        self.outputs = [
            MetadataTensor(name="logits", datatype="FP32", shape=[-1, -1, classes]),
            MetadataTensor(name="updates", datatype="INT32", shape=[-1, -1]),
            MetadataTensor(name="state", datatype="FP32", shape=[-1, s]),
        ]

    def _feed(self, payload: InferenceRequest) -> dict[str, np.ndarray]:
        """The graph's inputs from a (possibly adaptively batched) request, checked."""
        tensors = {t.name: t for t in payload.inputs}
        if "x" not in tensors or "state" not in tensors:
            raise InferenceError("inputs 'x' [B,T,F] and 'state' [B,S] are required")
        x, state = _decode(tensors["x"], 3), _decode(tensors["state"], 2)
        rows = len(x)
        if x.shape[2] != self._features or state.shape != (rows, self._state_size):
            raise InferenceError(
                f"need x [B,T,{self._features}] and state [B,{self._state_size}], "
                f"got {list(x.shape)} and {list(state.shape)}"
            )
        threshold = self._threshold
        if "threshold" in tensors:
            threshold = _decode(tensors["threshold"], 1)
            if len(threshold) != rows:
                raise InferenceError(f"threshold must have B = {rows} values")
        return {"x": x, "state": state, "threshold": threshold}

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        logits, mask, state = self._session.run(None, self._feed(payload))
        updates = mask.sum(axis=2, dtype=np.int32)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output("logits", logits),
                NumpyCodec.encode_output("updates", updates),
                NumpyCodec.encode_output("state", state),
            ],
        )
