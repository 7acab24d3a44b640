"""Routing calibration off the start-up path: a model serves from the start (auto routing on its
dense graph, a forced path on that path) and switches to routing by measurement when its
calibration ends.

One thread calibrates the models one after another (timing two paths at once would measure each
other); each result is handed to the event loop, which swaps the model's router. Calibration
shares the CPU with whatever is served meanwhile, which the router's running correction of its
predictions absorbs. `stop` ends it within one engine call.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sarnn_serve.engine import Engine
from sarnn_serve.routing import Calibration, calibrate

log = logging.getLogger("sarnn.calibration")


@dataclass(frozen=True)
class CalibrationJob:
    """One model to calibrate: its engine, sizes and the path weighed against the dense graph."""

    model: str
    engine: Engine
    n_features: int
    state_size: int
    path: str


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
    """Calibrates `jobs` in a daemon thread; `on_done(model, calibration)` runs on the event loop
    for each one that finishes."""

    def __init__(
        self, jobs: list[CalibrationJob], on_done: Callable[[str, Calibration], None]
    ) -> None:
        self.jobs = jobs
        self.on_done = on_done
        self.pending = [job.model for job in jobs]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start calibrating (from the event loop that is to receive the results)."""
        if not self.jobs:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="calibration", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop: the calibration under way ends at its next engine call, no result is handed
        on."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; whether it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _run(self) -> None:
        for job in self.jobs:
            started = time.perf_counter()
            engine = _StoppableEngine(job.engine, self._stop)
            try:
                calibration = calibrate(engine, job.n_features, job.state_size, job.path)
            except _Stopped:
                return
            except Exception:
                log.exception("calibration failed", extra={"model": job.model, "path": job.path})
                self._hand_over(self._failed, job.model)
                continue
            seconds = time.perf_counter() - started
            self._hand_over(self._finish, job.model, calibration, seconds)

    def _hand_over(self, callback: Callable, *args) -> None:
        if self._stop.is_set():
            return
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has closed: the app is gone
            self._stop.set()

    def _finish(self, model: str, calibration: Calibration, seconds: float) -> None:
        if self._stop.is_set():
            return
        self.pending.remove(model)
        self.on_done(model, calibration)
        log.info(
            "routing calibrated",
            extra={
                "model": model,
                "path": calibration.graph,
                "seconds": round(seconds, 2),
                "batch_sizes": calibration.batches,
                "crossover": calibration.crossover(),
            },
        )

    def _failed(self, model: str) -> None:
        self.pending.remove(model)
