"""What the client returns and raises: session summaries, chunk answers, errors, retry policy."""

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

# Server error codes after which sending the same chunk again is safe and may succeed.
RETRYABLE_CODES = frozenset({"store_unavailable", "overloaded", "concurrent_update"})
# Statuses of proxies and load balancers in front of a restarting replica.
RETRYABLE_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class SessionInfo:
    """A session's summary (GET /v1/sessions/{id}): its settings, totals and next seq."""

    id: str
    model: str
    model_version: str
    threshold: float
    idle_timeout_s: float
    created: float
    last_seen: float
    next_seq: int
    steps: int
    updates: int
    update_rate: float
    macs_dense: int
    macs_selective: int
    macs_saved: int
    target_update_rate: float | None = None
    degrade: bool = False

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "SessionInfo":
        """From the server's JSON summary (fields this client does not know are ignored)."""
        return cls(**{f.name: body[f.name] for f in fields(cls) if f.name in body})


@dataclass(frozen=True)
class Answer:
    """The answer to one chunk. `classes`, `labels` and `updates` have one entry per step;
    `threshold` is None on binary answers (they do not carry it); `replayed` is True when the
    server answered a resent chunk from its stored answer (the chunk was applied once)."""

    seq: int
    first_index: int
    classes: np.ndarray
    labels: tuple[str, ...]
    updates: np.ndarray
    session_steps: int
    session_updates: int
    replayed: bool
    threshold: float | None = None
    probabilities: np.ndarray | None = None
    masks: np.ndarray | None = None

    @property
    def steps(self) -> int:
        return len(self.classes)


class ClientError(Exception):
    """Base of everything the client raises."""


class ApiError(ClientError):
    """The server refused a request: HTTP status, machine-readable code, message and detail
    (e.g. expected_seq with a seq_conflict)."""

    def __init__(self, status: int, code: str, message: str, detail: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed if sent again (nothing was applied twice)."""
        return (
            self.code in RETRYABLE_CODES or self.status in RETRYABLE_STATUSES or self.status == 429
        )

    @property
    def retry_after_s(self) -> float:
        return float(self.detail.get("retry_after_s") or 0.0)

    @classmethod
    def from_body(cls, status: int, body: Any) -> "ApiError":
        """From an error body {"error": {"code", "message", ...}} (or anything else a proxy
        may answer)."""
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            return cls(status, "http_error", str(body)[:300], {})
        detail = {k: v for k, v in err.items() if k not in ("code", "message")}
        kind = SessionLost if status == 404 and "session" in detail else cls
        return kind(status, str(err.get("code")), str(err.get("message")), detail)


class SessionLost(ApiError):
    """The session no longer exists: expired, evicted, deleted or lost with its store."""


class RetriesExhausted(ClientError):
    """A request kept failing for the whole retry time; the last failure is its __cause__."""


class ProtocolError(ClientError):
    """The server answered something this client does not understand."""


@dataclass(frozen=True)
class Retry:
    """How long to keep resending one request that failed in a way that is safe to retry (a
    lost connection, a restarting replica, 503, 429), and the pauses between attempts:
    doubling from `first_delay_s` up to `max_delay_s`. A session keeps its last `keep_chunks`
    answered chunks, to send them again if the server's store loses them in a failover (409
    session_rolled_back); 0 keeps none (such a loss is then raised as ApiError)."""

    timeout_s: float = 60.0
    first_delay_s: float = 0.05
    max_delay_s: float = 1.0
    keep_chunks: int = 256
