"""The two ways a session's chunks travel: REST requests, or one WebSocket kept open.

A link sends one chunk and returns its answer, or raises: ApiError for what the server said,
a transport error (see TRANSPORT_ERRORS) for a connection that failed. `reset` drops a broken
connection; the next `exchange` opens a new one.
"""

import asyncio
import contextlib

import httpx
import numpy as np
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from sarnn_serve.client.types import Answer, ApiError, ProtocolError, SessionInfo
from sarnn_serve.client.wire import ChunkOptions, Encoding, decode_answer, encode_chunk, json_body

# Failures of the connection, not answers of the server: the request may or may not have
# reached it, so only requests that are safe to repeat are sent again after them.
TRANSPORT_ERRORS = (
    httpx.TransportError,
    ConnectionClosed,
    InvalidHandshake,
    OSError,
    TimeoutError,
    EOFError,
)
# Failures that mean the request was never sent.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, ConnectionRefusedError)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def raise_for_answer(response: httpx.Response) -> None:
    """ApiError for a response that is not a success."""
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = response.text
    raise ApiError.from_body(response.status_code, body)


class RestLink:
    """Each chunk is POST /v1/sessions/{id}/chunks (JSON) on the client's connection pool."""

    def __init__(self, http: httpx.AsyncClient, session_id: str, labels: list[str]) -> None:
        self.http = http
        self.path = f"/v1/sessions/{session_id}/chunks"
        self.labels = labels

    async def exchange(self, seq: int, x: np.ndarray, options: ChunkOptions) -> Answer:
        response = await self.http.post(
            self.path,
            content=json_body(seq, x, options),
            headers={"content-type": "application/json"},
        )
        raise_for_answer(response)
        return decode_answer(response.content, self.labels)

    async def reset(self) -> None:
        """Nothing to do: the pool drops a broken connection and opens a new one."""

    async def close(self) -> None:
        """Nothing to do: the pool belongs to the client."""


class SocketLink:
    """Chunks go over WS /v1/sessions/{id}/stream, one at a time; a lost socket is opened again
    on the next exchange."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        encoding: Encoding,
        labels: list[str],
        timeout: float,
    ) -> None:
        self.url = url
        self.headers = headers
        self.encoding = encoding
        self.labels = labels
        self.timeout = timeout
        self.ws: ClientConnection | None = None
        self.attached: SessionInfo | None = None

    async def connect(self) -> SessionInfo:
        """Open the socket; the session's summary comes in its first frame."""
        try:
            ws = await connect(
                self.url,
                additional_headers=self.headers,
                compression=None,
                max_size=MAX_MESSAGE_BYTES,
                open_timeout=self.timeout,
                close_timeout=1,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status >= 500:
                raise
            raise ApiError(status, "handshake_refused", str(exc), {}) from None
        try:
            first = await asyncio.wait_for(ws.recv(), self.timeout)
            body = orjson.loads(first)
            if not isinstance(body, dict):
                raise ProtocolError(f"not a session frame: {first[:200]!r}")
            if body.get("type") != "session":
                raise ApiError.from_body(int(body.get("status", 400)), body)
        except BaseException:
            await _close_quietly(ws)
            raise
        self.ws = ws
        self.attached = SessionInfo.from_json(body["session"])
        return self.attached

    async def exchange(self, seq: int, x: np.ndarray, options: ChunkOptions) -> Answer:
        if self.ws is None:
            await self.connect()
        assert self.ws is not None
        await self.ws.send(encode_chunk(seq, x, self.encoding, options))
        async with asyncio.timeout(self.timeout):  # cheaper than wait_for: no task per answer
            frame = await self.ws.recv()
        answer = decode_answer(frame, self.labels)
        if answer.seq != seq:
            raise ProtocolError(f"sent seq {seq}, the answer is for seq {answer.seq}")
        return answer

    async def reset(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            await _close_quietly(ws)

    async def close(self) -> None:
        await self.reset()


async def _close_quietly(ws: ClientConnection) -> None:
    # the socket is broken or done with: how its close ends does not matter
    with contextlib.suppress(Exception):
        await ws.close()
