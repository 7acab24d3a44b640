"""What this replica saw sessions do: the sessions active here most recently (GET /v1/sessions)
and the dashboard watchers of each session, fed one event per chunk applied here."""

import asyncio
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from sarnn_serve.results import StepOutputs

RECENT_SESSIONS = 100
WATCH_QUEUE = 256  # events a watcher may fall behind by; the oldest is dropped past it


class Activity:
    """The recently active sessions (id -> model, owner; newest last) and their watchers."""

    def __init__(self, keep: int = RECENT_SESSIONS, queue_size: int = WATCH_QUEUE) -> None:
        self.keep = keep
        self.queue_size = queue_size
        self.recent: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.watchers: dict[str, set[asyncio.Queue]] = {}

    def applied(
        self,
        session_id: str,
        model: str,
        owner: str,
        seq: int,
        labels: list[str],
        outputs: StepOutputs,
        updates: np.ndarray,
    ) -> None:
        """A chunk was applied: the session is the most recent; its watchers get an event
        (seq, per step its index, label and update count, and the update masks [T, H])."""
        self.recent[session_id] = (model, owner)
        self.recent.move_to_end(session_id)
        while len(self.recent) > self.keep:
            self.recent.popitem(last=False)
        queues = self.watchers.get(session_id)
        if not queues:
            return
        classes = outputs.logits.argmax(axis=-1)
        event = {
            "seq": seq,
            "steps": [
                {"index": outputs.first_index + t, "label": labels[c], "updates": int(n)}
                for t, (c, n) in enumerate(zip(classes, outputs.counts, strict=True))
            ],
            "masks": updates.astype(np.uint8),
        }
        for q in queues:
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

    def ended(self, session_id: str) -> None:
        """The session was deleted, expired or evicted."""
        self.recent.pop(session_id, None)

    def listed(self, owner: str | None) -> list[dict]:
        """Recent sessions, newest first: `owner`'s only, or all of them (None)."""
        return [
            {"id": sid, "model": model}
            for sid, (model, by) in reversed(self.recent.items())
            if owner is None or by == owner
        ]

    @contextmanager
    def subscribe(self, session_id: str) -> Iterator[asyncio.Queue]:
        """A queue of the session's events for the body of the `with`."""
        queue: asyncio.Queue = asyncio.Queue(self.queue_size)
        self.watchers.setdefault(session_id, set()).add(queue)
        try:
            yield queue
        finally:
            self.watchers[session_id].discard(queue)
            if not self.watchers[session_id]:
                del self.watchers[session_id]
