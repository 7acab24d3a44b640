"""The binary WebSocket protocol: raw float32 rows in, a compact binary answer out.

A client frame (a binary WebSocket message), all integers little-endian:

    offset  size  field
    0       2     magic b"SR"
    2       1     version (1)
    3       1     flags: bit 0 include_mask, bit 1 include_probabilities
    4       8     seq (u64, below 2**63)
    12      4     T, steps in this chunk (u32, at least 1)
    16      4*T*F the steps: T rows of F float32 values (F: the model's features)

The answer to it (a binary message):

    0       2     magic b"SR"
    2       1     version (1)
    3       1     flags: bit 0 replayed, bit 1 probabilities follow, bit 2 masks follow
    4       8     seq (u64)
    12      8     first_index: session step index of the chunk's first step (u64)
    20      4     T (u32)
    24      2     C, classes (u16)
    26      2     H, hidden neurons (u16)
    28      8     session_steps (u64)
    36      8     session_updates (u64)
    44      2*T   predicted class per step (u16)
    ..      2*T   neurons updated per step (u16)
    ..      4*T*C probabilities (float32), if flagged
    ..      T*ceil(H/8)  update masks, bits packed big-endian per step (numpy.packbits), if flagged

Errors are the same JSON text frames as on the other formats. A msgpack frame cannot start with
the magic (a msgpack map starts with 0x80-0x8f, 0xde or 0xdf), so both share one socket.
"""

import struct

import numpy as np

from sarnn_serve.errors import InvalidInput
from sarnn_serve.results import ChunkResult, softmax
from sarnn_serve.schemas import ArrayChunk

MAGIC = b"SR"
VERSION = 1
REQUEST = struct.Struct("<2sBBQI")
ANSWER = struct.Struct("<2sBBQQIHHQQ")
MASK, PROBABILITIES = 1, 2
REPLAYED, HAS_PROBABILITIES, HAS_MASKS = 1, 2, 4
MAX_SEQ = 2**63


def is_binary_chunk(data: bytes) -> bool:
    """Whether a binary message is in this protocol (else it is msgpack)."""
    return data[:2] == MAGIC


def encode_chunk(
    seq: int, x: np.ndarray, include_mask: bool = False, include_probabilities: bool = False
) -> bytes:
    """A client frame for the steps x [T, F]."""
    flags = (MASK if include_mask else 0) | (PROBABILITIES if include_probabilities else 0)
    rows = np.ascontiguousarray(x, dtype="<f4")
    return REQUEST.pack(MAGIC, VERSION, flags, seq, len(rows)) + rows.tobytes()


def decode_chunk(data: bytes) -> ArrayChunk:
    """A client frame as a chunk (answer=columns); InvalidInput names what is wrong.
    The values are checked (finite, within range, F per step) by the data plane, as for JSON."""
    if len(data) < REQUEST.size:
        raise InvalidInput("body", f"a binary chunk needs a {REQUEST.size}-byte header")
    _, version, flags, seq, steps = REQUEST.unpack_from(data)
    if version != VERSION:
        raise InvalidInput("version", f"binary protocol version {version}; this server has 1")
    if flags & ~(MASK | PROBABILITIES):
        raise InvalidInput("flags", f"unknown flag bits {flags:#04x}")
    if seq >= MAX_SEQ:
        raise InvalidInput("seq", f"must be below 2**63, got {seq}")
    payload = memoryview(data)[REQUEST.size :]
    if steps == 0 or len(payload) % (4 * steps):
        raise InvalidInput(
            "inputs", f"{len(payload)} bytes of float32 do not make {steps} equal steps"
        )
    x = np.frombuffer(payload, "<f4").reshape(steps, -1)
    return ArrayChunk(
        seq=seq,
        inputs=x,
        include_mask=bool(flags & MASK),
        answer="columns",
        include_probabilities=bool(flags & PROBABILITIES),
    )


def encode_answer(result: ChunkResult, hidden: int, include_probabilities: bool) -> bytes:
    """The binary answer to a chunk."""
    out = result.outputs
    steps, classes = out.logits.shape
    flags = REPLAYED if result.replayed else 0
    flags |= HAS_PROBABILITIES if include_probabilities else 0
    flags |= HAS_MASKS if out.masks is not None else 0
    parts = [
        ANSWER.pack(
            MAGIC,
            VERSION,
            flags,
            result.seq,
            out.first_index,
            steps,
            classes,
            hidden,
            result.session_steps,
            result.session_updates,
        ),
        out.logits.argmax(axis=-1).astype("<u2").tobytes(),
        out.counts.astype("<u2", copy=False).tobytes(),
    ]
    if include_probabilities:
        parts.append(softmax(out.logits.astype(np.float64)).astype("<f4").tobytes())
    if out.masks is not None:
        parts.append(np.packbits(out.masks, axis=1).tobytes())
    return b"".join(parts)


def decode_answer(data: bytes) -> dict:
    """A binary answer as a dict of the columns answer's fields (for clients and tests)."""
    _, _, flags, seq, first, steps, classes, hidden, s_steps, s_updates = ANSWER.unpack_from(data)
    at = ANSWER.size
    answer: dict = {
        "seq": seq,
        "first_index": first,
        "session_steps": s_steps,
        "session_updates": s_updates,
        "replayed": bool(flags & REPLAYED),
        "classes": np.frombuffer(data, "<u2", steps, at),
        "updates": np.frombuffer(data, "<u2", steps, at + 2 * steps),
    }
    at += 4 * steps
    if flags & HAS_PROBABILITIES:
        answer["probabilities"] = np.frombuffer(data, "<f4", steps * classes, at).reshape(
            steps, classes
        )
        at += 4 * steps * classes
    if flags & HAS_MASKS:
        bits = np.frombuffer(data, np.uint8, steps * ((hidden + 7) // 8), at).reshape(steps, -1)
        answer["masks"] = np.unpackbits(bits, axis=1, count=hidden)
    return answer
