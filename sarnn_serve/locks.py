"""Per-key asyncio locks: one session's chunks are applied one at a time."""

import asyncio
from types import TracebackType


class KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, list] = {}  # key -> [lock, holders and waiters]

    def hold(self, key: str) -> "_Held":
        """`async with locks.hold(key):` runs its body while no other task holds `key`."""
        return _Held(self._locks, key)


class _Held:
    """The async context manager of KeyedLocks.hold (a class: cheaper than a generator)."""

    __slots__ = ("_entry", "_key", "_locks")

    def __init__(self, locks: dict[str, list], key: str) -> None:
        self._locks = locks
        self._key = key

    async def __aenter__(self) -> None:
        entry = self._locks.get(self._key)
        if entry is None:
            entry = self._locks[self._key] = [asyncio.Lock(), 0]
        entry[1] += 1
        self._entry = entry
        try:
            await entry[0].acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._entry[0].release()
        self._leave()

    def _leave(self) -> None:
        self._entry[1] -= 1
        if self._entry[1] == 0:
            del self._locks[self._key]
