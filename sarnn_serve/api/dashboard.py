"""The live dashboard page, its static files and the watch socket that feeds its raster."""

import asyncio
import contextlib
from pathlib import Path

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from sarnn_serve.api.ws import CLOSE_NOT_FOUND, Refused, handshake, refuse
from sarnn_serve.auth import Principal
from sarnn_serve.errors import ServiceError
from sarnn_serve.service import DataPlane

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(tags=["dashboard"])
router.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(STATIC / "dashboard.html")


@router.websocket("/v1/sessions/{session_id}/watch")
async def watch(ws: WebSocket, session_id: str) -> None:
    """Every chunk applied to the session on this replica: step labels, counts and masks."""
    dp = ws.app.state.plane
    with contextlib.suppress(Refused):
        async with handshake(ws, dp) as who:
            await _watch(ws, dp, who, session_id)


async def _watch(ws: WebSocket, dp: DataPlane, who: Principal, session_id: str) -> None:
    try:
        async with dp.watch(who, session_id) as queue:
            # Listen for the client's close while waiting for chunks: otherwise a closed page
            # leaves this handler (and its queue) waiting forever and blocks server shutdown.
            tasks = [
                asyncio.create_task(_forward(ws, queue)),
                asyncio.create_task(_until_closed(ws)),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                exc = task.exception()
                if exc is not None and not isinstance(exc, WebSocketDisconnect):
                    raise exc
    except ServiceError as exc:
        await refuse(ws, dp, exc, CLOSE_NOT_FOUND)
    except WebSocketDisconnect:
        pass


async def _forward(ws: WebSocket, queue: asyncio.Queue) -> None:
    while True:
        event = await queue.get()
        await ws.send_text(orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY).decode())


async def _until_closed(ws: WebSocket) -> None:
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass
