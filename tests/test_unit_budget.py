"""Compute budgets in the data plane (in-process, the fake engine of test_unit_batcher, whose
update rate at threshold tau is 1 - tau on inputs with uniform fractional parts): sessions held
to a target rate, retries after the controller moved the threshold, and graceful degradation
that touches only the sessions that allow it."""

import numpy as np
import pytest

from sarnn_serve.card import ModelCard
from sarnn_serve.degrade import CALM_INTERVALS, SETPOINT, Degrader
from sarnn_serve.errors import InvalidInput
from sarnn_serve.schemas import SessionCreate
from sarnn_serve.settings import Settings
from tests.fixtures import CARD, MODEL, anonymous, chunk

CURVE = [
    {"threshold": t, "update_rate": 1 - t, "val_streaming_accuracy": 0.95 - 0.2 * t}
    for t in (0.1, 0.3, 0.5, 0.7, 0.9)
]
STEERED = ModelCard.model_validate({**CARD.model_dump(), "threshold_curve": CURVE})


@pytest.fixture
def plane_with_curve(make_plane):
    """make_plane over a card that carries a threshold curve."""
    return lambda settings=None: make_plane(settings, STEERED)


def noise(steps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, (steps, CARD.n_features)).astype(np.float32)


async def test_a_session_reaches_its_target_rate(plane_with_curve):
    plane = await plane_with_curve()
    who = anonymous()
    session = await plane.create_session(who, SessionCreate(target_update_rate=0.3))
    assert session["target_update_rate"] == 0.3 and session["threshold"] == pytest.approx(0.7)
    counts, thresholds = [], []
    for seq in range(300):
        result = await plane.advance(who, session["id"], chunk(seq, noise(10, seq)))
        counts.extend(result.outputs.counts)
        thresholds.append(result.threshold)
        assert result.expected_accuracy == pytest.approx(0.95 - 0.2 * result.threshold)
    rate = np.mean(counts[500:]) / CARD.hidden
    assert rate == pytest.approx(0.3, abs=0.02)
    assert len(set(thresholds)) > 10  # the controller moved it
    assert all(0.1 <= t <= 0.9 for t in thresholds)


async def test_threshold_and_target_together_are_refused(plane_with_curve):
    plane = await plane_with_curve()
    with pytest.raises(InvalidInput, match="not both") as caught:
        await plane.create_session(
            anonymous(), SessionCreate(threshold=0.5, target_update_rate=0.3)
        )
    assert caught.value.detail["field"] == "target_update_rate"


async def test_a_model_without_a_curve_cannot_be_steered(make_plane):
    plane = await make_plane()
    with pytest.raises(InvalidInput, match="no measured threshold curve"):
        await plane.create_session(anonymous(), SessionCreate(target_update_rate=0.3))
    assert plane.monitor.active[MODEL] == 0


async def test_a_retry_after_the_threshold_moved_replays_the_same_answer(plane_with_curve):
    plane = await plane_with_curve()
    who = anonymous()
    sid = (await plane.create_session(who, SessionCreate(target_update_rate=0.2)))["id"]
    first = await plane.advance(who, sid, chunk(0, noise(50, 1)))
    moved = (await plane.get_session(who, sid))["threshold"]
    assert moved != first.threshold
    again = await plane.advance(who, sid, chunk(0, noise(50, 1)))
    assert again.replayed and again.threshold == first.threshold
    np.testing.assert_array_equal(again.outputs.counts, first.outputs.counts)
    assert (await plane.get_session(who, sid))["threshold"] == moved
    assert (await plane.advance(who, sid, chunk(1, noise(5, 2)))).threshold == moved


async def test_degradation_raises_only_sessions_that_allow_it(plane_with_curve):
    plane = await plane_with_curve(Settings(degrade_queue_ms=5))
    who = anonymous()
    plain = (await plane.create_session(who, SessionCreate(threshold=0.4)))["id"]
    soft = (await plane.create_session(who, SessionCreate(threshold=0.4, degrade=True)))["id"]
    steered = await plane.create_session(who, SessionCreate(target_update_rate=0.5, degrade=True))
    plane.degraders[MODEL].level = 3  # as if the queue had been over its target 3 times
    a = await plane.advance(who, plain, chunk(0, noise(4, 0)))
    b = await plane.advance(who, soft, chunk(0, noise(4, 0)))
    c = await plane.advance(who, steered["id"], chunk(0, noise(4, 0)))
    assert a.threshold == 0.4
    assert b.threshold == pytest.approx(0.55)
    assert c.threshold == pytest.approx(steered["threshold"] + 0.15)
    # the controller holds while degradation overrides it
    assert (await plane.get_session(who, steered["id"]))["threshold"] == steered["threshold"]
    stats = plane.model_stats(MODEL)["degradation"]
    assert stats["level"] == 3 and stats["degraded_sessions"] == 2
    prom = plane.monitor.prom.registry.get_sample_value
    assert prom("sarnn_degrade_level", {"model": MODEL}) == 3
    assert prom("sarnn_degraded_sessions", {"model": MODEL}) == 2
    assert prom("sarnn_effective_threshold_count", {"model": MODEL}) == 3
    plane.degraders[MODEL].level = 0
    assert (await plane.advance(who, soft, chunk(1, noise(4, 1)))).threshold == 0.4
    assert plane.model_stats(MODEL)["degradation"]["degraded_sessions"] == 1


def test_degrader_levels_follow_the_queueing_delay():
    now = [0.0]
    d = Degrader(target_s=0.010, ceiling=0.9, step=0.1, interval_s=1.0, clock=lambda: now[0])
    for delay in (0.02, 0.03, 0.02):  # over the setpoint in three intervals
        d.observe(delay)
        now[0] += 1.0
        d.observe(0.0)
    assert d.level >= 2
    assert d.threshold(0.5) == pytest.approx(min(0.9, 0.5 + 0.1 * d.level))
    assert d.threshold(0.95) == 0.95  # never lowers a session's own threshold
    high = d.level
    hold = 0.75 * SETPOINT * 0.010  # between half the setpoint and the setpoint: hold
    d.observe(hold)
    now[0] += 1.0
    d.observe(hold)
    assert d.level == high
    levels = []
    for _ in range(CALM_INTERVALS * high):  # calm: one level down per CALM_INTERVALS
        now[0] += 1.0
        d.observe(0.1 * SETPOINT * 0.010)
        levels.append(d.level)
    assert levels[CALM_INTERVALS - 2] == high and levels[CALM_INTERVALS - 1] == high - 1
    assert d.level == 0 and d.threshold(0.5) == 0.5


def test_degrader_rises_faster_the_further_over_its_setpoint():
    """It acts at SETPOINT x the target (headroom: acting only past the target would run the
    server at its edge), the further over the faster."""
    now = [0.0]
    d = Degrader(target_s=0.010, ceiling=0.9, step=0.05, interval_s=1.0, clock=lambda: now[0])
    rises = []
    setpoint = SETPOINT * 0.010
    for ratio in (0.9, 1.5, 2.5, 4.5, 500):
        delay = ratio * setpoint
        before = d.level
        d.observe(delay)
        now[0] += 1.0
        d.observe(0.0)
        rises.append(d.level - before)
    assert rises == [0, 1, 2, 3, 4]
