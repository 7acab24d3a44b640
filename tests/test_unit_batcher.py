"""MicroBatcher and KeyedLocks in-process: a fake engine in a real thread pool, no model.

The fake engine computes h_t = state + the running sum of each step's features and stops every
row at its length (padded steps get NaN logits), so a job given another job's rows, or padding,
shows up as a wrong answer.
"""

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from sarnn_serve.batcher import CallTiming, MicroBatcher, RowResult
from sarnn_serve.engine import DENSE, SPARSE
from sarnn_serve.errors import Overloaded
from sarnn_serve.locks import KeyedLocks
from sarnn_serve.routing import Calibration, Router
from tests.fixtures import CLASSES, FAIL, FEATURES, STATE, FakeEngine, solo


def chunk(steps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((steps, FEATURES)).astype(np.float32)


def start_state(seed: int) -> np.ndarray:
    return np.random.default_rng(1000 + seed).standard_normal(STATE).astype(np.float32)


def assert_row(result: RowResult, x: np.ndarray, state: np.ndarray, threshold: float) -> None:
    ref = solo(x, state, threshold)
    assert result.logits.shape == (len(x), CLASSES)
    np.testing.assert_array_equal(result.logits, ref.logits)
    np.testing.assert_array_equal(result.updates, ref.updates)
    np.testing.assert_array_equal(result.state, ref.state)
    np.testing.assert_array_equal(result.counts, ref.updates.sum(axis=-1))
    assert result.finite  # padded steps (NaN logits here) do not count


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def make_batcher(engine: FakeEngine) -> AsyncIterator[Callable[..., MicroBatcher]]:
    """Factory of started batchers over `engine` and one real engine thread."""
    executor = ThreadPoolExecutor(1)
    made: list[MicroBatcher] = []

    def make(**options: Any) -> MicroBatcher:
        batcher = MicroBatcher(engine, executor, **options)
        batcher.start()
        made.append(batcher)
        return batcher

    yield make
    engine.gate.set()
    for batcher in made:
        await batcher.stop()
    executor.shutdown()


async def occupy(batcher: MicroBatcher, engine: FakeEngine) -> asyncio.Task:
    """A job that holds the engine at its gate, so that later jobs queue up behind it."""
    engine.gate.clear()
    engine.entered.clear()
    task = asyncio.create_task(batcher.run(chunk(1, 999), start_state(999), 0.5))
    assert await asyncio.to_thread(engine.entered.wait, 10)
    return task


async def queue_jobs(
    batcher: MicroBatcher, jobs: list[tuple[np.ndarray, np.ndarray, float]]
) -> list[asyncio.Task]:
    """One caller task per job, each with its job in the queue when this returns."""
    tasks = [asyncio.create_task(batcher.run(*job)) for job in jobs]
    await asyncio.sleep(0)
    return tasks


def jobs_of(lengths: list[int]) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Chunks of the given lengths, each with its own start state and threshold."""
    return [(chunk(n, i), start_state(i), 0.2 + 0.05 * i) for i, n in enumerate(lengths)]


# --- MicroBatcher -------------------------------------------------------------------------------


async def test_jobs_queued_together_share_one_call_and_get_their_own_rows(
    engine: FakeEngine, make_batcher: Callable[..., MicroBatcher]
) -> None:
    timings: list[CallTiming] = []
    batcher = make_batcher()
    batcher.observe = timings.append
    first = await occupy(batcher, engine)
    jobs = jobs_of([3, 4, 4, 3, 4])
    tasks = await queue_jobs(batcher, jobs)
    engine.gate.set()
    results = await asyncio.gather(*tasks)
    await first
    assert engine.calls == [(1, 1), (5, 4)]
    assert [(t.path, t.rows, t.steps) for t in timings] == [(DENSE, 1, 1), (DENSE, 5, 4)]
    assert timings[1].dense_seconds == timings[1].seconds  # measured, as it ran dense
    for result, job in zip(results, jobs, strict=True):
        assert_row(result, *job)
        assert result.seconds == timings[1].seconds


async def test_callers_gathered_at_once_share_one_call(
    engine: FakeEngine, make_batcher: Callable[..., MicroBatcher]
) -> None:
    batcher = make_batcher()
    jobs = jobs_of([3, 4, 4, 3])
    results = await asyncio.gather(*(batcher.run(*job) for job in jobs))
    assert engine.calls == [(4, 4)]
    for result, job in zip(results, jobs, strict=True):
        assert_row(result, *job)


async def test_jobs_are_grouped_by_padded_length(
    engine: FakeEngine, make_batcher: Callable[..., MicroBatcher]
) -> None:
    batcher = make_batcher()
    first = await occupy(batcher, engine)
    jobs = jobs_of([9, 1, 3, 16, 2, 5, 4, 17, 8])
    tasks = await queue_jobs(batcher, jobs)
    engine.gate.set()
    results = await asyncio.gather(*tasks)
    await first
    # buckets 16: {9, 16}, 1: {1}, 4: {3, 4}, 2: {2}, 8: {5, 8}, 32: {17}; padded to the longest
    assert engine.calls[1:] == [(2, 16), (1, 1), (2, 4), (1, 2), (2, 8), (1, 17)]
    for result, job in zip(results, jobs, strict=True):
        assert_row(result, *job)


async def test_a_call_takes_at_most_max_rows(
    engine: FakeEngine, make_batcher: Callable[..., MicroBatcher]
) -> None:
    batcher = make_batcher(max_rows=3)
    first = await occupy(batcher, engine)
    jobs = jobs_of([2] * 7)
    tasks = await queue_jobs(batcher, jobs)
    engine.gate.set()
    results = await asyncio.gather(*tasks)
    await first
    assert engine.calls[1:] == [(3, 2), (3, 2), (1, 2)]
    for result, job in zip(results, jobs, strict=True):
        assert_row(result, *job)


async def test_a_call_holds_at_most_max_steps_of_padded_rows(
    engine: FakeEngine, make_batcher: Callable[..., MicroBatcher]
) -> None:
    batcher = make_batcher(max_steps=16)
    first = await occupy(batcher, engine)
    jobs = jobs_of([4, 3, 4, 4, 4, 3, 20])
    tasks = await queue_jobs(batcher, jobs)
    engine.gate.set()
    results = await asyncio.gather(*tasks)
    await first
    # 4 rows of 4 padded steps fill 16; a chunk longer than the limit still runs, alone
    assert engine.calls[1:] == [(4, 4), (2, 4), (1, 20)]
    for result, job in zip(results, jobs, strict=True):
        assert_row(result, *job)


async def test_the_router_picks_the_graph_of_each_call_from_its_jobs_rates(
    engine: FakeEngine, make_batcher: Callable[..., MicroBatcher]
) -> None:
    # dense 10 us/step at one row; sparse 2 + 30 x rate: sparse wins below a rate of about 0.2
    calibration = Calibration(
        [1, 64], [0, 0], [10e-6, 80e-6], [0, 0], [2e-6, 4e-6], [30e-6, 120e-6]
    )
    timings: list[CallTiming] = []
    batcher = make_batcher(router=Router("auto", calibration))
    batcher.observe = timings.append
    (x, state, tau), (y, state_y, tau_y) = jobs_of([3, 4])
    assert_row(await batcher.run(x, state, tau, 0.05), x, state, tau)
    assert_row(await batcher.run(y, state_y, tau_y, 0.9), y, state_y, tau_y)
    assert engine.paths == [SPARSE, DENSE]
    assert timings[0].path == SPARSE
    assert timings[0].dense_seconds == pytest.approx(calibration.dense_call(1, 3))
    assert timings[1].path == DENSE and timings[1].dense_seconds == timings[1].seconds


async def test_engine_error_reaches_every_job_of_that_call_and_later_jobs_are_served(
    engine: FakeEngine, make_batcher: Callable[..., MicroBatcher]
) -> None:
    batcher = make_batcher()
    first = await occupy(batcher, engine)
    bad = chunk(3, 0)
    bad[1, 2] = FAIL
    jobs = [(bad, start_state(0), 0.5), *jobs_of([4, 8])]  # bad and 4 share a call; 8 does not
    tasks = await queue_jobs(batcher, jobs)
    engine.gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    await first
    assert engine.calls[1:] == [(2, 4), (1, 8)]
    assert isinstance(outcomes[0], RuntimeError) and outcomes[1] is outcomes[0]
    assert_row(outcomes[2], *jobs[2])
    later = jobs_of([5])[0]
    assert_row(await batcher.run(*later), *later)


async def test_a_cancelled_caller_does_not_break_the_others(
    engine: FakeEngine, make_batcher: Callable[..., MicroBatcher]
) -> None:
    batcher = make_batcher()
    running = await occupy(batcher, engine)
    jobs = jobs_of([3, 3, 3])
    tasks = await queue_jobs(batcher, jobs)
    tasks[1].cancel()  # cancelled while queued: left out of the call
    running.cancel()  # cancelled while its call runs: its row is dropped
    engine.gate.set()
    first, *results = await asyncio.gather(running, *tasks, return_exceptions=True)
    assert isinstance(first, asyncio.CancelledError)
    assert isinstance(results[1], asyncio.CancelledError)
    assert engine.calls[1:] == [(2, 3)]
    assert_row(results[0], *jobs[0])
    assert_row(results[2], *jobs[2])
    later = jobs_of([2])[0]
    assert_row(await batcher.run(*later), *later)


async def test_a_full_batch_is_cut_at_once_and_a_partial_one_at_its_deadline(
    engine: FakeEngine, make_batcher: Callable[..., MicroBatcher]
) -> None:
    batcher = make_batcher(max_rows=4, wait_s=30.0)
    jobs = jobs_of([2, 2, 2, 2])
    results = await asyncio.wait_for(asyncio.gather(*(batcher.run(*j) for j in jobs)), 5)
    assert engine.calls == [(4, 2)]  # full: not held for the 30 s deadline
    for result, job in zip(results, jobs, strict=True):
        assert_row(result, *job)
    batcher.wait_s = 0.05
    started = asyncio.get_running_loop().time()
    lone = jobs_of([3])[0]
    assert_row(await asyncio.wait_for(batcher.run(*lone), 5), *lone)
    assert asyncio.get_running_loop().time() - started >= 0.05
    assert engine.calls[1:] == [(1, 3)]


async def test_calls_run_concurrently_up_to_the_engine_threads(engine: FakeEngine) -> None:
    executor = ThreadPoolExecutor(2)
    batcher = MicroBatcher(engine, executor, max_rows=1, concurrency=2)
    batcher.start()
    try:
        engine.gate.clear()
        jobs = jobs_of([2, 2, 2])
        tasks = await queue_jobs(batcher, jobs)
        for _ in range(100):  # two calls enter the engine while the gate is shut
            if len(engine.calls) >= 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert len(engine.calls) == 2  # the third waits for a free engine thread
        engine.gate.set()
        for result, job in zip(await asyncio.gather(*tasks), jobs, strict=True):
            assert_row(result, *job)
        assert len(engine.calls) == 3
    finally:
        engine.gate.set()
        await batcher.stop()
        executor.shutdown()


async def test_a_full_queue_refuses_at_once_and_serves_what_it_holds(
    engine: FakeEngine, make_batcher: Callable[..., MicroBatcher]
) -> None:
    batcher = make_batcher(max_queue=3)
    first = await occupy(batcher, engine)
    jobs = jobs_of([2, 2, 2])
    tasks = await queue_jobs(batcher, jobs)
    assert batcher.waiting == 3
    with pytest.raises(Overloaded) as refused:
        await batcher.run(*jobs_of([2])[0])
    assert refused.value.status == 503 and refused.value.http_headers() == {"Retry-After": "1"}
    engine.gate.set()
    await first
    for result, job in zip(await asyncio.gather(*tasks), jobs, strict=True):
        assert_row(result, *job)


async def test_a_failed_loop_answers_its_jobs_is_counted_and_restarts(
    engine: FakeEngine, make_batcher: Callable[..., MicroBatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    restarts: list[int] = []
    batcher = make_batcher(on_restart=lambda: restarts.append(1))
    original = batcher._groups
    calls = iter([RuntimeError("bug in grouping")])

    def failing_once(jobs: list) -> list:
        for exc in calls:
            raise exc
        return original(jobs)

    monkeypatch.setattr(batcher, "_groups", failing_once)
    lost = jobs_of([2])[0]
    with pytest.raises(Overloaded, match="restarted"):
        await asyncio.wait_for(batcher.run(*lost), 5)
    assert restarts == [1] and batcher.restarts == 1
    later = jobs_of([3])[0]
    assert_row(await asyncio.wait_for(batcher.run(*later), 5), *later)


async def test_rows_driven_out_of_float_range_are_flagged_alone(
    engine: FakeEngine, make_batcher: Callable[..., MicroBatcher]
) -> None:
    batcher = make_batcher()
    huge = np.full((3, FEATURES), 3e38, np.float32)  # the running sum overflows to inf
    jobs = [(huge, start_state(0), 0.5), *jobs_of([3])]
    flagged, fine = await asyncio.gather(*(batcher.run(*job) for job in jobs))
    assert engine.calls == [(2, 3)]
    assert not flagged.finite
    assert_row(fine, *jobs[1])


async def test_small_calls_run_on_the_event_loop_and_larger_ones_in_an_engine_thread(
    engine: FakeEngine, make_batcher: Callable[..., MicroBatcher]
) -> None:
    batcher = make_batcher(inline_steps=8)
    small, large = jobs_of([4, 3])[0], jobs_of([1, 9])[1]
    assert_row(await batcher.run(*small), *small)  # 1 row x 4 steps: inline
    assert_row(await batcher.run(*large), *large)  # 1 row x 9 steps: a thread
    loop_thread = threading.get_ident()
    assert engine.threads[0] == loop_thread and engine.threads[1] != loop_thread


# --- KeyedLocks ---------------------------------------------------------------------------------


async def test_one_key_is_held_by_one_task_at_a_time() -> None:
    locks = KeyedLocks()
    inside, most, order = 0, 0, []

    async def hold(i: int) -> None:
        nonlocal inside, most
        async with locks.hold("k"):
            inside += 1
            most = max(most, inside)
            order.append(i)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(hold(i) for i in range(5)))
    assert most == 1
    assert order == list(range(5))  # first come, first served
    assert locks._locks == {}


async def test_different_keys_are_held_at_once() -> None:
    locks = KeyedLocks()
    a_in = asyncio.Event()
    b_in = asyncio.Event()

    async def hold(key: str, mine: asyncio.Event, other: asyncio.Event) -> None:
        async with locks.hold(key):
            mine.set()
            await other.wait()  # deadlocks unless both keys are held together

    await asyncio.wait_for(asyncio.gather(hold("a", a_in, b_in), hold("b", b_in, a_in)), timeout=5)
    assert locks._locks == {}


async def test_lock_entries_are_dropped_when_unused() -> None:
    locks = KeyedLocks()
    for i in range(100):
        async with locks.hold(f"s{i}"):
            assert set(locks._locks) == {f"s{i}"}
    assert locks._locks == {}

    # a waiter cancelled before it got the lock leaves nothing behind either
    entered = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("k"):
            entered.set()
            await release.wait()

    async def waiter() -> None:
        async with locks.hold("k"):
            pytest.fail("the cancelled waiter got the lock")

    first = asyncio.create_task(holder())
    await entered.wait()
    second = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    release.set()
    await first
    assert locks._locks == {}


async def test_an_exception_inside_releases_the_key() -> None:
    locks = KeyedLocks()
    with pytest.raises(RuntimeError):
        async with locks.hold("k"):
            raise RuntimeError("boom")
    assert locks._locks == {}
    async with asyncio.timeout(1), locks.hold("k"):
        pass
    assert locks._locks == {}
