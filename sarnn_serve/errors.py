"""Typed errors of the service and the one place that maps them to HTTP status codes."""

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


class InvalidInput(ServiceError):
    """A request field is malformed; `field` names it."""

    status = 422
    code = "invalid_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class ModelNotFound(ServiceError):
    status = 404
    code = "model_not_found"

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown model {name!r}; available: {', '.join(known)}", model=name)


class SessionNotFound(ServiceError):
    """No such session; `reason` says whether it never existed, expired, was evicted or deleted."""

    status = 404
    _REASONS: ClassVar[dict[str, tuple[str, str]]] = {
        "unknown": ("session_not_found", "does not exist"),
        "expired": ("session_expired", "expired after being idle; open a new session"),
        "evicted": ("session_evicted", "was evicted to make room for newer sessions"),
        "deleted": ("session_deleted", "was deleted"),
    }

    def __init__(self, session_id: str, reason: str = "unknown") -> None:
        self.code, what = self._REASONS.get(reason, self._REASONS["unknown"])
        super().__init__(f"session {session_id} {what}", session=session_id, reason=reason)


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


class ConcurrentUpdate(ServiceError):
    """Another replica advanced the session at the same moment; the client may retry."""

    status = 409
    code = "concurrent_update"


class ModelUnavailable(ServiceError):
    """The session's model is no longer loaded (or changed version) on this server."""

    status = 410
    code = "model_unavailable"


class StoreUnavailable(ServiceError):
    """The session store cannot be reached. A chunk may or may not have been applied: retrying
    the same seq is safe (it is applied once, or its stored answer is returned)."""

    status = 503
    code = "store_unavailable"


class ModelLoadError(Exception):
    """A model directory is invalid; the server refuses to start and names the file."""
