"""In-process session store: idle TTL, count and byte budgets with eviction from the owner over
its share (`shares`), tombstones, a cap of open sessions per owner, and an expiry sweep whose
cost follows what expired."""

import asyncio
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

from sarnn_serve.errors import SessionNotFound
from sarnn_serve.store import ENTRY_BYTES, Gone, Stored, session_quota_error
from sarnn_serve.store.shares import Shares

SWEEP_BATCH = 200


@dataclass
class _Entry:
    tag: str
    owner: str
    data: bytes
    version: int
    ttl_s: float
    deadline: float


class MemoryStore:
    """Sessions in a dict, each owner's in order of last use; remembers why recent ids
    disappeared. Past `max_sessions` or `max_bytes` (each session counted as its record plus
    ENTRY_BYTES), the least recently used session of the owner holding the most of that budget
    is evicted (never the session being written).

    Sessions are also kept in one queue per idle timeout, in the order of their last use, so
    that the front of each queue is the next to expire: a sweep looks only at expired sessions
    and yields to the event loop every SWEEP_BATCH of them.
    """

    local = True

    def __init__(
        self,
        max_sessions: int,
        max_bytes: int | None = None,
        tombstones: int = 100_000,
        clock=time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: dict[str, _Entry] = {}
        self._by_ttl: dict[float, OrderedDict[str, None]] = {}
        self._tags: Counter[str] = Counter()
        self._shares = Shares()
        # id -> "<reason> <owner>" (a string: no container for the garbage collector to walk)
        self._gone: OrderedDict[str, str] = OrderedDict()
        self._tombstones = tombstones
        self._dropped: list[Gone] = []
        self._clock = clock

    # bookkeeping ------------------------------------------------------------------------

    def _add(self, session_id: str, entry: _Entry) -> None:
        self._entries[session_id] = entry
        self._by_ttl.setdefault(entry.ttl_s, OrderedDict())[session_id] = None
        self._tags[entry.tag] += 1
        self._shares.add(entry.owner, session_id, len(entry.data) + ENTRY_BYTES)
        self.bytes += len(entry.data) + ENTRY_BYTES

    def _remove(self, session_id: str, reason: str) -> Gone:
        entry = self._entries.pop(session_id)
        queue = self._by_ttl[entry.ttl_s]
        del queue[session_id]
        if not queue:
            del self._by_ttl[entry.ttl_s]
        self._tags[entry.tag] -= 1
        if self._tags[entry.tag] <= 0:
            del self._tags[entry.tag]
        self._shares.remove(entry.owner, session_id, len(entry.data) + ENTRY_BYTES)
        self.bytes -= len(entry.data) + ENTRY_BYTES
        self._gone[session_id] = f"{reason} {entry.owner}"
        while len(self._gone) > self._tombstones:
            self._gone.popitem(last=False)
        return Gone(session_id, entry.tag, reason)

    def _live(self, session_id: str, owner: str | None = None) -> _Entry:
        """The live entry of `session_id` (of `owner`, if given), else SessionNotFound."""
        entry = self._entries.get(session_id)
        if entry is None:
            reason, _, was = self._gone.get(session_id, "unknown").partition(" ")
            raise SessionNotFound(session_id, reason if owner in (None, was) else "unknown")
        if owner is not None and entry.owner != owner:
            raise SessionNotFound(session_id)
        if self._clock() >= entry.deadline:
            self._dropped.append(self._remove(session_id, "expired"))
            raise SessionNotFound(session_id, "expired")
        return entry

    def _touch(self, session_id: str, entry: _Entry) -> None:
        entry.deadline = self._clock() + entry.ttl_s
        self._shares.touch(entry.owner, session_id)
        self._by_ttl[entry.ttl_s].move_to_end(session_id)

    def _make_room(self, keep: str) -> list[Gone]:
        """Evict until both budgets hold: each time the least recently used session of the
        owner holding the most of the budget exceeded (never `keep`, the session written)."""
        dropped = []
        keeper = self._entries[keep].owner
        while True:
            if len(self._entries) > self.max_sessions:
                victim = self._shares.victim("sessions", self.max_sessions, keep, keeper)
            elif self.max_bytes is not None and self.bytes > self.max_bytes:
                victim = self._shares.victim("bytes", self.max_bytes, keep, keeper)
            else:
                break
            if victim is None:  # `keep` alone holds more than every other owner's share
                break
            expired = self._clock() >= self._entries[victim].deadline
            dropped.append(self._remove(victim, "expired" if expired else "evicted"))
        return dropped

    # the SessionStore protocol ----------------------------------------------------------

    async def create(
        self,
        session_id: str,
        tag: str,
        data: bytes,
        ttl_s: float,
        owner: str = "",
        max_owned: int | None = None,
    ) -> list[Gone]:
        if max_owned is not None and self._shares.held("sessions", owner) >= max_owned:
            raise session_quota_error(max_owned)
        self._add(session_id, _Entry(tag, owner, data, 1, ttl_s, self._clock() + ttl_s))
        self._gone.pop(session_id, None)
        return self._make_room(keep=session_id)

    async def load(self, session_id: str, owner: str | None = None) -> Stored:
        entry = self._live(session_id, owner)
        self._touch(session_id, entry)
        return Stored(entry.data, entry.version)

    async def compare_and_set(
        self, session_id: str, version: int, data: bytes, ttl_s: float
    ) -> bool:
        entry = self._live(session_id)
        if entry.version != version:
            return False
        if ttl_s != entry.ttl_s:
            self._remove(session_id, "replaced")
            entry.ttl_s = ttl_s
            self._add(session_id, entry)
            self._gone.pop(session_id, None)
        self.bytes += len(data) - len(entry.data)
        self._shares.resize(entry.owner, len(data) - len(entry.data))
        entry.data, entry.version = data, version + 1
        self._touch(session_id, entry)
        self._dropped += self._make_room(keep=session_id)
        return True

    async def delete(self, session_id: str, owner: str | None = None) -> Stored:
        entry = self._live(session_id, owner)
        self._remove(session_id, "deleted")
        return Stored(entry.data, entry.version)

    async def sweep(self) -> list[Gone]:
        now = self._clock()
        done = 0
        for ttl in list(self._by_ttl):
            while (queue := self._by_ttl.get(ttl)) is not None:
                session_id = next(iter(queue))
                entry = self._entries[session_id]
                if now < entry.deadline:
                    break
                self._dropped.append(self._remove(session_id, "expired"))
                done += 1
                if done % SWEEP_BATCH == 0:
                    await asyncio.sleep(0)
        dropped, self._dropped = self._dropped, []
        return dropped

    async def active(self) -> dict[str, int]:
        return dict(self._tags)

    async def close(self) -> None:
        self._entries.clear()
        self._by_ttl.clear()
        self._shares = Shares()
