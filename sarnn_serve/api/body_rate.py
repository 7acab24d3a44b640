"""Pure ASGI middleware: a request body must arrive at a least rate, or the request is answered
408 and its connection closed (a client that dribbles its body would otherwise hold a
connection, and a file descriptor, for as long as it likes).

The whole body is due `timeout_s` after the application first asks for it, plus one second
for every `min_rate` bytes received so far (Apache's mod_reqtimeout rule): a client that keeps
up the rate may send a body of any allowed size; one that stalls or crawls is cut off.
"""

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

TIMEOUT_BODY = json.dumps(
    {"error": {"code": "request_timeout", "message": "request body not received in time"}}
).encode()


class BodyRate:
    """408 for an HTTP request whose body arrives slower than the stated rate."""

    def __init__(self, app: ASGIApp, timeout_s: float, min_rate: float) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = _TimedRequest(receive, send, self.timeout_s, self.min_rate)
        try:
            await self.app(scope, request.receive, request.send)
        except Exception:
            if not request.late:
                raise
            # the application gave up on the disconnect it was told of: already answered


class _TimedRequest:
    """One request's receive and send, with the body's deadline."""

    def __init__(self, receive: Receive, send: Send, timeout_s: float, min_rate: float) -> None:
        self._receive, self._send = receive, send
        self._timeout_s, self._min_rate = timeout_s, min_rate
        self._started: float | None = None
        self._received = 0
        self._body_done = False
        self._answered = False
        self.late = False

    async def receive(self) -> Message:
        if self.late:
            return {"type": "http.disconnect"}
        if self._body_done:  # waiting for a disconnect, say: not the body's business
            return await self._receive()
        loop = asyncio.get_running_loop()
        if self._started is None:
            self._started = loop.time()
        deadline = self._started + self._timeout_s + self._received / self._min_rate
        try:
            async with asyncio.timeout_at(deadline):
                message = await self._receive()
        except TimeoutError:
            await self._time_out()
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            self._body_done = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if self.late:
            return  # answered already
        if message["type"] == "http.response.start":
            self._answered = True
        await self._send(message)

    async def _time_out(self) -> None:
        """Answer 408 and close, unless an answer has begun (then the server closes it when
        the application returns without finishing it)."""
        self.late = True
        if self._answered:
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(TIMEOUT_BODY)).encode()),
            (b"connection", b"close"),
        ]
        await self._send({"type": "http.response.start", "status": 408, "headers": headers})
        await self._send({"type": "http.response.body", "body": TIMEOUT_BODY})
