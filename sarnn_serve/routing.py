"""What runs a batch: the dense graph or a path that skips work, chosen by what is measured on
this machine.

Two paths skip the work of neurons that do not update: the native kernel (where it was built)
and the sparse graph; the router weighs the dense graph against one of them, the kernel if the
engine has it. Below, "sparse" names that path, and its rate is what its cost follows: for the
sparse graph the union update rate of the batch (the fraction of neurons that update in at least
one row: the rows it computes), for the kernel the mean of the rows' update rates (it computes
each row's own updates).

At model load `calibrate` times both paths at a few batch sizes and at 1 and 16 steps per call
(the sparse one at several update rates, set through the threshold), and fits, per batch size, a
call's time as fixed + steps x per-step, where the sparse path's per-step time is a line in its
rate. `Router.plan` then predicts, for every batch, the cost of one dense call, one sparse call,
and (sparse graph only) sparse calls on small groups of rows, and takes the cheapest (a sparse
plan must beat the dense call by a margin). The union rate of a batch is predicted from its
sessions' recent update rates as if they were independent, 1 - prod(1 - r_i), which
over-estimates it (neurons that update often do so in every session), so the choice errs
towards dense.

Calibration on a busy machine is noisy, so predictions are corrected while serving: every call
reports its measured time, and each graph keeps a running ratio of measured to predicted time
that scales its predictions. The other graph is not tried on purpose: the two graphs' answers
agree to 1e-5, not to the last bit, so a model whose batches all belong on one graph (a small H
always runs dense) answers bit for bit the same whatever the load. A graph whose calibration
under-predicted it is abandoned until the next start.
"""

import bisect
import math
import statistics
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from sarnn_serve.engine import DENSE, NATIVE, SPARSE, Engine

BATCHES = (1, 8, 64)
THRESHOLDS = (0.02, 0.3, 0.5, 0.7, 0.9, 0.98)
STEP_COUNTS = (1, 16)
SAMPLE_S = 0.02
# a sparse plan must be predicted this much cheaper than the dense call: a wrong choice for
# sparse costs more than one for dense
SPARSE_MARGIN = 0.8
GROUP_SIZES = (1, 8)
THRESHOLD_TOLERANCE = 0.1  # near the boundary the two graphs cost about the same anyway
THRESHOLD_PRECISION = 1e-3
CORRECTION_WEIGHT = 0.05
CORRECTION_BOUNDS = (0.2, 5.0)


def _line(steps: tuple[int, int], seconds: tuple[float, float]) -> tuple[float, float]:
    """Fixed and per-step seconds of a call from its times at two step counts (both >= 0)."""
    (t1, t2), (s1, s2) = steps, seconds
    per_step = max(0.0, (s2 - s1) / (t2 - t1))
    return max(0.0, s1 - per_step * t1), per_step


