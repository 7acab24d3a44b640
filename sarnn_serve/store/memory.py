"""In-process session store: idle TTL, a maximum count with LRU eviction, tombstones."""

import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

from sarnn_serve.errors import SessionNotFound
from sarnn_serve.store import Gone, Stored


@dataclass
class _Entry:
    tag: str
    data: bytes
    version: int
    ttl_s: float
    deadline: float


class MemoryStore:
    """Sessions in a dict ordered by last use; remembers why recent ids disappeared."""

    def __init__(self, max_sessions: int, tombstones: int = 100_000, clock=time.monotonic) -> None:
        self.max_sessions = max_sessions
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._gone: OrderedDict[str, str] = OrderedDict()
        self._tombstones = tombstones
        self._dropped: list[Gone] = []
        self._clock = clock

    def _bury(self, session_id: str, entry: _Entry, reason: str) -> Gone:
        self._gone[session_id] = reason
        while len(self._gone) > self._tombstones:
            self._gone.popitem(last=False)
        return Gone(session_id, entry.tag, reason)

    def _live(self, session_id: str) -> _Entry:
        entry = self._entries.get(session_id)
        if entry is None:
            raise SessionNotFound(session_id, self._gone.get(session_id, "unknown"))
        if self._clock() >= entry.deadline:
            del self._entries[session_id]
            self._dropped.append(self._bury(session_id, entry, "expired"))
            raise SessionNotFound(session_id, "expired")
        return entry

    def _touch(self, session_id: str, entry: _Entry) -> None:
        entry.deadline = self._clock() + entry.ttl_s
        self._entries.move_to_end(session_id)

    async def create(self, session_id: str, tag: str, data: bytes, ttl_s: float) -> list[Gone]:
        evicted = []
        while len(self._entries) >= self.max_sessions:
            old_id, old = self._entries.popitem(last=False)
            reason = "expired" if self._clock() >= old.deadline else "evicted"
            evicted.append(self._bury(old_id, old, reason))
        self._entries[session_id] = _Entry(tag, data, 1, ttl_s, self._clock() + ttl_s)
        self._gone.pop(session_id, None)
        return evicted

    async def load(self, session_id: str) -> Stored:
        entry = self._live(session_id)
        self._touch(session_id, entry)
        return Stored(entry.data, entry.version)

    async def compare_and_set(
        self, session_id: str, version: int, data: bytes, ttl_s: float
    ) -> bool:
        entry = self._live(session_id)
        if entry.version != version:
            return False
        entry.data, entry.version, entry.ttl_s = data, version + 1, ttl_s
        self._touch(session_id, entry)
        return True

    async def delete(self, session_id: str) -> Stored:
        entry = self._live(session_id)
        del self._entries[session_id]
        self._bury(session_id, entry, "deleted")
        return Stored(entry.data, entry.version)

    async def sweep(self) -> list[Gone]:
        now = self._clock()
        for session_id in [k for k, e in self._entries.items() if now >= e.deadline]:
            entry = self._entries.pop(session_id)
            self._dropped.append(self._bury(session_id, entry, "expired"))
        dropped, self._dropped = self._dropped, []
        return dropped

    async def active(self) -> dict[str, int]:
        return dict(Counter(e.tag for e in self._entries.values()))

    async def close(self) -> None:
        self._entries.clear()
