"""Pure ASGI middleware: reject bodies over the size limit with 413, and time requests."""

import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sarnn_serve.errors import PayloadTooLarge, ServiceError
from sarnn_serve.metrics import PromMetrics


class _TooLarge(PayloadTooLarge, HTTPException):
    """Raised from receive() when a body without Content-Length passes the limit. FastAPI turns
    any other exception raised while reading the body into a plain 400 but re-raises an
    HTTPException; the ServiceError handler (first in the MRO) renders it as our 413 body.
    `detail` stays ServiceError's dict: HTTPException's own handler never sees this class."""

    def __init__(self, max_bytes: int) -> None:
        PayloadTooLarge.__init__(self, f"request body exceeds {max_bytes} bytes", field="body")
        self.status_code, self.headers = self.status, None


class BodyLimit:
    """413 for a Content-Length or a streamed body over `max_bytes` (HTTP only). It answers
    before any route runs, so the error body is chosen by path: `formats` maps a path prefix to
    the renderer of its protocol's error body (the /v2 routes'); other paths get the native
    one."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        formats: dict[str, Callable[[ServiceError], bytes]] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.formats = formats or {}

    async def _reject(self, send: Send, path: str) -> None:
        error = PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes", field="body")
        render = next(
            (f for prefix, f in self.formats.items() if path.startswith(prefix)),
            lambda e: e.json().encode(),
        )
        body = render(error)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send, scope["path"])
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send, scope["path"])


class RequestMetrics:
    """Count requests by endpoint and status and observe their duration."""

    def __init__(self, app: ASGIApp, metrics: PromMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            endpoint = f"{scope['method']} {route.path if route else 'unmatched'}"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)
