"""Which graph runs a batch: dense or sparse, chosen by what was measured on this machine.

At model load `calibrate` times the dense graph and the sparse graph at a few batch sizes
(sparse at several update rates, set through the threshold) and fits, per batch size, the
sparse graph's time per step as a line in the union update rate (the fraction of neurons that
update in at least one row: the rows the sparse graph computes). A batch then runs sparse when
its predicted union rate is below the crossover where that line meets 80% of the dense time
(a margin for noisy timings). The
union rate of a batch is predicted from its sessions' recent update rates as if they were
independent, 1 - prod(1 - r_i), which over-estimates it (neurons that update often do so in
every session), so the choice errs towards dense.
"""

import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from sarnn_serve.engine import DENSE, SPARSE, Engine

BATCHES = (1, 8, 64)
THRESHOLDS = (0.02, 0.3, 0.5, 0.7, 0.9, 0.98)
STEPS = 16
SAMPLE_S = 0.02
# the sparse graph must be predicted this much faster: timings on a busy machine are noisy,
# and a wrong choice for sparse costs more than one for dense
SPARSE_MARGIN = 0.8


@dataclass
class Calibration:
    """Seconds per step of one call, per calibrated batch size: dense, and sparse as
    base + slope x union rate; with the union rates that were measured."""

    batches: list[int]
    dense: list[float]
    sparse_base: list[float]
    sparse_slope: list[float]
    measured_rates: list[list[float]] = field(default_factory=list)

    def crossover(self) -> list[float]:
        """Per batch size: the union rate below which the sparse graph is faster by the margin."""
        out = []
        for dense, base, slope in zip(self.dense, self.sparse_base, self.sparse_slope, strict=True):
            target = SPARSE_MARGIN * dense
            if slope <= 0:
                out.append(1.0 if base < target else 0.0)
            else:
                out.append(float(min(1.0, max(0.0, (target - base) / slope))))
        return out

    def dense_seconds(self, batch: int, steps: int) -> float:
        """Predicted time of a dense call of `batch` rows and `steps` steps."""
        return float(np.interp(batch, self.batches, self.dense)) * steps

    def sparse_faster(self, batch: int, union: float) -> bool:
        """Whether the sparse graph is predicted faster by at least the margin."""
        base = float(np.interp(batch, self.batches, self.sparse_base))
        slope = float(np.interp(batch, self.batches, self.sparse_slope))
        dense = float(np.interp(batch, self.batches, self.dense))
        return base + slope * union < SPARSE_MARGIN * dense

    def as_dict(self) -> dict:
        return {
            "batch_sizes": self.batches,
            "dense_us_per_step": [round(d * 1e6, 2) for d in self.dense],
            "sparse_us_per_step_at_rate_0": [round(b * 1e6, 2) for b in self.sparse_base],
            "sparse_us_per_step_per_unit_rate": [round(s * 1e6, 2) for s in self.sparse_slope],
            "crossover_update_rate": [round(c, 4) for c in self.crossover()],
            "measured_union_rates": [[round(r, 3) for r in rs] for rs in self.measured_rates],
        }


def _time(engine: Engine, path: str, feed: dict) -> tuple[float, np.ndarray]:
    """Median seconds per step of one call (a few samples of at least SAMPLE_S each)."""
    out = engine.run(path=path, **feed)
    samples = []
    for _ in range(3):
        started, calls = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - started) < SAMPLE_S or calls < 2:
            engine.run(path=path, **feed)
            calls += 1
        samples.append(elapsed / calls / STEPS)
    return statistics.median(samples), out.updates


def calibrate(engine: Engine, n_features: int, state_size: int, seed: int = 0) -> Calibration:
    """Time both graphs of `engine` at BATCHES x THRESHOLDS (see the module docstring)."""
    rng = np.random.default_rng(seed)
    cal = Calibration([], [], [], [])
    for batch in BATCHES:
        x = np.zeros((batch, STEPS, n_features), np.float32)
        state = (0.5 * rng.standard_normal((batch, state_size))).astype(np.float32)
        lengths = np.full(batch, STEPS, np.int64)
        dense, _ = _time(engine, DENSE, {"x": x, "state": state, "lengths": lengths})
        rates, times = [], []
        for tau in THRESHOLDS:
            feed = {
                "x": x,
                "state": state,
                "lengths": lengths,
                "threshold": np.full(batch, tau, np.float32),
            }
            seconds, updates = _time(engine, SPARSE, feed)
            rates.append(float(updates.any(axis=0).mean()))
            times.append(seconds)
        slope, base = np.polyfit(rates, times, 1) if np.ptp(rates) > 0 else (0.0, np.mean(times))
        cal.batches.append(batch)
        cal.dense.append(dense)
        cal.sparse_base.append(float(base))
        cal.sparse_slope.append(float(slope))
        cal.measured_rates.append(rates)
    return cal


class Router:
    """Chooses the graph of each batch: `mode` "auto" (by calibration), "dense" or "sparse"."""

    def __init__(self, mode: str, calibration: Calibration | None) -> None:
        if mode != DENSE and calibration is None:
            mode = DENSE
        self.mode = mode
        self.calibration = calibration

    def choose(self, batch: int, rates: list[float]) -> str:
        """The path for a batch whose sessions recently updated `rates` of their neurons."""
        if self.mode != "auto" or self.calibration is None:
            return self.mode
        union = 1.0 - float(np.prod([1.0 - min(1.0, max(0.0, r)) for r in rates]))
        return SPARSE if self.calibration.sparse_faster(batch, union) else DENSE

    def dense_seconds(self, batch: int, steps: int) -> float | None:
        """What the dense graph would have spent on this call, from the calibration."""
        if self.calibration is None:
            return None
        return self.calibration.dense_seconds(batch, steps)
