"""The chunk messages the client sends and the answers it reads, in each encoding.

JSON and msgpack chunks ask for the lean `columns` answer (JSON text), so every encoding
answers with the same fields; binary chunks are the raw protocol of `sarnn_serve.frames`.
"""

from dataclasses import dataclass
from typing import Any, Literal

import msgpack
import numpy as np
import orjson

from sarnn_serve import frames
from sarnn_serve.client.types import Answer, ApiError, ProtocolError

Encoding = Literal["json", "msgpack", "binary"]
ENCODINGS: tuple[str, ...] = ("json", "msgpack", "binary")


@dataclass(frozen=True)
class ChunkOptions:
    """What each answer carries besides classes and update counts."""

    include_probabilities: bool = False
    include_mask: bool = False

    def fields(self) -> dict[str, Any]:
        """The chunk body's optional fields (only those that differ from the default)."""
        body: dict[str, Any] = {"answer": "columns"}
        if self.include_probabilities:
            body["include_probabilities"] = True
        if self.include_mask:
            body["include_mask"] = True
        return body


def as_steps(x: Any, features: int | None = None) -> np.ndarray:
    """Steps [T, F] float32 from an array-like (one step [F] becomes [1, F])."""
    rows = np.ascontiguousarray(x, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2 or len(rows) == 0:
        raise ValueError(f"a chunk is [T, F] with T >= 1, got shape {rows.shape}")
    if features is not None and rows.shape[1] != features:
        raise ValueError(f"the model reads {features} features per step, got {rows.shape[1]}")
    return rows


def json_body(seq: int, x: np.ndarray, options: ChunkOptions) -> bytes:
    """A chunk as the JSON body of REST and WebSocket text frames."""
    body = {"seq": seq, "inputs": x, **options.fields()}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_chunk(seq: int, x: np.ndarray, encoding: Encoding, options: ChunkOptions) -> str | bytes:
    """A chunk as one WebSocket message: str goes as a text frame, bytes as a binary one."""
    if encoding == "binary":
        return frames.encode_chunk(seq, x, options.include_mask, options.include_probabilities)
    if encoding == "msgpack":
        return msgpack.packb({"seq": seq, "inputs": x.tolist(), **options.fields()})
    return json_body(seq, x, options).decode()


def decode_answer(frame: str | bytes, labels: list[str]) -> Answer:
    """A chunk answer (binary, or JSON columns); an error frame raises ApiError."""
    if isinstance(frame, bytes) and frames.is_binary_chunk(frame):
        return _answer(frames.decode_answer(frame), labels)
    try:
        body = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError(f"not a chunk answer: {frame[:200]!r}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"not a chunk answer: {str(body)[:200]}")
    if body.get("type") == "error":
        raise ApiError.from_body(int(body.get("status", 400)), body)
    if body.get("type") != "chunk" or "classes" not in body:
        raise ProtocolError(f"not a columns chunk answer: {str(body)[:200]}")
    return _answer(body, labels)


def _answer(body: dict[str, Any], labels: list[str]) -> Answer:
    classes = np.asarray(body["classes"], dtype=np.int64)
    probabilities = body.get("probabilities")
    masks = body.get("masks")
    return Answer(
        seq=int(body["seq"]),
        first_index=int(body["first_index"]),
        classes=classes,
        labels=tuple(labels[c] for c in classes),
        updates=np.asarray(body["updates"], dtype=np.int64),
        session_steps=int(body["session_steps"]),
        session_updates=int(body["session_updates"]),
        replayed=bool(body["replayed"]),
        threshold=body.get("threshold"),
        probabilities=None if probabilities is None else np.asarray(probabilities, np.float32),
        masks=None if masks is None else np.asarray(masks, np.uint8),
    )
