"""How each model version's batches are routed when it starts to serve: auto routing runs its
dense graph until the calibration job weighing the path that skips work (the native kernel where
built, else the sparse graph) has timed both on this machine; a forced path runs that path."""

import logging

from sarnn_serve.background_calibration import CalibrationJob
from sarnn_serve.engine import DENSE, NATIVE, SPARSE
from sarnn_serve.errors import ModelLoadError
from sarnn_serve.registry import LoadedModel, Registry
from sarnn_serve.routing import Router
from sarnn_serve.settings import Settings

log = logging.getLogger("sarnn.app")


def model_router(settings: Settings, model: LoadedModel) -> tuple[Router, CalibrationJob | None]:
    """The model's uncalibrated router and its calibration job (None: nothing to weigh).
    Logs one line: what it can run, how batches are routed, and the native kernel (or why
    not). ModelLoadError if SARNN_ENGINE_PATH forces a path the model lacks."""
    mode = settings.engine_path
    if mode in (SPARSE, NATIVE) and mode not in model.engine.paths:
        what = "sparse graph" if mode == SPARSE else "native kernel (built and loaded)"
        raise ModelLoadError(f"{model.name}: SARNN_ENGINE_PATH={mode} but it has no {what}")
    skipping = mode if mode in (SPARSE, NATIVE) else None
    skipping = skipping or next((p for p in (NATIVE, SPARSE) if p in model.engine.paths), None)
    job = None
    if mode != DENSE and skipping is not None:
        card = model.card
        job = CalibrationJob(
            model.name, model.engine, card.n_features, card.state_size, skipping, card.version
        )
        calibration = f"{skipping} against dense, in the background"
    else:
        calibration = "none (nothing to weigh against the dense graph)"
    log.info(
        "model ready",
        extra={
            "model": model.name,
            "version": model.card.version,
            "paths": model.engine.paths,
            "routing": mode,
            "calibration": calibration,
            "native_kernel": model.native,
        },
    )
    return Router(mode, None), job


def make_routers(
    settings: Settings, registry: Registry
) -> tuple[dict[str, Router], list[CalibrationJob]]:
    """`model_router` for every model at start: routers by name, and the calibration jobs."""
    routers, jobs = {}, []
    for name, model in registry.models.items():
        routers[name], job = model_router(settings, model)
        if job is not None:
            jobs.append(job)
    return routers, jobs
