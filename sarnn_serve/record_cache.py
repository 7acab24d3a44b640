"""The records this process wrote last to a shared store, so that a session's next chunk in
order costs one round trip (the compare-and-set) instead of two.

Records are kept as the bytes written (masks packed), each counted as its length plus
ENTRY_BYTES, within a byte budget (SARNN_MAX_STORE_BYTES) and a count; the least recently
written go first.
"""

from collections import OrderedDict

from sarnn_serve.store import ENTRY_BYTES


class RecordCache:
    """Session id -> (store version, record bytes) of the records this process wrote."""

    def __init__(self, max_bytes: int, max_records: int) -> None:
        self.max_bytes, self.max_records = max_bytes, max_records
        self.bytes = 0
        self._records: OrderedDict[str, tuple[int, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def put(self, session_id: str, version: int, data: bytes) -> None:
        """Keep the record written at `version`, dropping the oldest past either bound."""
        self.take(session_id)
        self._records[session_id] = (version, data)
        self.bytes += len(data) + ENTRY_BYTES
        while self._records and (
            self.bytes > self.max_bytes or len(self._records) > self.max_records
        ):
            _, (_, old) = self._records.popitem(last=False)
            self.bytes -= len(old) + ENTRY_BYTES

    def take(self, session_id: str) -> tuple[int, bytes] | None:
        """The kept (version, bytes) of a session, removed from the cache (None if none)."""
        kept = self._records.pop(session_id, None)
        if kept is not None:
            self.bytes -= len(kept[1]) + ENTRY_BYTES
        return kept
