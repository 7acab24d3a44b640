"""The micro-batcher of each served model, configured from the settings and reporting to the
monitor (calls, queue length, restarts) and to the model's degrader (queueing delay)."""

from concurrent.futures import Executor
from functools import partial

from sarnn_serve.batcher import MicroBatcher
from sarnn_serve.degrade import Degrader
from sarnn_serve.metrics import Monitor
from sarnn_serve.registry import Registry
from sarnn_serve.routing import Router
from sarnn_serve.settings import Settings


def make_batchers(
    settings: Settings,
    registry: Registry,
    executor: Executor,
    monitor: Monitor,
    routers: dict[str, Router],
    degraders: dict[str, Degrader],
) -> dict[str, MicroBatcher]:
    """One batcher per served model, its queue length (and degradation level) watched."""
    batchers = {
        name: MicroBatcher(
            model.engine,
            executor,
            max_rows=settings.batch_max_rows,
            max_steps=settings.batch_max_steps,
            wait_s=settings.batch_wait_ms / 1000,
            observe=partial(monitor.record_call, name),
            router=routers.get(name),
            concurrency=settings.engine_threads,
            max_queue=settings.batch_max_queue,
            on_restart=partial(monitor.batcher_restarted, name),
            inline_steps=settings.batch_inline_steps,
            on_delay=degraders[name].observe if name in degraders else None,
        )
        for name, model in registry.models.items()
    }
    for name, batcher in batchers.items():
        monitor.watch_queue(name, lambda b=batcher: b.waiting)
    for name, degrader in degraders.items():
        monitor.watch_degrade_level(name, lambda d=degrader: d.level)
    return batchers
