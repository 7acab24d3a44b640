"""Routing between the dense and the sparse graph: the calibration's arithmetic and choices."""

import random
import sys
import threading

import pytest

from sarnn_serve.engine import DENSE, SPARSE
from sarnn_serve.routing import Calibration, Router

# dense costs 10 us/step at B=1 and 80 at B=64; sparse costs 2 + 30 x rate at B=1, 4 + 120 x rate
# at B=64: with the 0.8 margin, crossovers at 0.2 and 0.5
CAL = Calibration([1, 64], [0, 0], [10e-6, 80e-6], [0, 0], [2e-6, 4e-6], [30e-6, 120e-6])


def test_crossover_is_where_the_sparse_line_meets_the_dense_time() -> None:
    assert CAL.crossover() == pytest.approx([0.2, 0.5])
    never = Calibration([1], [0], [1e-6], [0], [0.9e-6], [1e-6])
    always = Calibration([1], [0], [5e-6], [0], [1e-6], [0.0])
    assert never.crossover() == [0.0] and always.crossover() == [1.0]


def paths(plan: list[tuple[str, list[int]]]) -> list[tuple[str, int]]:
    return [(path, len(rows)) for path, rows in plan]


def test_auto_plans_by_predicted_union_rate() -> None:
    router = Router("auto", CAL)
    assert router.plan([0.1]) == [(SPARSE, [0])]
    assert router.plan([0.3]) == [(DENSE, [0])]
    # two sessions at 9%: one sparse call (union 17%) beats two single ones and the dense call
    assert paths(router.plan([0.09, 0.09])) == [(SPARSE, 2)]
    # eight at 30%: every sparse option costs more than the dense call
    assert router.plan([0.3] * 8) == [(DENSE, list(range(8)))]


def test_auto_splits_a_batch_into_single_sparse_calls_when_cheaper() -> None:
    # at large H one row is cheap sparse and batching barely helps the dense graph
    big = Calibration([1, 8], [0, 0], [100e-6, 700e-6], [0, 0], [5e-6, 40e-6], [100e-6, 800e-6])
    plan = Router("auto", big).plan([0.02, 0.5, 0.01, 0.03])
    assert paths(plan) == [(SPARSE, 1)] * 4
    # rows go lowest rate first, each row exactly once
    assert [rows[0] for _, rows in plan] == [2, 0, 3, 1]


def test_forced_modes_and_no_sparse_graph() -> None:
    assert Router("dense", CAL).plan([0.0]) == [(DENSE, [0])]
    assert Router("sparse", CAL).plan([1.0, 1.0]) == [(SPARSE, [0, 1])]
    assert Router("auto", None).plan([0.0]) == [(DENSE, [0])]
    assert Router("auto", None).dense_seconds(1, 10) is None


def test_dense_equivalent_interpolates_between_batch_sizes() -> None:
    assert CAL.dense_call(1, 10) == pytest.approx(100e-6)
    assert CAL.dense_call(64, 2) == pytest.approx(160e-6)
    assert 10e-6 < CAL.dense_call(32, 1) < 80e-6
    assert CAL.dense_call(128, 1) == pytest.approx(160e-6)  # past the largest: per row


@pytest.mark.slow
def test_calibration_of_real_graphs() -> None:
    """The checked-in tiny model's dense and sparse graphs (F = 6, H = 16)."""
    from sarnn_serve.engine import Engine
    from sarnn_serve.routing import BATCHES, THRESHOLDS, calibrate
    from tests.service_fixtures import FIXTURE_MODELS, TINY_MODEL

    graphs = FIXTURE_MODELS / TINY_MODEL
    engine = Engine(graphs / "model.onnx", sparse_path=graphs / "model.sparse.onnx")
    cal = calibrate(engine, 6, 16)
    assert cal.batches == list(BATCHES)
    assert all(d > 0 for d in cal.dense)
    assert all(0.0 <= c <= 1.0 for c in cal.crossover())
    # the thresholds spread the measured union rates (of one row: with 16 neurons the union
    # of many rows' updates is every neuron at every threshold)
    assert all(len(rates) == len(THRESHOLDS) for rates in cal.measured_rates)
    assert all(0.0 <= r <= 1.0 for rates in cal.measured_rates for r in rates)
    assert max(cal.measured_rates[0]) > min(cal.measured_rates[0])


def test_measured_times_correct_the_calibration() -> None:
    router = Router("auto", CAL)
    assert router.plan([0.1]) == [(SPARSE, [0])]
    # sparse calls keep measuring 5x their prediction: the router moves to dense
    for _ in range(200):
        router.observe(SPARSE, [0.1], 1, 5 * CAL.sparse_call(1, 1, 0.1))
    assert router.correction[SPARSE] > 4
    assert router.plan([0.1]) == [(DENSE, [0])]


LARGE_H = Calibration(
    [1, 8, 64],
    [0, 0, 0],
    [100e-6, 700e-6, 4e-3],
    [0, 0, 0],
    [5e-6, 40e-6, 300e-6],
    [100e-6, 800e-6, 6e-3],
)


@pytest.mark.parametrize(
    ("calibration", "prunes"), [(CAL, True), (LARGE_H, False)], ids=["small-h", "large-h"]
)
def test_the_cached_rate_bound_never_changes_a_plan(
    calibration: Calibration, prunes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(0)
    batches = [
        [rng.choice([0.0, 0.01, 0.05, 0.2, 0.6, 1.0]) * rng.random() for _ in range(n)]
        for n in [1, 2, 3, 8, 9, 17, 64] * 30
    ]
    bounded, full = Router("auto", calibration), Router("auto", calibration)
    monkeypatch.setattr(full, "_dense_from", lambda *_: 2.0)  # never settled early
    planned: list[int] = []
    original = bounded._sparse_plan
    monkeypatch.setattr(bounded, "_sparse_plan", lambda *a: planned.append(1) or original(*a))
    for rates in batches:
        for steps in (1, 32):
            assert bounded.plan(rates, steps) == full.plan(rates, steps)
    # where sparse often loses, some batches are settled by the bound without planning
    assert (len(planned) < 2 * len(batches)) == prunes


class _ObservedOnWrite(dict):
    """A threshold memo whose first write lets `hook` (another engine thread) run right after
    it, before the planning thread reads its entry back."""

    def __init__(self, hook) -> None:
        super().__init__()
        self.hook = hook

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()


def test_a_correction_between_a_memo_write_and_its_read_is_harmless() -> None:
    # SARNN_ENGINE_THREADS >= 2: a thread's observe resets the memo while another plans
    router = Router("auto", CAL)

    def other_thread() -> None:  # a call at 5x its prediction: the correction moves past 10%
        router.observe(DENSE, [0.3] * 8, 1, 5 * CAL.dense_call(8, 1))

    router._thresholds = _ObservedOnWrite(other_thread)
    assert router.plan([0.3] * 8) == [(DENSE, list(range(8)))]
    assert router.correction[DENSE] > 1.1


def test_planning_and_observing_from_several_threads() -> None:
    router, errors = Router("auto", CAL), []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                rates = [rng.random() * 0.5 for _ in range(rng.choice([1, 2, 8, 9]))]
                plan = router.plan(rates, rng.choice([1, 4]))
                assert sorted(i for _, rows in plan for i in rows) == list(range(len(rates)))
                path = plan[0][0]
                router.observe(path, rates, 1, rng.choice([1e-6, 1e-3]))  # swings: resets
        except Exception as exc:  # reported below, with the seed
            errors.append((seed, exc))

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
