"""The rate controller (sarnn_serve.budget) on synthetic streams, and the curve read both ways."""

import numpy as np
import pytest

from sarnn_serve.budget import RateControl, ThresholdCurve

HIDDEN = 128
CARD_CURVE = ThresholdCurve(
    np.array([0.1, 0.3, 0.5, 0.7, 0.9]),
    np.array([0.8, 0.65, 0.5, 0.35, 0.2]),
    np.array([0.90, 0.88, 0.85, 0.80, 0.70]),
)


def test_curve_read_both_ways():
    assert CARD_CURVE.threshold_for(0.5) == pytest.approx(0.5)
    assert CARD_CURVE.threshold_for(0.425) == pytest.approx(0.6)
    assert CARD_CURVE.threshold_for(0.99) == 0.1 and CARD_CURVE.threshold_for(0.01) == 0.9
    assert CARD_CURVE.slope_at(0.55) == pytest.approx(0.75)
    assert CARD_CURVE.accuracy_at(0.8) == pytest.approx(0.75)
    flat = ThresholdCurve(np.array([0.3, 0.6]), np.array([0.4, 0.4]), np.array([0.8, 0.8]))
    assert flat.slope_at(0.4) == 0.05  # the floor
    assert 0.3 <= flat.threshold_for(0.2) <= 0.6


def _stream(target: float, chunk: int, offset: float, steps: int = 3000, seed: int = 0):
    """Run a session whose true rate at tau is the card's curve shifted by `offset` (the card
    is off), with per-step binomial noise; yield (rate, tau) per step."""
    rng = np.random.default_rng(seed)
    control = RateControl(target)
    tau = control.start(CARD_CURVE)
    rates = []
    for _ in range(steps // chunk):
        true = np.clip(np.interp(tau, CARD_CURVE.thresholds, CARD_CURVE.rates) + offset, 0, 1)
        counts = rng.binomial(HIDDEN, true, size=chunk)
        rates.extend(counts / HIDDEN)
        tau = control.after_chunk(CARD_CURVE, chunk, int(counts.sum()), HIDDEN)
        assert CARD_CURVE.low <= tau <= CARD_CURVE.high
    return np.array(rates), control


@pytest.mark.parametrize("chunk", [1, 25, 100])
@pytest.mark.parametrize(
    ("target", "offset"),  # the card's curve reaches 0.2 at most; + offset for this session
    [(0.2, -0.08), (0.2, 0.0), (0.3, -0.08), (0.3, 0.06), (0.4, 0.0), (0.4, 0.06)],
)
def test_controller_reaches_the_target_though_the_card_is_off(target, chunk, offset):
    rates, _ = _stream(target, chunk, offset)
    assert rates[500:].mean() == pytest.approx(target, abs=0.02)


def test_an_unreachable_target_pins_the_threshold_without_wind_up():
    """The model cannot go below 0.2 + 0.1: tau sits at the top, and the offset stays where
    it put tau there."""
    rates, control = _stream(0.05, 10, 0.1)
    assert rates[500:].mean() == pytest.approx(0.3, abs=0.02)
    assert CARD_CURVE.threshold_for(0.05) + control.offset == CARD_CURVE.high
