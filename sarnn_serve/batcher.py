"""Micro-batching: chunks of all sessions of one model share onnxruntime calls.

Jobs queue up while a call runs; the next call takes every waiting job (up to the row and
step limits), groups them by padded length (powers of two, so short chunks are not padded to
long ones), stacks their states and runs each group once in the engine's thread pool, on the
graph (dense or sparse) that the router picks from the jobs' recent update rates.
"""

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from sarnn_serve.engine import DENSE, Engine
from sarnn_serve.routing import Router


@dataclass
class RowResult:
    """One job's slice of a batched call: logits [T,C], updates [T,H], state [S]."""

    logits: np.ndarray
    updates: np.ndarray
    state: np.ndarray
    seconds: float


@dataclass
class _Job:
    x: np.ndarray
    state: np.ndarray
    threshold: float
    rate: float
    future: asyncio.Future = field(repr=False)


@dataclass(frozen=True)
class CallTiming:
    """One engine call: the graph it ran on, its rows and steps, measured seconds, and the
    seconds the dense graph would have taken (measured if it ran dense, else calibrated)."""

    path: str
    rows: int
    steps: int
    seconds: float
    dense_seconds: float


def _bucket(steps: int) -> int:
    return 1 << max(0, steps - 1).bit_length()


class MicroBatcher:
    """Queues chunks for one engine and answers each with its own rows of a shared call."""

    def __init__(
        self,
        engine: Engine,
        executor: Executor,
        max_rows: int = 256,
        max_steps: int = 65_536,
        wait_s: float = 0.0,
        observe=None,
        router: Router | None = None,
    ) -> None:
        self.engine = engine
        self.router = router or Router(DENSE, None)
        self.executor = executor
        self.max_rows = max_rows
        self.max_steps = max_steps
        self.wait_s = wait_s
        self.observe = observe
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def run(
        self, x: np.ndarray, state: np.ndarray, threshold: float, rate: float = 1.0
    ) -> RowResult:
        """Advance one chunk x [T,F] from state [S]; `rate` is the session's recent update
        rate (it predicts this chunk's, for the choice of graph)."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(x, state, threshold, rate, future))
        return await future

    def _take(self, jobs: list[_Job]) -> list[_Job]:
        while len(jobs) < self.max_rows and not self._queue.empty():
            jobs.append(self._queue.get_nowait())
        return jobs

    def _groups(self, jobs: list[_Job]) -> list[list[_Job]]:
        by_bucket: dict[int, list[list[_Job]]] = {}
        for job in jobs:
            size = _bucket(len(job.x))
            groups = by_bucket.setdefault(size, [[]])
            if (len(groups[-1]) + 1) * size > self.max_steps and groups[-1]:
                groups.append([])
            groups[-1].append(job)
        return [g for groups in by_bucket.values() for g in groups]

    def _run_rows(self, jobs: list[_Job], path: str) -> tuple[list[RowResult], float]:
        """One engine call on `path` for `jobs`, padded to the longest; each job's rows."""
        steps = max(len(j.x) for j in jobs)
        x = np.zeros((len(jobs), steps, jobs[0].x.shape[1]), np.float32)
        for i, job in enumerate(jobs):
            x[i, : len(job.x)] = job.x
        state = np.stack([j.state for j in jobs])
        lengths = np.asarray([len(j.x) for j in jobs], np.int64)
        threshold = np.asarray([j.threshold for j in jobs], np.float32)
        started = time.perf_counter()
        out = self.engine.run(x, state, lengths, threshold, path=path)
        seconds = time.perf_counter() - started
        rows = [
            RowResult(out.logits[i, : len(j.x)], out.updates[i, : len(j.x)], out.state[i], seconds)
            for i, j in enumerate(jobs)
        ]
        return rows, seconds

    def _call(self, jobs: list[_Job]) -> tuple[list[RowResult], list[CallTiming]]:
        """Run a group of jobs as the router plans it (one call, or several smaller ones)."""
        steps = max(len(j.x) for j in jobs)
        plan = self.router.plan([j.rate for j in jobs], steps)
        results: list[RowResult | None] = [None] * len(jobs)
        timings = []
        for path, rows in plan:
            answers, seconds = self._run_rows([jobs[i] for i in rows], path)
            self.router.observe(path, [jobs[i].rate for i in rows], steps, seconds)
            for i, answer in zip(rows, answers, strict=True):
                results[i] = answer
            if path == DENSE:
                dense = seconds
            else:  # this call's share of one dense call of the whole group
                dense = (self.router.dense_seconds(len(jobs), steps) or seconds) * (
                    len(rows) / len(jobs)
                )
            timings.append(CallTiming(path, len(rows), steps, seconds, dense))
        return results, timings

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            if self.wait_s:
                await asyncio.sleep(self.wait_s)
            jobs = self._take([first])
            for group in self._groups(jobs):
                live = [j for j in group if not j.future.cancelled()]
                if not live:
                    continue
                try:
                    results, timings = await loop.run_in_executor(self.executor, self._call, live)
                except Exception as exc:
                    for job in live:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                if self.observe:
                    for timing in timings:
                        self.observe(timing)
                for job, result in zip(live, results, strict=True):
                    if not job.future.done():
                        job.future.set_result(result)
