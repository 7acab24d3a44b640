"""create_app: load models once in the lifespan, wire store, engine, data plane and routers."""

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sarnn_serve import logs, malloc
from sarnn_serve.api import (
    dashboard,
    docs,
    errors,
    grpc_server,
    health,
    models,
    openapi,
    sessions,
    stream,
    v2,
    v2_repository,
    v2_route,
)
from sarnn_serve.api.body_rate import BodyRate
from sarnn_serve.api.fast_chunks import FastChunks
from sarnn_serve.api.limits import BodyLimit, RequestMetrics
from sarnn_serve.auth import KeyRing
from sarnn_serve.background_calibration import BackgroundCalibration, CalibrationJob
from sarnn_serve.metrics import Monitor, PromMetrics
from sarnn_serve.model_routing import make_routers
from sarnn_serve.registry import Registry
from sarnn_serve.repository import ModelRepository
from sarnn_serve.routing import Calibration, Router
from sarnn_serve.service import DataPlane
from sarnn_serve.settings import Settings
from sarnn_serve.store import SessionStore
from sarnn_serve.store.memory import MemoryStore

log = logging.getLogger("sarnn.app")
# how long shutdown waits for calibration to stop (it stops at its next engine call)
CALIBRATION_JOIN_S = 10.0


def make_store(settings: Settings) -> SessionStore:
    """The configured session store."""
    if settings.store == "redis":
        from sarnn_serve.store.redis_connect import make_redis_store

        return make_redis_store(settings)
    return MemoryStore(settings.max_sessions, settings.max_store_bytes)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; models load when the lifespan starts (a bad model stops start-up)."""
    settings = settings or Settings()
    prom = PromMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logs.configure(settings.log_level)
        sys.setswitchinterval(settings.switch_interval_s)
        malloc.give_back_large_buffers()
        registry = Registry.load(
            settings.model_dir,
            settings.ort_intra_op_threads,
            settings.ort_inter_op_threads,
            settings.native_kernel,
        )
        monitor = Monitor(prom, {n: m.card.hidden for n, m in registry.models.items()})
        routers, jobs = make_routers(settings, registry)
        executor = ThreadPoolExecutor(settings.engine_threads, thread_name_prefix="ort")
        keyring = KeyRing.from_settings(settings)
        store = make_store(settings)
        plane = DataPlane(settings, registry, store, monitor, executor, keyring, routers)
        await plane.start()

        def calibrated(job: CalibrationJob, calibration: Calibration) -> None:
            plane.set_router((job.model, job.version), Router(settings.engine_path, calibration))
            crossover = calibration.crossover()
            monitor.set_crossover(job.model, dict(zip(calibration.batches, crossover, strict=True)))

        calibrating = BackgroundCalibration(jobs, calibrated)
        calibrating.start()
        repository = ModelRepository(settings, plane, calibrating)
        repository.start()
        app.state.plane = plane
        app.state.calibrating = calibrating
        app.state.repository = repository
        grpc = None
        if settings.grpc_enabled:
            grpc = await grpc_server.start(settings, plane, repository, app.title, app.version)
        default, because = registry.default(settings.default_model)
        log.info(
            "ready",
            extra={
                "models": registry.names(),
                "default_model": default,
                "default_because": because,
                "store": settings.store,
                "api_keys": keyring.enabled,
            },
        )
        try:
            yield
        finally:
            if grpc is not None:
                await grpc.stop()
            await repository.stop()
            calibrating.stop()
            # a daemon thread still inside onnxruntime when the interpreter exits aborts it
            await asyncio.to_thread(calibrating.join, CALIBRATION_JOIN_S)
            await plane.stop()
            executor.shutdown(wait=False)

    app = FastAPI(
        title="sarnn-serve",
        version="0.1.0",
        description="Selective-activation RNNs over HTTP and WebSocket, with per-step update "
        "counts and compute accounting.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.prom = prom
    app.state.settings = settings
    errors.install(app)
    openapi.install(app)
    for module in (sessions, models, stream, health, dashboard, docs, v2_repository, v2):
        app.include_router(module.router)
    app.add_middleware(RequestMetrics, metrics=prom)
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, formats={v2_route.PREFIX: v2_route.error_body}
    )
    app.add_middleware(FastChunks, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyRate, timeout_s=settings.body_timeout_s, min_rate=settings.body_min_rate)
    return app
