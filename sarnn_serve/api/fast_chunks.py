"""The REST hot path: POST /v1/sessions/{id}/chunks answered without FastAPI's request machinery.

A chunk is the request a streaming client sends hundreds of times a second, and FastAPI's
routing, dependency solving and body handling cost more than the data plane's work on it. This
pure ASGI middleware answers that one route itself: the same request model, the same caller
check, the same data plane call, the same answer bytes and error bodies (`ServiceError.json`,
with its headers), counted under the route's endpoint label. Only well-formed requests take
this path: a body that is not a JSON object that validates as a ChunkRequest, a body over the
size limit, or a content type other than JSON goes on to the FastAPI route (with the body
replayed), whose answer is the reference for every error.
"""

import re
import time
from collections.abc import Awaitable, Callable

import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sarnn_serve.api import codec
from sarnn_serve.api.errors import raw_headers
from sarnn_serve.errors import ServiceError
from sarnn_serve.schemas import ChunkRequest

CHUNKS_PATH = re.compile(r"/v1/sessions/([^/]+)/chunks")
ENDPOINT = "POST /v1/sessions/{session_id}/chunks"
JSON_TYPES = (b"application/json",)


class FastChunks:
    """Answers well-formed chunk POSTs; passes everything else to `app`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "POST":
            match = CHUNKS_PATH.fullmatch(scope["path"])
        headers = dict(scope["headers"]) if match else {}
        if match is None or not _plain_json(headers):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        body, more = await _read(receive, self.max_bytes)
        chunk = None if more else _chunk(body)
        if chunk is None:
            await self.app(scope, _replay(body, more, receive), send)
            return
        dp = scope["app"].state.plane
        client = scope.get("client")
        try:
            who = dp.authenticate(
                headers.get(b"authorization", b"").decode("latin-1") or None,
                client[0] if client else None,
            )
            result = await dp.advance(who, match.group(1), chunk)
            status, extra, answer = 200, [], codec.chunk_json(result, chunk)
        except ServiceError as exc:
            dp.record_error(exc)
            status, extra, answer = exc.status, raw_headers(exc), exc.json().encode()
        await _respond(send, status, extra, answer)
        dp.record_message(ENDPOINT, status, time.perf_counter() - started)


def _plain_json(headers: dict[bytes, bytes]) -> bool:
    """A JSON body of stated length (anything else is left to the FastAPI route)."""
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return content_type in JSON_TYPES and headers.get(b"content-length", b"").isdigit()


async def _read(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The body, and whether more is left unread (it passed `limit`)."""
    parts, size = [], 0
    while True:
        message = await receive()
        part = message.get("body", b"")
        parts.append(part)
        size += len(part)
        if size > limit:
            return b"".join(parts), True
        if not message.get("more_body", False):
            return b"".join(parts), False


def _chunk(body: bytes) -> ChunkRequest | None:
    """The request, if the body is a JSON object that validates; None for anything else."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    try:
        return ChunkRequest.model_validate(data, strict=True)
    except ValidationError:
        return None


def _replay(body: bytes, more: bool, receive: Receive) -> Callable[[], Awaitable[Message]]:
    """A receive that gives the body read so far, then the rest from `receive`."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": more}

    return replayed


async def _respond(send: Send, status: int, extra: list, body: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
