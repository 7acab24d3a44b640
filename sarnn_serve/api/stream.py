"""WebSocket streaming: send samples, get per-step predictions and update counts back.

Client frames: JSON text (or msgpack binary) objects {"seq": n, "inputs": [[...], ...],
"include_mask": false}; `seq` may be omitted to mean "the next one". Server frames are JSON:
{"type": "session", ...} once on connect, then one {"type": "chunk", ...} per message (the
same body as POST /v1/sessions/{id}/chunks) or {"type": "error", "error": {...}}. A bad
message gets an error frame and changes nothing; the socket stays open.
"""

import contextlib
import logging
import time
from typing import Annotated, Any

import msgpack
import orjson
from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from sarnn_serve.errors import InvalidInput, PayloadTooLarge, ServiceError, SessionNotFound
from sarnn_serve.service import DataPlane
from sarnn_serve.validation import check_threshold

router = APIRouter(tags=["streaming"])
log = logging.getLogger("sarnn.stream")
CLOSE_NOT_FOUND = 4404
CLOSE_BAD_REQUEST = 4400


def _decode(message: dict, limit: int) -> dict[str, Any]:
    data = message.get("bytes")
    raw = data if data is not None else message.get("text", "")
    if len(raw) > limit:
        raise PayloadTooLarge(f"message exceeds {limit} bytes", field="message")
    try:
        body = msgpack.unpackb(data) if data is not None else orjson.loads(raw)
    except Exception as exc:
        kind = "msgpack" if data is not None else "JSON"
        raise InvalidInput("message", f"not valid {kind}: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput("message", "must be an object with an 'inputs' field")
    unknown = set(body) - {"seq", "inputs", "include_mask"}
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "unknown field")
    seq = body.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 0):
        raise InvalidInput("seq", f"must be a non-negative integer, got {seq!r}")
    if not isinstance(body.get("include_mask", False), bool):
        raise InvalidInput("include_mask", "must be true or false")
    return body


def _number(text: str | None, field: str) -> float | None:
    """A query parameter as a float; InvalidInput (an error frame, not a 403) if it is not one."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidInput(field, f"must be a number, got {text!r}") from None


async def _error(ws: WebSocket, dp: DataPlane, exc: ServiceError) -> None:
    dp.monitor.prom.errors.labels(exc.code).inc()
    await ws.send_text(orjson.dumps({"type": "error", "status": exc.status, **exc.body()}).decode())


async def _serve(ws: WebSocket, dp: DataPlane, session_id: str, delete_on_close: bool) -> None:
    prom = dp.monitor.prom
    endpoint = "WS /v1/sessions/{session_id}/stream"
    answered = prom.requests.labels(endpoint, "200")
    seconds = prom.request_seconds.labels(endpoint)
    limit = dp.settings.ws_max_message_bytes
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            started = time.perf_counter()
            counted = answered
            try:
                body = _decode(message, limit)
                payload = await dp.advance(
                    session_id, body.get("seq"), body.get("inputs"), body.get("include_mask", False)
                )
                await ws.send_text(payload.decode())
            except ServiceError as exc:
                counted = prom.requests.labels(endpoint, str(exc.status))
                await _error(ws, dp, exc)
                if isinstance(exc, SessionNotFound):
                    await ws.close(CLOSE_NOT_FOUND)
                    return
            counted.inc()
            seconds.observe(time.perf_counter() - started)
    except WebSocketDisconnect:
        pass
    finally:
        if delete_on_close:
            with contextlib.suppress(SessionNotFound):
                await dp.delete_session(session_id)
        log.info("stream closed", extra={"session": session_id, "deleted": delete_on_close})


@router.websocket("/v1/sessions/{session_id}/stream")
async def stream_session(
    ws: WebSocket, session_id: str, delete_on_close: Annotated[bool, Query()] = False
) -> None:
    """Stream chunks into an existing session (reconnect and continue at next_seq)."""
    dp: DataPlane = ws.app.state.plane
    await ws.accept()
    try:
        summary = await dp.get_session(session_id)
    except ServiceError as exc:
        await _error(ws, dp, exc)
        await ws.close(CLOSE_NOT_FOUND)
        return
    await ws.send_text(orjson.dumps({"type": "session", "session": summary}).decode())
    await _serve(ws, dp, session_id, delete_on_close)


@router.websocket("/v1/stream")
async def stream_new(
    ws: WebSocket,
    model: Annotated[str | None, Query()] = None,
    threshold: Annotated[str | None, Query()] = None,
    idle_timeout_s: Annotated[str | None, Query()] = None,
    delete_on_close: Annotated[bool, Query()] = False,
) -> None:
    """Open a new session on connect; its summary (with the id) is the first frame."""
    dp: DataPlane = ws.app.state.plane
    await ws.accept()
    try:
        tau = check_threshold(_number(threshold, "threshold"))
        idle = _number(idle_timeout_s, "idle_timeout_s")
        if idle is not None and idle <= 0:
            raise InvalidInput("idle_timeout_s", "must be positive")
        summary = await dp.create_session(model, tau, idle)
    except ServiceError as exc:
        await _error(ws, dp, exc)
        await ws.close(CLOSE_BAD_REQUEST)
        return
    await ws.send_text(orjson.dumps({"type": "session", "session": summary}).decode())
    await _serve(ws, dp, summary["id"], delete_on_close)
