"""Typed errors of the service. Each carries its HTTP status and machine-readable code; the
transports render them in one place (`api/errors.py` for HTTP, `api/stream.py` for frames)."""

import json
from typing import Any, ClassVar


class ServiceError(Exception):
    """Base of every error a client can cause; `status` is its HTTP status code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def body(self) -> dict[str, Any]:
        """The JSON error body: {"error": {"code", "message", ...detail}}."""
        return {"error": {"code": self.code, "message": self.message, **self.detail}}

    def json(self, **extra: Any) -> str:
        """The error body (with `extra` top-level fields) as ASCII JSON: a client's string that
        is not valid UTF-8 (a lone surrogate) is escaped, never a reason to fail."""
        return json.dumps({**extra, **self.body()}, ensure_ascii=True)

    def http_headers(self) -> dict[str, str] | None:
        """Extra HTTP response headers (Retry-After, WWW-Authenticate)."""
        return None


class InvalidInput(ServiceError):
    """A request field is malformed; `field` names it."""

    status = 422
    code = "invalid_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)


class InvalidJson(ServiceError):
    """The body (or WebSocket frame) is not valid JSON (or msgpack) text."""

    status = 422
    code = "invalid_json"

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(f"{field}: {message}", field=field)


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class Unauthorized(ServiceError):
    """API keys are on and the request carries no valid key."""

    status = 401
    code = "unauthorized"

    def http_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    """The caller may not do this (e.g. list sessions without the admin role)."""

    status = 403
    code = "forbidden"


class NoRoute(ServiceError):
    """No route answers the path (404), or none there takes the method (405; `allowed` are the
    methods that do, sent in Allow)."""

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = allowed
        if allowed:
            self.status, self.code = 405, "method_not_allowed"
            super().__init__("Method Not Allowed")
        else:
            self.status, self.code = 404, "not_found"
            super().__init__("Not Found")

    def http_headers(self) -> dict[str, str] | None:
        return {"Allow": ", ".join(self.allowed)} if self.allowed else None


class TooManyRequests(ServiceError):
    """A per-key quota is exhausted; `retry_after_s` says when to try again."""

    status = 429

    def __init__(self, code: str, message: str, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=round(retry_after_s, 3))
        self.code = code
        self.retry_after_s = retry_after_s

    def http_headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, int(self.retry_after_s + 0.999)))}


class ModelNotFound(ServiceError):
    status = 404
    code = "model_not_found"

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown model {name!r}; available: {', '.join(known)}", model=name)


class SessionNotFound(ServiceError):
    """No such session; `reason` says whether it never existed, expired, was evicted or deleted."""

    status = 404
    _REASONS: ClassVar[dict[str, tuple[str, str]]] = {
        "unknown": (
            "session_not_found",
            "does not exist: it was never created here, or it was lost with the session store "
            "(a store restarted without persistence)",
        ),
        "expired": ("session_expired", "expired after being idle; open a new session"),
        "evicted": ("session_evicted", "was evicted to make room for newer sessions"),
        "deleted": ("session_deleted", "was deleted"),
    }

    def __init__(self, session_id: str, reason: str = "unknown") -> None:
        self.code, what = self._REASONS.get(reason, self._REASONS["unknown"])
        super().__init__(f"session {session_id} {what}", session=session_id, reason=reason)


class SessionUnreadable(ServiceError):
    """A session's stored record cannot be read here (damaged, or in a format of a newer
    release): that session fails, no other; it can be deleted."""

    status = 500
    code = "session_unreadable"

    def __init__(self, session_id: str, problem: str) -> None:
        super().__init__(
            f"session {session_id} cannot be read by this server ({problem}); a newer replica "
            "may read it, or delete it",
            session=session_id,
        )


class SeqConflict(ServiceError):
    """A chunk's seq is neither the expected one nor a retry of the last one."""

    status = 409
    code = "seq_conflict"

    def __init__(self, got: int, expected: int) -> None:
        super().__init__(
            f"chunk seq {got} out of order; expected {expected} (or {expected - 1} to retry)",
            expected_seq=expected,
            got_seq=got,
        )


class SessionRolledBack(ServiceError):
    """A chunk's seq is past the session's next seq. A client sends a seq only after the one
    before it was answered, so the session store lost chunks it had acknowledged (Redis failed
    over to a replica that lacked them), or the client skipped a seq: either way it resends
    from `expected_seq`, the first chunk the session does not hold."""

    status = 409
    code = "session_rolled_back"

    def __init__(self, got: int, expected: int) -> None:
        super().__init__(
            f"chunk seq {got} is ahead of the session's next seq {expected}: the session store "
            f"lost the chunks from seq {expected} on (a failover), or seqs were skipped; resend "
            f"from seq {expected}",
            expected_seq=expected,
            got_seq=got,
        )


class RetryMismatch(ServiceError):
    """A retry of the last seq whose inputs or options differ from the applied chunk's."""

    status = 409
    code = "retry_mismatch"

    def __init__(self, seq: int, expected: int) -> None:
        super().__init__(
            f"chunk seq {seq} was already applied with other inputs or include_mask; a retry "
            f"must repeat them exactly (the next chunk is seq {expected})",
            expected_seq=expected,
            got_seq=seq,
        )


class ConcurrentUpdate(ServiceError):
    """Another replica advanced the session at the same moment; the client may retry."""

    status = 409
    code = "concurrent_update"


class OtherWorker(ServiceError):
    """The session lives in another worker process of this server (--workers N with the memory
    store keeps each session in the worker that created it)."""

    status = 421
    code = "other_worker"

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"session {session_id} lives in another worker process of this server: with "
            "--workers > 1 and the memory store, a session is reachable over the WebSocket that "
            "opened it (/v1/stream); to reach sessions from any connection, set "
            "SARNN_STORE=redis",
            session=session_id,
        )


class ModelLoadFailed(ServiceError):
    """A model load asked through the repository API failed; what was served before still is."""

    status = 400
    code = "model_load_failed"


class ModelUnavailable(ServiceError):
    """The session's model is no longer loaded (or changed version) on this server."""

    status = 410
    code = "model_unavailable"


class StoreUnavailable(ServiceError):
    """The session store cannot be reached or failed. A chunk may or may not have been applied:
    retrying the same seq is safe (it is applied once, or its stored answer is returned)."""

    status = 503
    code = "store_unavailable"


class Overloaded(ServiceError):
    """Too many chunks are waiting for a model's engine; nothing was applied, retry shortly."""

    status = 503
    code = "overloaded"

    def __init__(self, max_queue: int, restarted: bool = False) -> None:
        reason = (
            "the batcher restarted after a failure"
            if restarted
            else f"{max_queue} chunks are already waiting for this model"
        )
        super().__init__(f"the server is overloaded ({reason}); nothing was applied, retry")

    def http_headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class StoreFull(ServiceError):
    """The session store is out of memory (Redis at maxmemory); nothing was written."""

    status = 507
    code = "store_full"


class ModelLoadError(Exception):
    """A model directory is invalid; the server refuses to start and names the file."""
