"""Routing calibration off the start-up path: a model serves from the start (auto routing on its
dense graph, a forced path on that path) and switches to routing by measurement when its
calibration ends.

One thread calibrates the models one after another (timing two paths at once would measure each
other), including models loaded later (`add`); each result is handed to the event loop, which
swaps the model version's router. Calibration
shares the CPU with whatever is served meanwhile, which the router's running correction of its
predictions absorbs. `stop` ends it within one engine call.
"""

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sarnn_serve.engine import Engine
from sarnn_serve.routing import Calibration, calibrate

log = logging.getLogger("sarnn.calibration")


@dataclass(frozen=True)
class CalibrationJob:
    """One model version to calibrate: its engine, sizes and the path weighed against the
    dense graph."""

    model: str
    engine: Engine
    n_features: int
    state_size: int
    path: str
    version: str = ""


class _Stopped(Exception):
    """Calibration was stopped."""


class _StoppableEngine:
    """An engine whose every run first checks the stop flag (calibration calls only `run`)."""

    def __init__(self, engine: Engine, stop: threading.Event) -> None:
        self._engine = engine
        self._stop = stop

    def run(self, *args, **kwargs):
        if self._stop.is_set():
            raise _Stopped
        return self._engine.run(*args, **kwargs)


class BackgroundCalibration:
    """Calibrates `jobs`, and those `add`ed later, in a daemon thread; `on_done(job,
    calibration)` runs on the event loop for each one that finishes."""

    def __init__(
        self,
        jobs: list[CalibrationJob],
        on_done: Callable[[CalibrationJob, Calibration], None],
    ) -> None:
        self.on_done = on_done
        self.pending: list[str] = []
        self._queue: queue.SimpleQueue[CalibrationJob | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        for job in jobs:
            self._enqueue(job)

    def _enqueue(self, job: CalibrationJob) -> None:
        self.pending.append(job.model)
        self._queue.put(job)

    def start(self) -> None:
        """Start calibrating (from the event loop that is to receive the results)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="calibration", daemon=True)
        self._thread.start()

    def add(self, job: CalibrationJob) -> None:
        """Calibrate one more model version after those queued."""
        if not self._stop.is_set():
            self._enqueue(job)

    def stop(self) -> None:
        """Stop: the calibration under way ends at its next engine call, no result is handed
        on."""
        self._stop.set()
        self._queue.put(None)  # wakes a thread waiting for work

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; whether it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self._queue.get()
            if job is None or self._stop.is_set():
                return
            started = time.perf_counter()
            engine = _StoppableEngine(job.engine, self._stop)
            try:
                calibration = calibrate(engine, job.n_features, job.state_size, job.path)
            except _Stopped:
                return
            except Exception:
                log.exception("calibration failed", extra={"model": job.model, "path": job.path})
                self._hand_over(self._failed, job)
                continue
            seconds = time.perf_counter() - started
            self._hand_over(self._finish, job, calibration, seconds)

    def _hand_over(self, callback: Callable, *args) -> None:
        if self._stop.is_set():
            return
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has closed: the app is gone
            self._stop.set()

    def _finish(self, job: CalibrationJob, calibration: Calibration, seconds: float) -> None:
        if self._stop.is_set():
            return
        self.pending.remove(job.model)
        self.on_done(job, calibration)
        log.info(
            "routing calibrated",
            extra={
                "model": job.model,
                "version": job.version,
                "path": calibration.graph,
                "seconds": round(seconds, 2),
                "batch_sizes": calibration.batches,
                "crossover": calibration.crossover(),
            },
        )

    def _failed(self, job: CalibrationJob) -> None:
        self.pending.remove(job.model)
