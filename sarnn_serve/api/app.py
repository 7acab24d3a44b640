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
)
from sarnn_serve.api.body_rate import BodyRate
from sarnn_serve.api.fast_chunks import FastChunks
from sarnn_serve.api.limits import BodyLimit, RequestMetrics
from sarnn_serve.auth import KeyRing
from sarnn_serve.background_calibration import BackgroundCalibration, CalibrationJob
from sarnn_serve.engine import DENSE, NATIVE, SPARSE
from sarnn_serve.errors import ModelLoadError
from sarnn_serve.metrics import Monitor, PromMetrics
from sarnn_serve.registry import Registry
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


def make_routers(
    settings: Settings, registry: Registry
) -> tuple[dict[str, Router], list[CalibrationJob]]:
    """Per model, the router between the dense graph and the path that skips work (the native
    kernel where built, else the sparse graph), uncalibrated: auto routing runs dense until the
    model's calibration job (returned beside) has timed both paths on this machine. Logs one line
    per model: what it can run, how batches are routed, and the native kernel (or why not)."""
    routers, jobs = {}, []
    for name, model in registry.models.items():
        mode = settings.engine_path
        if mode in (SPARSE, NATIVE) and mode not in model.engine.paths:
            what = "sparse graph" if mode == SPARSE else "native kernel (built and loaded)"
            raise ModelLoadError(f"{name}: SARNN_ENGINE_PATH={mode} but it has no {what}")
        skipping = mode if mode in (SPARSE, NATIVE) else None
        skipping = skipping or next((p for p in (NATIVE, SPARSE) if p in model.engine.paths), None)
        if mode != DENSE and skipping is not None:
            card = model.card
            jobs.append(
                CalibrationJob(name, model.engine, card.n_features, card.state_size, skipping)
            )
            calibration = f"{skipping} against dense, in the background"
        else:
            calibration = "none (nothing to weigh against the dense graph)"
        routers[name] = Router(mode, None)
        log.info(
            "model ready",
            extra={
                "model": name,
                "version": model.card.version,
                "paths": model.engine.paths,
                "routing": mode,
                "calibration": calibration,
                "native_kernel": model.native,
            },
        )
    return routers, jobs


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

        def calibrated(name: str, calibration: Calibration) -> None:
            plane.set_router(name, Router(settings.engine_path, calibration))
            crossover = calibration.crossover()
            monitor.set_crossover(name, dict(zip(calibration.batches, crossover, strict=True)))

        calibrating = BackgroundCalibration(jobs, calibrated)
        calibrating.start()
        app.state.plane = plane
        app.state.calibrating = calibrating
        grpc = None
        if settings.grpc_enabled:
            grpc = await grpc_server.start(settings, plane, app.title, app.version)
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
    for module in (sessions, models, stream, health, dashboard, docs, v2):
        app.include_router(module.router)
    app.add_middleware(RequestMetrics, metrics=prom)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(FastChunks, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyRate, timeout_s=settings.body_timeout_s, min_rate=settings.body_min_rate)
    return app
