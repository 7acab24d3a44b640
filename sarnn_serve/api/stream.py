"""WebSocket streaming: send samples, get per-step predictions and update counts back.

Client frames: JSON text (or msgpack binary) objects {"seq": n, "inputs": [[...], ...],
"include_mask": false}, checked by the same request model as POST /v1/sessions/{id}/chunks
(`seq` is required). Server frames are JSON: {"type": "session", ...} once on connect, then one
{"type": "chunk", ...} per message (the same body as the REST answer) or {"type": "error",
"status", "error": {...}}. A bad message gets an error frame and changes nothing; the socket
stays open. Close codes are listed in `api/ws.py`.
"""

import contextlib
import json
import logging
import time

import msgpack
import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from sarnn_serve.api.ws import (
    CLOSE_BAD_REQUEST,
    CLOSE_NOT_FOUND,
    Refused,
    handshake,
    refuse,
    send_error,
)
from sarnn_serve.auth import Principal
from sarnn_serve.errors import InvalidJson, PayloadTooLarge, ServiceError, SessionNotFound
from sarnn_serve.schemas import ChunkRequest, StreamAttach, StreamOpen
from sarnn_serve.service import DataPlane
from sarnn_serve.validation import validate_request

router = APIRouter(tags=["streaming"])
log = logging.getLogger("sarnn.stream")
ENDPOINT = "WS /v1/sessions/{session_id}/stream"


def _size(text: str) -> int:
    """Bytes of a text frame in UTF-8 (counted only when its characters could exceed a limit)."""
    return len(text.encode("utf-8", "surrogatepass"))


def _parse_text(text: str) -> object:
    """JSON as REST parses it: orjson first; on failure Python's json, which also reads NaN,
    Infinity and overflowing numbers, so that the request model names the bad field."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InvalidJson(f"not valid JSON: {exc}") from None


def decode_chunk(message: dict, limit: int) -> ChunkRequest:
    """A client frame as a ChunkRequest; the same errors as the REST body would get."""
    data = message.get("bytes")
    text = message.get("text") or ""
    size = len(data) if data is not None else len(text)
    if size > limit or (data is None and 4 * size > limit and _size(text) > limit):
        raise PayloadTooLarge(f"message exceeds {limit} bytes", field="body")
    if data is None:
        return validate_request(ChunkRequest, _parse_text(text))
    try:
        body = msgpack.unpackb(data)
    except Exception as exc:
        raise InvalidJson(f"not valid msgpack: {exc}") from None
    return validate_request(ChunkRequest, body)


async def _serve(
    ws: WebSocket, dp: DataPlane, who: Principal, session_id: str, delete_on_close: bool
) -> None:
    limit = dp.settings.ws_max_message_bytes
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            started = time.perf_counter()
            status = 200
            try:
                result = await dp.advance(who, session_id, decode_chunk(message, limit))
                await ws.send_text(dp.chunk_json(result).decode())
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
        if delete_on_close:
            with contextlib.suppress(SessionNotFound):
                await dp.delete_session(who, session_id)
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
            await _serve(ws, dp, who, session_id, query.delete_on_close)


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
            await _serve(ws, dp, who, summary["id"], request.delete_on_close)
