"""Session stores: bytes and a version number per session id, nothing about models.

`MemoryStore` (one process: TTL, max sessions, LRU eviction) is the default; `RedisStore`
shares sessions between replicas with an atomic compare-and-set per chunk.
"""

from dataclasses import dataclass
from typing import Protocol

from sarnn_serve.errors import TooManyRequests

# What a process holds per session beside its record's bytes (the entry, its keys in the dicts
# and queues, its owner's order and usage), rounded up from the 330-880 bytes measured by
# tests/test_memory_bound.py (the most when every session has an owner of its own). Byte budgets
# count a session as len(record) + ENTRY_BYTES.
ENTRY_BYTES = 2048


@dataclass(frozen=True)
class Stored:
    """A session's bytes and the version they were written at (1 on creation)."""

    data: bytes
    version: int


@dataclass(frozen=True)
class Gone:
    """A session the store dropped by itself: `reason` is "expired" or "evicted"."""

    session_id: str
    tag: str
    reason: str


def session_quota_error(max_owned: int) -> TooManyRequests:
    """The error of a create past the owner's cap of open sessions."""
    return TooManyRequests(
        "session_quota",
        f"this key holds its maximum of {max_owned} open sessions; delete one or let one expire",
        1.0,
    )


class SessionStore(Protocol):
    """What the data plane needs from a store. Missing ids raise errors.SessionNotFound with
    the reason the store knows: unknown, expired, evicted or deleted.

    `load` and `delete` take the caller's `owner` when sessions are private to their owner (None:
    any session): a session or tombstone of another owner is then exactly an unknown id, and the
    call changes nothing (no TTL or LRU refresh)."""

    local: bool  # whether a load is an in-process lookup (else a round trip worth saving)

    async def create(
        self,
        session_id: str,
        tag: str,
        data: bytes,
        ttl_s: float,
        owner: str = "",
        max_owned: int | None = None,
    ) -> list[Gone]:
        """Add a session; returns the sessions evicted to make room. Raises TooManyRequests
        (session_quota_error) and evicts nothing if `owner` already holds `max_owned`."""
        ...

    async def load(self, session_id: str, owner: str | None = None) -> Stored:
        """Current bytes and version; counts as activity (refreshes TTL and LRU)."""
        ...

    async def compare_and_set(
        self, session_id: str, version: int, data: bytes, ttl_s: float
    ) -> bool:
        """Write `data` at version+1 only if the stored version is still `version`."""
        ...

    async def delete(self, session_id: str, owner: str | None = None) -> Stored:
        """Remove a session and return what it held."""
        ...

    async def sweep(self) -> list[Gone]:
        """Drop expired sessions; return every session dropped since the last sweep."""
        ...

    async def active(self) -> dict[str, int]:
        """Live sessions per tag."""
        ...

    async def close(self) -> None: ...
