"""Session ids and a session's record; its stored form (format version, named fields) is
`records`.

Bytes per record are bounded: about 450 bytes of fields and their names, 4 x S for the state,
and the last chunk's outputs for replay (`records.PackedOutputs`: 4 x C + 2 bytes per step, plus
H / 8 per step when masks were asked for), so at most `max_chunk_steps` x (4C + 2 + H/8) for
that part.
"""

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field

import msgpack
import numpy as np

from sarnn_serve import records
from sarnn_serve.accounting import CellCost, usage
from sarnn_serve.records import PackedOutputs


def new_session_id(worker: str = "") -> str:
    """An unguessable id: 128 random bits, URL-safe; after `worker` (a worker_tag) if given."""
    return worker + secrets.token_urlsafe(16)


def worker_tag(pid: int) -> str:
    """The id prefix of sessions that live in one worker process (memory store, --workers N);
    the "." never occurs in a random id, so a tagged id is told apart from an untagged one."""
    return f"w{pid}."


def tagged_worker(session_id: str) -> str | None:
    """The worker_tag an id starts with, or None."""
    head, dot, _ = session_id.partition(".")
    return head + dot if dot and head[:1] == "w" and head[1:].isdigit() else None


SEQUENCE_PREFIX = "seq-"


def sequence_session_id(owner: str, model: str, sequence_id: int | str) -> str:
    """The session of an Open Inference Protocol sequence: the same for the same caller, model
    and sequence id (an integer id and its decimal string are different ids)."""
    key = hashlib.blake2b(msgpack.packb([owner, model, sequence_id]), digest_size=16).digest()
    return SEQUENCE_PREFIX + base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def id_is_reused(session_id: str) -> bool:
    """Whether an id can name more than one session over time (an Open Inference Protocol
    sequence restarted under the same id), so that a store version alone cannot tell a later
    session from an earlier one."""
    return session_id.startswith(SEQUENCE_PREFIX)


def request_digest(request_id: str) -> bytes:
    """16 bytes that stand for a request id in the record, whatever its length."""
    return hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass
class SessionRecord:
    """Everything kept about one session between chunks."""

    id: str
    model: str
    model_version: str
    threshold: float
    ttl_s: float
    state: np.ndarray
    owner: str = ""
    next_seq: int = 0
    steps: int = 0
    updates: int = 0
    created: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    last_digest: bytes = b""
    last_outputs: PackedOutputs | None = None  # of the last chunk, to answer its retry
    recent_rate: float = 1.0
    last_request: bytes = b""  # request_digest of the last chunk's request id (/v2 retries)
    target_rate: float | None = None  # held to this update rate by budget.RateControl
    control_offset: float = 0.0  # RateControl.offset
    degrade: bool = False  # the server may raise the threshold under overload
    last_threshold: float | None = None  # the threshold the last chunk ran at

    def note_rate(self, steps: int, updates: int, hidden: int) -> None:
        """Fold a chunk's update rate into `recent_rate`, weighing each step as 10% decay."""
        weight = 1.0 - 0.9**steps
        self.recent_rate += weight * (updates / (steps * hidden) - self.recent_rate)

    def repeats(self, request_id: str) -> bool:
        """Whether `request_id` is the id of the last applied chunk (a retry of it)."""
        return (
            request_id != ""
            and self.last_outputs is not None
            and self.last_request == request_digest(request_id)
        )

    def encode(self, version: int = records.FORMAT) -> bytes:
        """The stored bytes, in record format `version` (`records`)."""
        return records.encode(vars(self), version)

    @classmethod
    def decode(cls, data: bytes, trusted: bool = False) -> "SessionRecord":
        """The record of stored bytes of any format read (records.RecordUnreadable if none);
        `trusted`: bytes this process wrote (`records.decode`)."""
        return cls(**records.decode(data, trusted))

    def summary(self, cost: CellCost) -> dict:
        """Totals reported by GET /v1/sessions/{id}, chunk answers and DELETE."""
        return {
            "id": self.id,
            "model": self.model,
            "model_version": self.model_version,
            "threshold": self.threshold,
            "target_update_rate": self.target_rate,
            "degrade": self.degrade,
            "idle_timeout_s": self.ttl_s,
            "created": self.created,
            "last_seen": self.last_seen,
            "next_seq": self.next_seq,
            **usage(cost, self.steps, self.updates).as_dict(),
        }
