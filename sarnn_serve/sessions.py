"""A session's record and its encoding to bytes for the store."""

import secrets
import time
from dataclasses import dataclass, field

import msgpack
import numpy as np

from sarnn_serve.accounting import CellCost, usage


def new_session_id() -> str:
    """An unguessable id: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


@dataclass
class SessionRecord:
    """Everything kept about one session between chunks."""

    id: str
    model: str
    model_version: str
    threshold: float
    ttl_s: float
    state: np.ndarray
    next_seq: int = 0
    steps: int = 0
    updates: int = 0
    created: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    last_digest: bytes = b""
    last_response: bytes = b""

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "id": self.id,
                "model": self.model,
                "model_version": self.model_version,
                "threshold": self.threshold,
                "ttl_s": self.ttl_s,
                "state": self.state.astype(np.float32).tobytes(),
                "next_seq": self.next_seq,
                "steps": self.steps,
                "updates": self.updates,
                "created": self.created,
                "last_seen": self.last_seen,
                "last_digest": self.last_digest,
                "last_response": self.last_response,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> "SessionRecord":
        raw = msgpack.unpackb(data)
        raw["state"] = np.frombuffer(raw["state"], dtype=np.float32).copy()
        return cls(**raw)

    def summary(self, cost: CellCost) -> dict:
        """Totals reported by GET /v1/sessions/{id}, chunk answers and DELETE."""
        totals = usage(cost, self.steps, self.updates)
        return {
            "id": self.id,
            "model": self.model,
            "model_version": self.model_version,
            "threshold": self.threshold,
            "idle_timeout_s": self.ttl_s,
            "created": self.created,
            "last_seen": self.last_seen,
            "next_seq": self.next_seq,
            "steps": totals.steps,
            "updates": totals.updates,
            "update_rate": totals.update_rate,
            "macs_dense": totals.macs_dense,
            "macs_selective": totals.macs_selective,
            "macs_saved": totals.macs_saved,
        }
