"""Sessions that ended in the store (expired, evicted) accounted for, and the active-sessions
gauge kept to the store's count (the truth across replicas), every SARNN_SWEEP_INTERVAL_S."""

import asyncio
import logging

from sarnn_serve.errors import ServiceError
from sarnn_serve.metrics import Monitor
from sarnn_serve.registry import Registry
from sarnn_serve.store import Gone, SessionStore
from sarnn_serve.watchers import Activity

log = logging.getLogger("sarnn.service")


class Sweeper:
    """Sweeps the store and counts the sessions it ended."""

    def __init__(
        self, store: SessionStore, registry: Registry, monitor: Monitor, activity: Activity
    ) -> None:
        self.store = store
        self.registry = registry
        self.monitor = monitor
        self.activity = activity
        self._task: asyncio.Task | None = None

    def gone(self, gone: list[Gone]) -> None:
        """Count sessions the store ended (expired, evicted) and forget them here."""
        for g in gone:
            self.monitor.session_ended(g.tag, g.reason)
            self.activity.ended(g.session_id)
            log.info(f"session {g.reason}", extra={"session": g.session_id, "model": g.tag})

    async def refresh_active(self) -> None:
        """Set the active-sessions gauge from the store (the truth across replicas)."""
        active = await self.store.active()
        for name in self.registry.names():
            self.monitor.set_active(name, active.get(name, 0))

    async def sweep(self) -> None:
        self.gone(await self.store.sweep())
        await self.refresh_active()

    def start(self, interval_s: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self._forever(interval_s))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep()
            except ServiceError as exc:  # the store failed: the next sweep tries again
                log.warning("session sweep failed", extra={"error": exc.message})
            except Exception:
                log.exception("session sweep failed")
