"""The live statistics of a served model (GET /v1/models/{name}/stats): sessions, update rate
and savings, the engine's graphs and routing, and degradation."""

from sarnn_serve.batcher import MicroBatcher
from sarnn_serve.degrade import Degrader
from sarnn_serve.metrics import Monitor
from sarnn_serve.registry import LoadedModel

DENSE_NOTE = (
    "dense_equivalent_seconds: what the dense graph would have spent on the same calls, "
    "measured for calls that ran dense and predicted by the load-time calibration for calls "
    "that ran on the native kernel or the sparse graph"
)


def model_stats(
    model: LoadedModel, batcher: MicroBatcher, monitor: Monitor, degrader: Degrader | None
) -> dict:
    """A model's statistics as the monitor counted them on this replica."""
    name = model.card.name
    router = batcher.router
    calibration = router.calibration.as_dict() if router.calibration else None
    return {
        "model": name,
        "hidden": model.card.hidden,
        "active_sessions": monitor.active.get(name, 0),
        **monitor.stats[name].snapshot(),
        "engine": {
            "graphs": model.engine.paths,
            "routing": router.mode,
            "calibration": calibration,
            **monitor.stats[name].engine_snapshot(),
            "note": DENSE_NOTE,
        },
        "degradation": degradation(name, monitor, degrader),
    }


def degradation(name: str, monitor: Monitor, degrader: Degrader | None) -> dict:
    """Whether degradation is on for a model, its level and the sessions it holds."""
    if degrader is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "queue_target_ms": degrader.target_s * 1000,
        "level": degrader.level,
        "threshold_added": round(degrader.level * degrader.step, 6),
        "degraded_sessions": monitor.degraded_sessions(name),
    }
