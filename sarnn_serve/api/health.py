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
async def readyz(dp: Plane, request: Request) -> JSONResponse:
    """Models are loaded and the session store answers. `calibrating` lists the models whose
    routing is still being calibrated (they serve meanwhile, on the dense graph under auto
    routing)."""
    try:
        models = await dp.ready()
    except ServiceError as exc:
        return JSONResponse({"status": "unavailable", "store": exc.message}, status_code=503)
    calibrating = list(request.app.state.calibrating.pending)
    return JSONResponse({"status": "ready", "models": models, "calibrating": calibrating})


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this process's series."""
    body = generate_latest(request.app.state.prom.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
