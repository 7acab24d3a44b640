"""Liveness, readiness and Prometheus metrics."""

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sarnn_serve.api.deps import Plane
from sarnn_serve.errors import ServiceError

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(dp: Plane) -> JSONResponse:
    """Models are loaded and the session store answers."""
    try:
        models = await dp.ready()
    except ServiceError as exc:
        return JSONResponse({"status": "unavailable", "store": exc.message}, status_code=503)
    return JSONResponse({"status": "ready", "models": models})


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this process's series."""
    body = generate_latest(request.app.state.prom.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
