"""Graceful degradation: under overload, sessions that allow it spend less per step.

One `Degrader` per model watches the queueing delay of its micro-batcher (how long the oldest
chunk of each batch waited since it reached the server: WebSocket chunks that a client sent
ahead of its answers wait from their arrival). It acts at a setpoint of SETPOINT x the target: a
controller that acts only once the target is passed holds the server at its edge, where the
delay's tail is over the target. It keeps a level: once per `interval_s`, if the longest delay
seen in the interval exceeded the setpoint, the level rises, by one, or by more the further over
the setpoint the delay is (1 + log2 of the ratio, at most MAX_RISE: a heavy overload is met
within a second); once it has stayed under half the setpoint for CALM_INTERVALS intervals in a
row, the level falls by one (falling at the first calm interval would undo the shedding that
calmed it, and the load would swing). A session created with `degrade: true` runs each chunk at
its own threshold plus `level x step` (capped at `ceiling`): a higher threshold updates fewer
neurons, which the native kernel (or the sparse graph) turns into less time per step. Sessions
without it are never touched.
"""

import math
import time
from collections.abc import Callable

DEFAULT_STEP = 0.05
MAX_RISE = 4
CALM_INTERVALS = 4
SETPOINT = 0.5  # of the target: headroom for the delay's tail


class Degrader:
    """The degradation level of one model, driven by its batcher's queueing delay."""

    def __init__(
        self,
        target_s: float,
        ceiling: float,
        step: float = DEFAULT_STEP,
        interval_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target_s = target_s
        self.ceiling = ceiling
        self.step = step
        self.interval_s = interval_s
        self.clock = clock
        self.level = 0
        self.max_level = max(0, round(ceiling / step))
        self._worst = 0.0
        self._calm = 0
        self._since = clock()

    def observe(self, delay_s: float) -> None:
        """A batch started after its oldest chunk waited `delay_s`."""
        self._worst = max(self._worst, delay_s)
        now = self.clock()
        if now - self._since < self.interval_s:
            return
        setpoint = self.target_s * SETPOINT
        self._calm = self._calm + 1 if self._worst < setpoint / 2 else 0
        if self._worst > setpoint:
            rise = min(MAX_RISE, 1 + int(math.log2(self._worst / setpoint)))
            self.level = min(self.max_level, self.level + rise)
        elif self._calm >= CALM_INTERVALS:
            self.level = max(0, self.level - 1)
            self._calm = 0
        self._worst, self._since = 0.0, now

    def threshold(self, own: float) -> float:
        """The threshold a degradable session with threshold `own` runs at now."""
        if not self.level:
            return own
        return max(own, min(self.ceiling, own + self.level * self.step))
