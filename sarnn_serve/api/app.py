"""create_app: load models once in the lifespan, wire store, engine, data plane and routers."""

import logging
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sarnn_serve import logs
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
from sarnn_serve.api.fast_chunks import FastChunks
from sarnn_serve.api.limits import BodyLimit, RequestMetrics
from sarnn_serve.auth import KeyRing
from sarnn_serve.engine import DENSE, NATIVE, SPARSE
from sarnn_serve.errors import ModelLoadError
from sarnn_serve.metrics import Monitor, PromMetrics
from sarnn_serve.registry import Registry
from sarnn_serve.routing import Router, calibrate
from sarnn_serve.service import DataPlane
from sarnn_serve.settings import Settings
from sarnn_serve.store import SessionStore
from sarnn_serve.store.memory import MemoryStore

log = logging.getLogger("sarnn.app")


def make_store(settings: Settings) -> SessionStore:
    """The configured session store."""
    if settings.store == "redis":
        from sarnn_serve.store.redis import RedisStore

        return RedisStore(
            settings.redis_url,
            settings.redis_prefix,
            settings.max_sessions,
            max_connections=settings.redis_max_connections,
        )
    return MemoryStore(settings.max_sessions, settings.max_store_bytes)


def make_routers(settings: Settings, registry: Registry, monitor: Monitor) -> dict[str, Router]:
    """Per model, the router between the dense graph and the path that skips work (the native
    kernel where built, else the sparse graph): calibrated on this machine when both exist."""
    routers = {}
    for name, model in registry.models.items():
        mode = settings.engine_path
        if mode in (SPARSE, NATIVE) and mode not in model.engine.paths:
            what = "sparse graph" if mode == SPARSE else "native kernel (built and loaded)"
            raise ModelLoadError(f"{name}: SARNN_ENGINE_PATH={mode} but it has no {what}")
        skipping = mode if mode in (SPARSE, NATIVE) else None
        skipping = skipping or next((p for p in (NATIVE, SPARSE) if p in model.engine.paths), None)
        calibration = None
        if mode != DENSE and skipping is not None:
            card = model.card
            calibration = calibrate(model.engine, card.n_features, card.state_size, skipping)
            crossover = calibration.crossover()
            monitor.set_crossover(name, dict(zip(calibration.batches, crossover, strict=True)))
            log.info(
                "graphs calibrated",
                extra={
                    "model": name,
                    "path": skipping,
                    "batch_sizes": calibration.batches,
                    "crossover": crossover,
                },
            )
        routers[name] = Router(mode, calibration)
    return routers


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; models load when the lifespan starts (a bad model stops start-up)."""
    settings = settings or Settings()
    prom = PromMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logs.configure(settings.log_level)
        sys.setswitchinterval(settings.switch_interval_s)
        registry = Registry.load(
            settings.model_dir,
            settings.ort_intra_op_threads,
            settings.ort_inter_op_threads,
            settings.native_kernel,
        )
        monitor = Monitor(prom, {n: m.card.hidden for n, m in registry.models.items()})
        routers = make_routers(settings, registry, monitor)
        executor = ThreadPoolExecutor(settings.engine_threads, thread_name_prefix="ort")
        keyring = KeyRing.from_settings(settings)
        store = make_store(settings)
        plane = DataPlane(settings, registry, store, monitor, executor, keyring, routers)
        await plane.start()
        app.state.plane, app.state.monitor = plane, monitor
        grpc = None
        if settings.grpc_enabled:
            grpc = await grpc_server.start(settings, plane, app.title, app.version)
        log.info(
            "ready",
            extra={
                "models": registry.names(),
                "store": settings.store,
                "api_keys": keyring.enabled,
            },
        )
        try:
            yield
        finally:
            if grpc is not None:
                await grpc.stop()
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
    return app
