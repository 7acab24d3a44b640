"""The live dashboard page, its static files and the watch socket that feeds its raster."""

from pathlib import Path

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from sarnn_serve.errors import ServiceError

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
    await ws.accept()
    try:
        async with dp.watch(session_id) as queue:
            while True:
                event = await queue.get()
                await ws.send_text(orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY).decode())
    except ServiceError as exc:
        await ws.send_text(orjson.dumps({"type": "error", **exc.body()}).decode())
        await ws.close(4404)
    except WebSocketDisconnect:
        pass
