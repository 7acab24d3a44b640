"""The micro-batcher of each served model version, configured from the settings and reporting to
the monitor (calls, queue length, restarts) and to the model's degrader (queueing delay)."""

from concurrent.futures import Executor
from functools import partial

from sarnn_serve.batcher import MicroBatcher
from sarnn_serve.degrade import Degrader
from sarnn_serve.metrics import Monitor
from sarnn_serve.registry import LoadedModel
from sarnn_serve.routing import Router
from sarnn_serve.settings import Settings


def make_batcher(
    settings: Settings,
    model: LoadedModel,
    executor: Executor,
    monitor: Monitor,
    router: Router | None,
    degrader: Degrader | None,
) -> MicroBatcher:
    """The batcher of one model version, its queue length (and degradation level) watched
    under the model's name."""
    name = model.name
    batcher = MicroBatcher(
        model.engine,
        executor,
        max_rows=settings.batch_max_rows,
        max_steps=settings.batch_max_steps,
        wait_s=settings.batch_wait_ms / 1000,
        observe=partial(monitor.record_call, name),
        router=router,
        concurrency=settings.engine_threads,
        max_queue=settings.batch_max_queue,
        on_restart=partial(monitor.batcher_restarted, name),
        inline_steps=settings.batch_inline_steps,
        on_delay=degrader.observe if degrader is not None else None,
    )
    monitor.watch_queue(name, lambda: batcher.waiting)
    if degrader is not None:
        monitor.watch_degrade_level(name, lambda: degrader.level)
    return batcher
