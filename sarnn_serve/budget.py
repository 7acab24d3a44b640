"""Compute budgets: a session held to a target update rate by a controller on its threshold.

The model card's threshold curve (validation update rate and accuracy at a few thresholds) is
read both ways: the threshold expected to give a rate (the controller's starting point and its
feed-forward), and the accuracy expected at a threshold (what degrading a session costs).

The controller is an integral loop in threshold space. After a chunk of n steps whose mean
error is e = (updates / (n H)) - target, the session's threshold offset moves by

    offset <- offset + (1 - (1 - GAIN)^n) e / |slope|,     tau = tau_ff + offset

with tau_ff the curve's threshold for the target and slope the curve's d rate / d tau there: a
share GAIN of the error is corrected per step, compounded over the chunk (so a 100-step chunk
corrects most of its error at once and a 1-step chunk a little, and the loop stays stable at any
chunk size). At rest the mean error is zero, whatever the card's curve got wrong about this
session's data. tau stays within the curve's thresholds (the range the model was measured on);
the offset is clipped there too, so it does not wind up against an unreachable target.
"""

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from sarnn_serve.card import ModelCard

GAIN = 0.02
MIN_SLOPE = 0.05  # |d rate / d tau| floor: a flat stretch of the curve must not blow up gains


@dataclass(frozen=True)
class ThresholdCurve:
    """A model's measured thresholds, update rates and validation accuracies (thresholds
    ascending)."""

    thresholds: np.ndarray
    rates: np.ndarray
    accuracies: np.ndarray

    @classmethod
    def of(cls, card: ModelCard) -> "ThresholdCurve | None":
        """The card's curve, or None if it has fewer than two points (or is not selective)."""
        points = sorted(card.threshold_curve or [], key=lambda p: p.threshold)
        if not card.selective or len(points) < 2:
            return None
        return cls(
            np.array([p.threshold for p in points]),
            np.array([p.update_rate for p in points]),
            np.array([p.val_streaming_accuracy for p in points]),
        )

    @property
    def low(self) -> float:
        return float(self.thresholds[0])

    @property
    def high(self) -> float:
        return float(self.thresholds[-1])

    def clamp(self, threshold: float) -> float:
        return min(self.high, max(self.low, threshold))

    @cached_property
    def _inverse(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Rates ascending (flat stretches dropped) and their thresholds, or None if the rate
        never moves."""
        order = np.argsort(self.rates, kind="stable")
        rates, taus = self.rates[order], self.thresholds[order]
        keep = np.concatenate([[True], np.diff(rates) > 0])
        return (rates[keep], taus[keep]) if keep.sum() >= 2 else None

    def threshold_for(self, rate: float) -> float:
        """The threshold at which the curve gives `rate` (linear between points; the nearest
        end outside them). Rates fall as thresholds rise; flat stretches are skipped."""
        if self._inverse is None:
            return self.clamp(float(np.mean(self.thresholds)))
        rates, taus = self._inverse
        return self.clamp(float(np.interp(rate, rates, taus)))

    def slope_at(self, threshold: float) -> float:
        """|d rate / d tau| of the segment holding `threshold`, at least MIN_SLOPE."""
        i = int(np.clip(np.searchsorted(self.thresholds, threshold) - 1, 0, len(self.rates) - 2))
        d_rate = self.rates[i + 1] - self.rates[i]
        d_tau = self.thresholds[i + 1] - self.thresholds[i]
        return max(MIN_SLOPE, abs(float(d_rate / d_tau)))

    def accuracy_at(self, threshold: float) -> float:
        """Validation streaming accuracy expected at `threshold` (linear between points)."""
        return float(np.interp(threshold, self.thresholds, self.accuracies))


@dataclass
class RateControl:
    """The controller's state, kept in the session record: target rate and threshold offset."""

    target: float
    offset: float = 0.0

    def start(self, curve: ThresholdCurve) -> float:
        """The first threshold: where the curve gives the target (plus the offset so far)."""
        return curve.clamp(curve.threshold_for(self.target) + self.offset)

    def after_chunk(self, curve: ThresholdCurve, steps: int, updates: int, hidden: int) -> float:
        """Correct the offset by the chunk's mean error; the threshold for the next chunk."""
        base = curve.threshold_for(self.target)
        error = updates / (steps * hidden) - self.target
        share = 1.0 - (1.0 - GAIN) ** steps
        threshold = curve.clamp(base + self.offset + share * error / curve.slope_at(base))
        self.offset = threshold - base
        return threshold
