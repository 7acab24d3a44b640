"""Who holds what in an in-process store: sessions and bytes per owner, each owner's sessions
in order of last use, and the owner to evict from when a budget is exceeded.

Eviction takes from the owner holding the most of the budget that is exceeded: over budget,
that owner is always over its share (the budget divided among the owners holding sessions), so
an owner within its share is never evicted for another's sake.
"""

import heapq
from collections import OrderedDict
from typing import Literal

Measure = Literal["sessions", "bytes"]


class Shares:
    """Per-owner usage with the largest holder found in O(log owners) (lazy max-heaps)."""

    def __init__(self) -> None:
        self._order: dict[str, OrderedDict[str, None]] = {}  # owner -> ids, least recent first
        self._usage: dict[Measure, dict[str, int]] = {"sessions": {}, "bytes": {}}
        self._heaps: dict[Measure, list[tuple[int, str]]] = {"sessions": [], "bytes": []}

    def _count(self, measure: Measure, owner: str, delta: int) -> None:
        usage = self._usage[measure]
        value = usage.get(owner, 0) + delta
        if value:
            usage[owner] = value
            heapq.heappush(self._heaps[measure], (-value, owner))
        else:
            usage.pop(owner, None)
        if len(self._heaps[measure]) > 4 * len(usage) + 64:  # drop the stale entries
            self._heaps[measure] = [(-v, o) for o, v in usage.items()]
            heapq.heapify(self._heaps[measure])

    def add(self, owner: str, session_id: str, size: int) -> None:
        """A session of `size` bytes, now the owner's most recently used."""
        self._order.setdefault(owner, OrderedDict())[session_id] = None
        self._count("sessions", owner, 1)
        self._count("bytes", owner, size)

    def remove(self, owner: str, session_id: str, size: int) -> None:
        order = self._order[owner]
        del order[session_id]
        if not order:
            del self._order[owner]
        self._count("sessions", owner, -1)
        self._count("bytes", owner, -size)

    def resize(self, owner: str, delta: int) -> None:
        """One of the owner's sessions grew (or shrank) by `delta` bytes."""
        if delta:
            self._count("bytes", owner, delta)

    def touch(self, owner: str, session_id: str) -> None:
        """The session is now its owner's most recently used."""
        self._order[owner].move_to_end(session_id)

    def held(self, measure: Measure, owner: str) -> int:
        return self._usage[measure].get(owner, 0)

    def _largest(self, measure: Measure) -> str | None:
        heap, usage = self._heaps[measure], self._usage[measure]
        while heap and usage.get(heap[0][1]) != -heap[0][0]:
            heapq.heappop(heap)
        return heap[0][1] if heap else None

    def victim(
        self, measure: Measure, budget: int, keep: str | None = None, keeper: str | None = None
    ) -> str | None:
        """The least recently used session (never `keep`, a session of `keeper`) of the owner
        holding the most of `measure` (`keeper` among equals); if that owner holds only
        `keep`, of the next largest owner over its share (`budget` / owners); None if none is."""
        owner = self._largest(measure)
        if owner is None:
            return None
        if keeper is not None and self.held(measure, keeper) == self.held(measure, owner):
            owner = keeper
        found = self._oldest(owner, keep)
        if found is not None:
            return found
        usage = self._usage[measure]
        share = budget / len(usage)
        others = [(v, o) for o, v in usage.items() if o != owner and v > share]
        return self._oldest(max(others)[1], keep) if others else None

    def _oldest(self, owner: str, keep: str | None) -> str | None:
        for session_id in self._order[owner]:
            if session_id != keep:
                return session_id
        return None
