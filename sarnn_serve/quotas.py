"""Per-caller limits kept in this process: session creation rate and WebSocket connections.

The cap on open sessions per caller lives in the session store (it must hold across replicas).
"""

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sarnn_serve.errors import TooManyRequests

MAX_TRACKED = 100_000


class CreationRate:
    """A token bucket per caller: `burst` sessions at once, then `rate` per second."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, caller: str) -> None:
        """Spend one token of `caller`; TooManyRequests with the wait if there is none."""
        now = self._clock()
        tokens, then = self._buckets.pop(caller, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            raise TooManyRequests(
                "rate_limited",
                f"session creation rate of {self.rate:g}/s exceeded for this key",
                (1.0 - tokens) / self.rate,
            )
        self._buckets[caller] = (tokens - 1.0, now)
        while len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)

    def refund(self, caller: str) -> None:
        """Give back the token of a creation that was refused after `take`."""
        tokens, then = self._buckets.get(caller, (float(self.burst), self._clock()))
        self._buckets[caller] = (min(float(self.burst), tokens + 1.0), then)


class ConnectionLimit:
    """Counts open WebSocket connections, in all and per caller."""

    def __init__(self, total: int, per_caller: int) -> None:
        self.total, self.per_caller = total, per_caller
        self._open: dict[str, int] = {}
        self._count = 0

    @property
    def open(self) -> int:
        return self._count

    @contextmanager
    def hold(self, caller: str) -> Iterator[None]:
        """Count one connection for its lifetime; TooManyRequests if a cap is reached."""
        mine = self._open.get(caller, 0)
        if self._count >= self.total:
            raise TooManyRequests(
                "too_many_connections", f"server holds its maximum of {self.total} streams", 1.0
            )
        if mine >= self.per_caller:
            raise TooManyRequests(
                "too_many_connections",
                f"this key holds its maximum of {self.per_caller} streams",
                1.0,
            )
        self._open[caller] = mine + 1
        self._count += 1
        try:
            yield
        finally:
            self._count -= 1
            left = self._open[caller] - 1
            if left:
                self._open[caller] = left
            else:
                del self._open[caller]