@dataclass
class Calibration:
    """Per calibrated batch size: dense call = fixed + steps x per-step; sparse call = fixed +
    steps x (base + slope x rate); with the rates that were measured. `graph` is the sparse
    path: SPARSE (rate: the union rate) or NATIVE (rate: the mean row rate)."""

    batches: list[int]
    dense_fixed: list[float]
    dense: list[float]
    sparse_fixed: list[float]
    sparse_base: list[float]
    sparse_slope: list[float]
    measured_rates: list[list[float]] = field(default_factory=list)
    graph: str = SPARSE

    def rate_of(self, rates: list[float]) -> float:
        """The rate the sparse path's cost follows, for rows that update `rates`."""
        if self.graph == NATIVE:
            return sum(rates) / len(rates)
        return union_rate(rates)

    def crossover(self) -> list[float]:
        """Per batch size, for long chunks: the rate below which the sparse path is faster per
        step than the dense graph by the margin."""
        out = []
        for dense, base, slope in zip(self.dense, self.sparse_base, self.sparse_slope, strict=True):
            target = SPARSE_MARGIN * dense
            if slope <= 0:
                out.append(1.0 if base < target else 0.0)
            else:
                out.append(float(min(1.0, max(0.0, (target - base) / slope))))
        return out

    def _at(self, values: list[float], batch: int) -> float:
        """A time at `batch` rows: interpolated, and proportional past the largest (plain
        Python: this runs for every batch served)."""
        sizes = self.batches
        if batch >= sizes[-1]:
            return values[-1] * batch / sizes[-1]
        if batch <= sizes[0]:
            return values[0]
        i = bisect.bisect_right(sizes, batch)
        lo, hi = sizes[i - 1], sizes[i]
        return values[i - 1] + (values[i] - values[i - 1]) * (batch - lo) / (hi - lo)

    def dense_call(self, batch: int, steps: int) -> float:
        """Predicted seconds of a dense call of `batch` rows and `steps` steps."""
        return self._at(self.dense_fixed, batch) + self._at(self.dense, batch) * steps

    def sparse_call(self, batch: int, steps: int, union: float) -> float:
        """Predicted seconds of a sparse call at a rate (see `rate_of`)."""
        per_step = self._at(self.sparse_base, batch) + self._at(self.sparse_slope, batch) * union
        return self._at(self.sparse_fixed, batch) + per_step * steps

    def as_dict(self) -> dict:
        def us(values: list[float]) -> list[float]:
            return [round(v * 1e6, 2) for v in values]

        return {
            "path": self.graph,
            "batch_sizes": self.batches,
            "dense_us_per_call": us(self.dense_fixed),
            "dense_us_per_step": us(self.dense),
            "sparse_us_per_call": us(self.sparse_fixed),
            "sparse_us_per_step_at_rate_0": us(self.sparse_base),
            "sparse_us_per_step_per_unit_rate": us(self.sparse_slope),
            "crossover_update_rate": [round(c, 4) for c in self.crossover()],
            "measured_rates": [[round(r, 3) for r in rs] for rs in self.measured_rates],
        }


def _time(engine: Engine, path: str, feed: dict) -> tuple[float, np.ndarray]:
    """Median seconds of one call (a few samples of at least SAMPLE_S each), and its updates."""
    out = engine.run(path=path, **feed)
    samples = []
    for _ in range(5):
        started, calls = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - started) < SAMPLE_S or calls < 2:
            engine.run(path=path, **feed)
            calls += 1
        samples.append(elapsed / calls)
    return statistics.median(samples), out.updates


def _feed(state: np.ndarray, x: np.ndarray, steps: int, tau: float | None = None) -> dict:
    """The first `steps` steps of inputs `x` for every row of `state`, at threshold `tau`."""
    batch = len(state)
    feed = {
        "x": np.ascontiguousarray(x[:, :steps]),  # a copy made once, not in every timed call
        "state": state,
        "lengths": np.full(batch, steps, np.int64),
    }
    if tau is not None:
        feed["threshold"] = np.full(batch, tau, np.float32)
    return feed


def calibrate(
    engine: Engine, n_features: int, state_size: int, graph: str = SPARSE, seed: int = 0
) -> Calibration:
    """Time the dense graph and the sparse path `graph` (SPARSE or NATIVE) of `engine` at
    BATCHES x STEP_COUNTS (the sparse path also x THRESHOLDS), on random inputs: they make the
    neurons' gates differ, so the thresholds spread the update rates between 0 and 1 (on
    constant inputs an untrained model's neurons all flip at one threshold)."""
    rng = np.random.default_rng(seed)
    cal = Calibration([], [], [], [], [], [], graph=graph)
    for batch in BATCHES:
        state = (0.5 * rng.standard_normal((batch, state_size))).astype(np.float32)
        x = rng.standard_normal((batch, STEP_COUNTS[-1], n_features)).astype(np.float32)
        dense = [_time(engine, DENSE, _feed(state, x, t))[0] for t in STEP_COUNTS]
        fixed, per_step = _line(STEP_COUNTS, tuple(dense))
        rates, per_steps, fixeds = [], [], []
        for tau in THRESHOLDS:
            short, _ = _time(engine, graph, _feed(state, x, STEP_COUNTS[0], tau))
            long, updates = _time(engine, graph, _feed(state, x, STEP_COUNTS[1], tau))
            f, s = _line(STEP_COUNTS, (short, long))
            rates.append(float((updates if graph == NATIVE else updates.any(axis=0)).mean()))
            per_steps.append(s)
            fixeds.append(f)
        if np.ptp(rates) > 0:
            slope, base = np.polyfit(rates, per_steps, 1)
        else:
            slope, base = 0.0, float(np.mean(per_steps))
        cal.batches.append(batch)
        cal.dense_fixed.append(fixed)
        cal.dense.append(per_step)
        cal.sparse_fixed.append(float(statistics.median(fixeds)))
        cal.sparse_base.append(max(0.0, float(base)))
        cal.sparse_slope.append(max(0.0, float(slope)))
        cal.measured_rates.append(rates)
    return cal


