"""A deadline on request headers, which uvicorn does not have: its HTTP protocol (httptools, or
h11 without it) waits for a request's headers for ever, so connections that dribble them
(slowloris) pile up until the process runs out of file descriptors and /healthz fails.

`http_protocol` gives uvicorn's own protocol with one addition: the headers of every request
must have arrived within `header_timeout_s` of the connection's opening, or of the end of the
previous response on a kept-alive connection, and must not pass `max_header_bytes`; otherwise
the connection answers 408 (or 431) and is closed. Bodies have their own limit, a rate
(`api.body_rate`). Nothing here knows the application.
"""

import asyncio
import functools
import importlib.util
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

if importlib.util.find_spec("httptools") is not None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
else:  # uvicorn's choice too when httptools is missing
    _Base = H11Protocol  # type: ignore[assignment, misc]

TOO_SLOW = 408, "Request Timeout", "request_timeout", "request headers not received in time"
TOO_LARGE = 431, "Request Header Fields Too Large", "headers_too_large", "request headers too large"


def _refusal(status: int, reason: str, code: str, message: str) -> bytes:
    body = f'{{"error": {{"code": "{code}", "message": "{message}"}}}}'.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _HeaderDeadline:
    """Mixin over a uvicorn HTTP protocol class (which sets `transport`, `cycle`, `loop`)."""

    transport: asyncio.Transport
    cycle: Any
    loop: asyncio.AbstractEventLoop

    def __init__(self, *args: Any, header_timeout_s: float, max_header_bytes: int, **kw: Any):
        super().__init__(*args, **kw)
        self._header_timeout_s = header_timeout_s
        self._max_header_bytes = max_header_bytes
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)  # type: ignore[misc]
        # upgraded to a WebSocket, or a request's headers are complete
        if self.transport.get_protocol() is not self or self.cycle is not cycle:
            self._disarm()
        elif self._deadline is not None:
            self._header_bytes += len(data)
            if self._header_bytes > self._max_header_bytes:
                self._refuse(TOO_LARGE)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # idle: waiting for the next request's headers

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        self._disarm()
        self._header_bytes = 0
        self._deadline = self.loop.call_later(self._header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._header_bytes:
            self._refuse(TOO_SLOW)
        elif not self.transport.is_closing():
            self.transport.close()  # an idle connection: nothing to answer

    def _refuse(self, refusal: tuple[int, str, str, str]) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_refusal(*refusal))
            self.transport.close()


class GuardedHttpProtocol(_HeaderDeadline, _Base):
    """uvicorn's HTTP protocol (httptools where installed) with the header deadline."""


class GuardedH11Protocol(_HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with the header deadline."""


def http_protocol(
    header_timeout_s: float, max_header_bytes: int, h11: bool = False
) -> functools.partial:
    """What uvicorn's `http` option takes: a protocol factory with these limits (a partial of a
    module-level class, so that it pickles into worker processes)."""
    cls = GuardedH11Protocol if h11 else GuardedHttpProtocol
    return functools.partial(
        cls, header_timeout_s=header_timeout_s, max_header_bytes=max_header_bytes
    )
