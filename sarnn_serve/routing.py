"""Which graph runs a batch: dense or sparse, chosen by what was measured on this machine.

At model load `calibrate` times the dense graph and the sparse graph at a few batch sizes
(sparse at several update rates, set through the threshold) and fits, per batch size, the
sparse graph's time per step as a line in the union update rate (the fraction of neurons that
update in at least one row: the rows the sparse graph computes). A batch then runs sparse when
its predicted union rate is below the crossover where that line meets 80% of the dense time
(a margin for noisy timings), or splits it into small sparse calls when that is cheaper
(`Router.plan`). The
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
GROUP_SIZES = (1, 8)


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

    def _at(self, values: list[float], batch: int) -> float:
        """A per-step time at `batch` rows: interpolated, and proportional past the largest."""
        top = self.batches[-1]
        if batch > top:
            return values[-1] * batch / top
        return float(np.interp(batch, self.batches, values))

    def dense_step(self, batch: int) -> float:
        """Predicted seconds per step of a dense call of `batch` rows."""
        return self._at(self.dense, batch)

    def sparse_step(self, batch: int, union: float) -> float:
        """Predicted seconds per step of a sparse call of `batch` rows at a union rate."""
        return self._at(self.sparse_base, batch) + self._at(self.sparse_slope, batch) * union

    def dense_seconds(self, batch: int, steps: int) -> float:
        """Predicted time of a dense call of `batch` rows and `steps` steps."""
        return self.dense_step(batch) * steps

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


def union_rate(rates: list[float]) -> float:
    """Predicted fraction of neurons that update in at least one of the rows."""
    return 1.0 - float(np.prod([1.0 - min(1.0, max(0.0, r)) for r in rates]))


Plan = list[tuple[str, list[int]]]


class Router:
    """Plans the calls of a batch: `mode` "auto" (by calibration), "dense" or "sparse".

    In auto mode the options are: one dense call; one sparse call; or sparse calls on groups of
    GROUP_SIZES rows, the rows sorted by rate (the sparse graph computes the union of its rows'
    updates, so rows that update little are cheaper together, and at large H single rows can
    beat every batch). The cheapest predicted option wins; a sparse one must beat the dense
    call by the margin.
    """

    def __init__(self, mode: str, calibration: Calibration | None) -> None:
        if mode != DENSE and calibration is None:
            mode = DENSE
        self.mode = mode
        self.calibration = calibration

    def plan(self, rates: list[float]) -> Plan:
        """Calls for a batch whose rows recently updated `rates` of their neurons: a list of
        (graph, row indices)."""
        everyone = list(range(len(rates)))
        cal = self.calibration
        if self.mode == SPARSE:
            return [(SPARSE, everyone)]
        if self.mode != "auto" or cal is None:
            return [(DENSE, everyone)]
        order = sorted(everyone, key=lambda i: rates[i])
        best: Plan = [(DENSE, everyone)]
        best_cost = SPARSE_MARGIN * cal.dense_step(len(rates))
        for size in sorted({len(rates), *GROUP_SIZES}, reverse=True):
            if size > len(rates):
                continue
            groups = [order[k : k + size] for k in range(0, len(order), size)]
            cost = sum(cal.sparse_step(len(g), union_rate([rates[i] for i in g])) for g in groups)
            if cost < best_cost:
                best, best_cost = [(SPARSE, g) for g in groups], cost
        return best

    def dense_seconds(self, batch: int, steps: int) -> float | None:
        """What the dense graph would have spent on a call, from the calibration."""
        if self.calibration is None:
            return None
        return self.calibration.dense_seconds(batch, steps)
