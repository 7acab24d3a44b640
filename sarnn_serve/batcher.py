"""Micro-batching: chunks of all sessions of one model share onnxruntime calls.

Jobs queue up (a bounded queue: past `max_queue` waiting jobs a chunk is refused at once with
Overloaded, a 503, rather than waiting without end). A batch is cut when it is full (`max_rows`
jobs waiting) or `wait_s` after its first job arrived, whichever comes first; it is grouped by
padded length (powers of two, so short chunks are not padded to long ones), and each group runs
once in the engine's thread pool, on the graph (dense or sparse) that the router picks from the
jobs' recent update rates. Up to `concurrency` calls run at once (one per engine thread), and
the next batch is gathered while they run; a small call (at most `inline_steps` padded steps)
runs on the event loop itself, where it costs less than the hand-off to a thread and back.
`on_delay` hears, for each batch, how long its oldest chunk waited (graceful degradation
watches it). The loop is supervised: if it ever fails, the jobs it
held are answered with Overloaded, the failure is counted (`on_restart`) and a new loop starts.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from sarnn_serve.engine import DENSE, Engine
from sarnn_serve.errors import Overloaded
from sarnn_serve.routing import Router

log = logging.getLogger("sarnn.batcher")


@dataclass
class RowResult:
    """One job's slice of a batched call: logits [T,C], updates [T,H], state [S], with what is
    derived for the whole batch in the engine thread: update counts [T] and whether the
    logits and state are finite."""

    logits: np.ndarray
    updates: np.ndarray
    state: np.ndarray
    seconds: float
    counts: np.ndarray
    finite: bool


@dataclass
class _Job:
    x: np.ndarray
    state: np.ndarray
    threshold: float
    rate: float
    future: asyncio.Future = field(repr=False)
    enqueued: float = 0.0


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
        observe: Callable[[CallTiming], None] | None = None,
        router: Router | None = None,
        concurrency: int = 1,
        max_queue: int = 8192,
        on_restart: Callable[[], None] | None = None,
        inline_steps: int = 0,
        on_delay: Callable[[float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.router = router or Router(DENSE, None)
        self.executor = executor
        self.max_rows = max_rows
        self.max_steps = max_steps
        self.wait_s = wait_s
        self.observe = observe
        self.max_queue = max_queue
        self.on_restart = on_restart
        self.inline_steps = inline_steps
        self.on_delay = on_delay
        self.restarts = 0
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._full = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._held: list[_Job] = []
        self._slot_held = False  # the loop holds an engine slot not yet handed to a call
        self._calls: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self._task.add_done_callback(self._supervise)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*self._calls, return_exceptions=True)

    @property
    def waiting(self) -> int:
        """Jobs queued and not yet taken into a call."""
        return self._queue.qsize()

    async def run(
        self,
        x: np.ndarray,
        state: np.ndarray,
        threshold: float,
        rate: float = 1.0,
        arrived: float | None = None,
    ) -> RowResult:
        """Advance one chunk x [T,F] from state [S]; `rate` is the session's recent update
        rate (it predicts this chunk's, for the choice of graph); `arrived` (the loop's clock)
        is when the chunk reached the server, if it waited before this call (its queueing
        delay counts from then). Overloaded if the queue is full."""
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(self.max_queue)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        enqueued = loop.time() if arrived is None else arrived
        self._queue.put_nowait(_Job(x, state, threshold, rate, future, enqueued))
        if self._queue.qsize() >= self.max_rows:
            self._full.set()
        return await future

    def _supervise(self, task: asyncio.Task) -> None:
        """Restart a loop that failed (never one that was stopped), answering its jobs."""
        if task is not self._task or task.cancelled() or task.exception() is None:
            return
        log.error("batcher loop failed; restarting", exc_info=task.exception())
        held, self._held = self._held, []
        if self._slot_held:
            self._release()
        for job in held:
            if not job.future.done():
                job.future.set_exception(Overloaded(self.max_queue, restarted=True))
        self.restarts += 1
        if self.on_restart:
            self.on_restart()
        self.start()

    def _take(self, jobs: list[_Job]) -> list[_Job]:
        while len(jobs) < self.max_rows and not self._queue.empty():
            jobs.append(self._queue.get_nowait())
        if self._queue.qsize() < self.max_rows:
            self._full.clear()
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
        if steps == 1:
            x = np.stack([j.x for j in jobs])
        else:
            x = np.zeros((len(jobs), steps, jobs[0].x.shape[1]), np.float32)
            for i, job in enumerate(jobs):
                x[i, : len(job.x)] = job.x
        state = np.stack([j.state for j in jobs])
        lengths = np.asarray([len(j.x) for j in jobs], np.int64)
        threshold = np.asarray([j.threshold for j in jobs], np.float32)
        started = time.perf_counter()
        out = self.engine.run(x, state, lengths, threshold, path=path)
        seconds = time.perf_counter() - started
        counts = out.updates.sum(axis=-1, dtype=np.uint16)
        live = np.arange(steps) < lengths[:, None]
        finite = np.isfinite(out.state).all(axis=1) & (
            np.isfinite(out.logits).all(axis=2) | ~live
        ).all(axis=1)
        rows = [
            RowResult(
                out.logits[i, : len(j.x)],
                out.updates[i, : len(j.x)],
                out.state[i],
                seconds,
                counts[i, : len(j.x)],
                bool(finite[i]),
            )
            for i, j in enumerate(jobs)
        ]
        return rows, seconds

    def _call(self, jobs: list[_Job]) -> tuple[list[RowResult], list[CallTiming]]:
        """Run a group of jobs as the router plans it (one call, or several smaller ones)."""
        steps = max(len(j.x) for j in jobs)
        rates = [j.rate for j in jobs]
        plan = self.router.plan(rates, steps)
        results: list[RowResult | None] = [None] * len(jobs)
        timings = []
        for path, rows in plan:
            whole = len(rows) == len(jobs)
            answers, seconds = self._run_rows(jobs if whole else [jobs[i] for i in rows], path)
            self.router.observe(path, rates if whole else [rates[i] for i in rows], steps, seconds)
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

    async def _fill(self) -> None:
        """Wait until the batch is full or `wait_s` has passed since its first job."""
        if self.wait_s and self._queue.qsize() + 1 < self.max_rows:
            self._full.clear()
            deadline = asyncio.get_running_loop().call_later(self.wait_s, self._full.set)
            await self._full.wait()
            deadline.cancel()

    async def _loop(self) -> None:
        while True:
            self._held = [await self._queue.get()]
            await self._fill()
            await self._acquire()  # the batch is cut when an engine thread is free
            await self._dispatch(self._take(self._held))
            self._held = []

    async def _dispatch(self, jobs: list[_Job]) -> None:
        """Start the engine calls of one batch (its jobs are not kept once it is answered)."""
        loop = asyncio.get_running_loop()
        if self.on_delay:
            self.on_delay(loop.time() - jobs[0].enqueued)
        for k, group in enumerate(self._groups(jobs)):
            live = [j for j in group if not j.future.cancelled()]
            if k:
                await self._acquire()
            if not live:
                self._release()
                continue
            call = loop.create_task(self._answer(live))
            self._slot_held = False  # the call releases it
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _acquire(self) -> None:
        await self._slots.acquire()
        self._slot_held = True

    def _release(self) -> None:
        self._slot_held = False
        self._slots.release()

    async def _answer(self, jobs: list[_Job]) -> None:
        """One group's engine call in the thread pool; each job gets its rows (or the error)."""
        loop = asyncio.get_running_loop()
        try:
            if len(jobs) * max(len(j.x) for j in jobs) <= self.inline_steps:
                results, timings = self._call(jobs)
            else:
                results, timings = await loop.run_in_executor(self.executor, self._call, jobs)
        except Exception as exc:
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self._slots.release()
        if self.observe:
            for timing in timings:
                self.observe(timing)
        for job, result in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)