def union_rate(rates: list[float]) -> float:
    """Predicted fraction of neurons that update in at least one of the rows."""
    return 1.0 - math.prod(1.0 - min(1.0, max(0.0, r)) for r in rates)


Plan = list[tuple[str, list[int]]]


class Router:
    """Plans the calls of a batch: `mode` "auto" (by calibration), "dense", "sparse" or
    "native".

    In auto mode the options are: one dense call; one call on the sparse path; or, for the
    sparse graph, calls on groups of GROUP_SIZES rows, the rows sorted by rate (the sparse graph
    computes the union of its rows' updates, so rows that update little are cheaper together,
    and at large H single rows can beat every batch; the kernel's cost is a sum over rows, so
    splitting never pays). The cheapest predicted option wins; a sparse one must beat the dense
    call by the margin.
    """

    def __init__(self, mode: str, calibration: Calibration | None) -> None:
        if mode == "auto" and calibration is None:  # not calibrated (yet): dense
            mode = DENSE
        self.mode = mode
        self.calibration = calibration
        self.sparse = calibration.graph if calibration is not None else SPARSE
        self.correction = {DENSE: 1.0, self.sparse: 1.0}
        self._thresholds: dict[tuple[int, int], float] = {}
        self._everyone: dict[int, list[int]] = {}  # see _rows
        self._dense_calls: dict[tuple[int, int], float] = {}  # calibrated, by (batch, steps)
        self._thresholds_at = dict(self.correction)
        # engine threads (SARNN_ENGINE_THREADS >= 2) plan and observe concurrently: the caches
        # are filled with single dict operations and read into locals, a stale threshold memo
        # is replaced whole (never cleared under a reader), and corrections change one at a time
        self._observing = threading.Lock()

    def _sparse_plan(self, rates: list[float], steps: int) -> tuple[Plan, float]:
        """The cheapest predicted sparse plan and its corrected cost (this runs for every
        batch, so it works on one sorted list of keep-probabilities, not per-group lists)."""
        cal = self.calibration
        n = len(rates)
        if self.sparse == NATIVE:
            cost = cal.sparse_call(n, steps, cal.rate_of(rates)) * self.correction[NATIVE]
            return [(NATIVE, self._rows(n))], cost
        order = sorted(range(n), key=rates.__getitem__)
        keep = [1.0 - min(1.0, max(0.0, rates[i])) for i in order]
        best_size, best_cost = n, float("inf")
        for size in sorted({n, *GROUP_SIZES}, reverse=True):
            if size > n:
                continue
            if size == 1:  # a sum of single-row calls, in closed form
                cost = (n - 1) * cal.sparse_call(1, steps, 0.0) + cal.sparse_call(
                    1, steps, n - sum(keep)
                )
            else:
                cost = sum(
                    cal.sparse_call(min(size, n - k), steps, 1.0 - math.prod(keep[k : k + size]))
                    for k in range(0, n, size)
                )
            if cost < best_cost:
                best_size, best_cost = size, cost
        plan = [(SPARSE, order[k : k + best_size]) for k in range(0, n, best_size)]
        return plan, best_cost * self.correction[SPARSE]

    def _dense_from(self, batch: int, steps: int) -> float:
        """The least-active-row rate from which no sparse plan can win a batch of this size
        (0: none ever can), by bisection on `_beaten_at`; remembered per (batch, steps) until a
        correction moves by more than THRESHOLD_TOLERANCE (`observe`), since planning runs for
        every batch."""
        key = (batch, steps)
        thresholds = self._thresholds  # observe replaces the dict, never empties it in place
        high = thresholds.get(key)
        if high is None:
            dense_cost = self._dense_call(batch, steps) * self.correction[DENSE]
            low, high = 0.0, 1.0
            if self._beaten_at(batch, steps, 0.0, dense_cost):
                high = 0.0
            elif not self._beaten_at(batch, steps, 1.0, dense_cost):
                low = high = 1.0 + THRESHOLD_PRECISION  # sparse can win at any rate
            while high - low > THRESHOLD_PRECISION:
                mid = (low + high) / 2
                if self._beaten_at(batch, steps, mid, dense_cost):
                    high = mid
                else:
                    low = mid
            thresholds[key] = high
        return high

    def _beaten_at(self, n: int, steps: int, rate: float, dense_cost: float) -> bool:
        """Whether no sparse plan could win if every row updated `rate` of its neurons: then
        none can for a batch whose least active row updates at least that much (every plan's
        cost grows with its rows' rates)."""
        cal = self.calibration
        if self.sparse == NATIVE:
            cost = cal.sparse_call(n, steps, rate) * self.correction[NATIVE]
            return cost >= SPARSE_MARGIN * dense_cost
        keep = 1.0 - rate

        def calls(size: int) -> float:  # n rows in groups of `size`, each at its least union
            full, rest = divmod(n, size)
            cost = full * cal.sparse_call(size, steps, 1.0 - keep**size)
            return cost + (cal.sparse_call(rest, steps, 1.0 - keep**rest) if rest else 0.0)

        floor = min(calls(size) for size in {n, *GROUP_SIZES} if size <= n)
        return floor * self.correction[SPARSE] >= SPARSE_MARGIN * dense_cost

    def plan(self, rates: list[float], steps: int = 1) -> Plan:
        """Calls for a batch of chunks of up to `steps` steps whose rows recently updated
        `rates` of their neurons: a list of (graph, row indices)."""
        n = len(rates)
        everyone = self._rows(n)
        if self.mode != "auto":  # without a calibration the mode is dense (__init__)
            return [(self.mode, everyone)]
        if min(rates) >= self._dense_from(n, steps):
            return [(DENSE, everyone)]
        dense_cost = self._dense_call(n, steps) * self.correction[DENSE]
        sparse, sparse_cost = self._sparse_plan(rates, steps)
        return sparse if sparse_cost < SPARSE_MARGIN * dense_cost else [(DENSE, everyone)]

    def _rows(self, n: int) -> list[int]:
        """The row indices of a batch of n, one list per n (plans never change it)."""
        rows = self._everyone.get(n)
        if rows is None:
            rows = self._everyone[n] = list(range(n))
        return rows

    def _dense_call(self, batch: int, steps: int) -> float:
        """The calibration's dense call, remembered: every batch asks for it."""
        key = (batch, steps)
        cost = self._dense_calls.get(key)
        if cost is None:
            cost = self._dense_calls[key] = self.calibration.dense_call(batch, steps)
        return cost

    def observe(self, path: str, rates: list[float], steps: int, seconds: float) -> None:
        """Fold a call's measured time into its graph's correction of the calibration."""
        if self.calibration is None:
            return
        if path == DENSE:
            predicted = self._dense_call(len(rates), steps)
        else:
            predicted = self.calibration.sparse_call(
                len(rates), steps, self.calibration.rate_of(rates)
            )
        if predicted <= 0:
            return
        low, high = CORRECTION_BOUNDS
        ratio = min(high, max(low, seconds / predicted))
        with self._observing:
            self.correction[path] += CORRECTION_WEIGHT * (ratio - self.correction[path])
            at = self._thresholds_at[path]
            if abs(self.correction[path] - at) > THRESHOLD_TOLERANCE * at:
                self._thresholds = {}
                self._thresholds_at = dict(self.correction)

    def dense_seconds(self, batch: int, steps: int) -> float | None:
        """What the dense graph would have spent on a call: calibrated, corrected by what
        dense calls have measured."""
        if self.calibration is None:
            return None
        return self._dense_call(batch, steps) * self.correction[DENSE]
