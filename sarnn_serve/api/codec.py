"""Every wire format of the server, in one place: the session service returns typed results
(`results`) and the transports turn them into bytes here, and client frames into requests.

Native API: a chunk answer as JSON per step (`steps`, the default) or as columns (`columns`),
the same on REST and WebSocket; WebSocket frames in JSON text, msgpack or the raw binary
protocol (`frames`, whose byte layout the Python client shares), told apart by `Encoding`.
Stateless predictions as JSON. The Open Inference Protocol's JSON and binary tensors are
`api.v2_codec`, re-exported here.
"""

import enum
from typing import Any, NamedTuple

import msgpack
import numpy as np
import orjson

from sarnn_serve import frames
from sarnn_serve.api.json_body import parse_json
from sarnn_serve.api.v2_codec import (
    DTYPES,
    HEADER_LENGTH,
    InferParameters,
    InferRequest,
    OutputTensor,
    check_request,
    decode_inputs,
    encode_response,
    parse_request,
)
from sarnn_serve.errors import InvalidJson, PayloadTooLarge
from sarnn_serve.results import ChunkResult, PredictResult, StepOutputs, softmax
from sarnn_serve.schemas import AnswerMode, Chunk, ChunkRequest
from sarnn_serve.validation import validate_request

__all__ = [
    "DTYPES",
    "HEADER_LENGTH",
    "InferParameters",
    "InferRequest",
    "OutputTensor",
    "check_request",
    "decode_inputs",
    "encode_response",
    "parse_request",
]

JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


class Encoding(enum.Enum):
    """How a client frame was encoded; the answer goes back in its kind (JSON for msgpack)."""

    JSON = "json"
    MSGPACK = "msgpack"
    BINARY = "binary"


class Frame(NamedTuple):
    """A decoded client frame: the chunk and the encoding it came in."""

    chunk: Chunk
    encoding: Encoding


def dumps(body: Any) -> bytes:
    """JSON bytes of a body that may hold NumPy arrays and scalars."""
    return orjson.dumps(body, option=JSON_OPTS)


# --- native API: answers ------------------------------------------------------------------


def step_list(labels: list[str], out: StepOutputs) -> list[dict[str, Any]]:
    """One entry per step: index, label, class, probabilities, updates (and mask)."""
    probs = softmax(out.logits.astype(np.float64)).astype(np.float32)
    classes = probs.argmax(axis=-1)
    steps = []
    for t in range(out.steps):
        entry = {
            "index": out.first_index + t,
            "label": labels[classes[t]],
            "class": int(classes[t]),
            "probabilities": probs[t],
            "updates": int(out.counts[t]),
        }
        if out.masks is not None:
            entry["mask"] = out.masks[t].astype(np.uint8)
        steps.append(entry)
    return steps


def chunk_columns(result: ChunkResult, include_probabilities: bool) -> dict[str, Any]:
    """The lean chunk answer (schemas.ChunkColumns): arrays, not per-step objects."""
    out = result.outputs
    body: dict[str, Any] = {
        "type": "chunk",
        "seq": result.seq,
        "first_index": out.first_index,
        "classes": out.logits.argmax(axis=-1),
        "updates": out.counts,
        "session_steps": result.session_steps,
        "session_updates": result.session_updates,
        "threshold": result.threshold,
        "replayed": result.replayed,
    }
    if include_probabilities:
        body["probabilities"] = softmax(out.logits.astype(np.float64)).astype(np.float32)
    if out.masks is not None:
        body["masks"] = out.masks.astype(np.uint8)
    return body


def chunk_body(result: ChunkResult) -> dict[str, Any]:
    """The chunk answer of REST and WebSocket (schemas.ChunkResponse)."""
    return {
        "type": "chunk",
        "session_id": result.session_id,
        "seq": result.seq,
        "model": result.model,
        "steps": step_list(result.labels, result.outputs),
        "chunk": result.chunk.as_dict(),
        "session": result.session,
        "threshold": result.threshold,
        "expected_accuracy": result.expected_accuracy,
        "replayed": result.replayed,
    }


def chunk_json(result: ChunkResult, chunk: Chunk | None = None) -> bytes:
    """The JSON answer to a chunk, the same on every transport, in the chunk's answer mode
    (steps by default; columns is the lean one)."""
    if chunk is not None and chunk.answer == "columns":
        return dumps(chunk_columns(result, chunk.include_probabilities))
    return dumps(chunk_body(result))


def chunk_binary(result: ChunkResult, chunk: Chunk) -> bytes:
    """The answer to a raw binary chunk (`frames`)."""
    return frames.encode_answer(result, result.hidden, chunk.include_probabilities)


def predict_body(result: PredictResult) -> dict[str, Any]:
    """The answer of POST /v1/models/{name}/predict (schemas.PredictResponse)."""
    sequences = []
    for outputs, used in result.sequences:
        steps = step_list(result.labels, outputs)
        sequences.append(
            {
                "length": used.steps,
                "final": steps[-1],
                "steps": steps if result.include_steps else None,
                "usage": used.as_dict(),
            }
        )
    return {"model": result.model, "sequences": sequences, "usage": result.usage.as_dict()}


def step_tensors(outputs: list[StepOutputs]) -> dict[str, np.ndarray]:
    """The outputs of N sequences of T steps as the Open Inference Protocol's output tensors
    [N, T, ...] (the values of `step_list`: float32 probabilities, their argmax)."""
    probs = np.stack([softmax(o.logits.astype(np.float64)).astype(np.float32) for o in outputs])
    arrays = {
        "probabilities": probs,
        "class": probs.argmax(axis=-1).astype(np.int64),
        "updates": np.stack([o.counts for o in outputs]).astype(np.int32),
    }
    if outputs[0].masks is not None:
        arrays["mask"] = np.stack([o.masks for o in outputs]).astype(bool)
    return arrays


# --- native API: WebSocket frames ---------------------------------------------------------


def _size(text: str) -> int:
    """Bytes of a text frame in UTF-8 (counted only when its characters could exceed a limit)."""
    return len(text.encode("utf-8", "surrogatepass"))


def decode_frame(message: dict, limit: int, answer: AnswerMode | None = None) -> Frame:
    """A client WebSocket frame as a chunk request and its encoding; the same errors as the REST
    body would get. A chunk naming no answer mode gets `answer` (the socket's)."""
    data = message.get("bytes")
    text = message.get("text") or ""
    size = len(data) if data is not None else len(text)
    if size > limit or (data is None and 4 * size > limit and _size(text) > limit):
        raise PayloadTooLarge(f"message exceeds {limit} bytes", field="body")
    if data is None:
        chunk, encoding = validate_request(ChunkRequest, parse_json(text)), Encoding.JSON
    elif frames.is_binary_chunk(data):
        return Frame(frames.decode_chunk(data), Encoding.BINARY)
    else:
        try:
            body = msgpack.unpackb(data)
        except Exception as exc:
            raise InvalidJson(f"not valid msgpack: {exc}") from None
        chunk, encoding = validate_request(ChunkRequest, body), Encoding.MSGPACK
    if chunk.answer is None:
        chunk.answer = answer
    return Frame(chunk, encoding)
