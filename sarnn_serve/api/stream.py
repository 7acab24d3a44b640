"""WebSocket streaming: send samples, get per-step predictions and update counts back.

Client frames, in any mix on one socket:
- JSON text or msgpack binary objects {"seq": n, "inputs": [[...], ...], "include_mask": false,
  "answer": "steps" | "columns", "include_probabilities": false}, checked by the same request
  model as POST /v1/sessions/{id}/chunks (`seq` is required; `answer` defaults to the socket's
  `answer` query parameter), answered with JSON text: the REST answer of that mode;
- binary chunks of the raw protocol (`frames`: a 16-byte header, then float32 rows), answered
  with a binary answer (the columns answer's fields).
The first server frame is {"type": "session", ...} (JSON), sent once on connect; a bad message
gets a JSON error frame {"type": "error", "status", "error": {...}} and changes nothing; the
socket stays open. Close codes are listed in `api/ws.py`.
"""

import asyncio
import contextlib
import logging
import time

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from sarnn_serve.api import codec
from sarnn_serve.api.ws import (
    CLOSE_BAD_REQUEST,
    CLOSE_NOT_FOUND,
    Refused,
    handshake,
    refuse,
    send_error,
)
from sarnn_serve.auth import Principal
from sarnn_serve.errors import ServiceError, SessionNotFound
from sarnn_serve.schemas import StreamAttach, StreamOpen
from sarnn_serve.service import DataPlane
from sarnn_serve.validation import validate_request

router = APIRouter(tags=["streaming"])
log = logging.getLogger("sarnn.stream")
ENDPOINT = "WS /v1/sessions/{session_id}/stream"
READ_AHEAD = 64  # messages a socket may have read but not yet answered


async def _read_ahead(ws: WebSocket, inbox: asyncio.Queue) -> None:
    """Move the socket's messages into `inbox` as they arrive, each with its arrival time (the
    loop's clock), until the client disconnects; the bounded inbox pushes back on the socket.
    A client that sends ahead of its answers then waits here, where the server sees it, rather
    than in the socket: the wait counts in the queueing delay that degradation watches (so the
    socket reads ahead only while degradation is on)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            message = await ws.receive()
        except WebSocketDisconnect:
            message = {"type": "websocket.disconnect"}
        await inbox.put((loop.time(), message))
        if message["type"] == "websocket.disconnect":
            return


async def _serve(
    ws: WebSocket, dp: DataPlane, who: Principal, session_id: str, query: StreamAttach
) -> None:
    limit = dp.settings.ws_max_message_bytes
    delete_on_close = query.delete_on_close
    # reading ahead costs a task switch per message; only degradation needs the arrival times
    inbox: asyncio.Queue = asyncio.Queue(READ_AHEAD)
    reader = asyncio.create_task(_read_ahead(ws, inbox)) if dp.settings.degrade_queue_ms else None
    try:
        while True:
            if reader is None:
                arrived, message = None, await ws.receive()
            else:
                arrived, message = await inbox.get()
            if message["type"] == "websocket.disconnect":
                break
            started = time.perf_counter()
            status = 200
            try:
                frame = codec.decode_frame(message, limit, query.answer)
                result = await dp.advance(who, session_id, frame.chunk, arrived=arrived)
                if frame.encoding is codec.Encoding.BINARY:
                    await ws.send_bytes(codec.chunk_binary(result, frame.chunk))
                else:  # JSON text, also to msgpack
                    await ws.send_text(codec.chunk_json(result, frame.chunk).decode())
            except ServiceError as exc:
                status = exc.status
                await send_error(ws, dp, exc)
                if isinstance(exc, SessionNotFound):
                    await ws.close(CLOSE_NOT_FOUND)
                    return
            dp.record_message(ENDPOINT, status, time.perf_counter() - started)
    except WebSocketDisconnect:
        pass
    finally:
        if reader is not None:
            reader.cancel()
            # the socket is closed or closing: how its reader ended does not matter
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if delete_on_close:
            try:
                await dp.delete_session(who, session_id)
            except SessionNotFound:
                pass
            except ServiceError as exc:  # the store failed: the session expires by itself
                log.warning(
                    "session not deleted on close",
                    extra={"session": session_id, "error": exc.code},
                )
        log.info("stream closed", extra={"session": session_id, "deleted": delete_on_close})


@router.websocket("/v1/sessions/{session_id}/stream")
async def stream_session(ws: WebSocket, session_id: str) -> None:
    """Stream chunks into an existing session (reconnect and continue at next_seq); query
    parameters: delete_on_close, access_token."""
    dp: DataPlane = ws.app.state.plane
    with contextlib.suppress(Refused):
        async with handshake(ws, dp) as who:
            try:
                query = validate_request(StreamAttach, dict(ws.query_params), strict=False)
            except ServiceError as exc:
                await refuse(ws, dp, exc, CLOSE_BAD_REQUEST)
                return
            try:
                summary = await dp.get_session(who, session_id)
            except ServiceError as exc:
                await refuse(ws, dp, exc, CLOSE_NOT_FOUND)
                return
            await ws.send_text(orjson.dumps({"type": "session", "session": summary}).decode())
            await _serve(ws, dp, who, session_id, query)


@router.websocket("/v1/stream")
async def stream_new(ws: WebSocket) -> None:
    """Open a new session on connect with the query parameters of POST /v1/sessions (model,
    threshold, idle_timeout_s) and delete_on_close; its summary (with the id) is the first
    frame."""
    dp: DataPlane = ws.app.state.plane
    with contextlib.suppress(Refused):
        async with handshake(ws, dp) as who:
            try:
                request = validate_request(StreamOpen, dict(ws.query_params), strict=False)
                summary = await dp.create_session(who, request)
            except ServiceError as exc:
                await refuse(ws, dp, exc, CLOSE_BAD_REQUEST)
                return
            await ws.send_text(orjson.dumps({"type": "session", "session": summary}).decode())
            await _serve(ws, dp, who, summary["id"], request)
