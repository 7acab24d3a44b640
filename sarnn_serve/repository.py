"""The model repository: list, load and unload model versions while the server runs.

Loading reads one folder of the model dir (SARNN_MODEL_DIR) and verifies it exactly as start-up
does; a new version of a served model becomes the current one, which new sessions and
predictions get, and the version it replaces drains: it keeps serving the sessions started on it
until none has used it for SARNN_MODEL_DRAIN_S, then it is released. Unloading drains the same
way. With SARNN_MODEL_POLL_S the model dir is also scanned: folders added or changed are loaded,
models whose folder is gone are unloaded. Operations run one at a time.
"""

import asyncio
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from sarnn_serve.auth import Principal
from sarnn_serve.background_calibration import BackgroundCalibration
from sarnn_serve.errors import ModelLoadError, ModelLoadFailed, ModelNotFound
from sarnn_serve.model_routing import model_router
from sarnn_serve.registry import find_model, folder_cards, load_model
from sarnn_serve.service import DataPlane
from sarnn_serve.settings import Settings

log = logging.getLogger("sarnn.repository")
READY, UNAVAILABLE = "READY", "UNAVAILABLE"
# a model folder as a scan saw it: its card's version, its time, its files' names, sizes, times
FolderState = tuple[str, int, tuple[tuple[str, int, int], ...]]


@dataclass(frozen=True)
class IndexEntry:
    """One model version in the repository index (the Open Inference Protocol's fields)."""

    name: str
    version: str
    state: str
    reason: str


class ModelRepository:
    """Index, load and unload over the data plane's registry, and the background scan and
    drain."""

    def __init__(
        self, settings: Settings, plane: DataPlane, calibrating: BackgroundCalibration
    ) -> None:
        self.settings = settings
        self.plane = plane
        self.calibrating = calibrating
        self.unloaded: dict[str, str] = {}  # name -> version unloaded on request
        self.failed: dict[str, str] = {}  # name -> why its last load failed
        self._scanned: dict[str, FolderState] = {}  # name -> its folder when a scan's load failed
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        """Release drained versions every sweep interval; scan the model dir if asked to."""
        loop = asyncio.get_running_loop()
        self._tasks.append(
            loop.create_task(self._every(self.settings.sweep_interval_s, self.drain))
        )
        if self.settings.model_poll_s:
            self._tasks.append(loop.create_task(self._every(self.settings.model_poll_s, self.scan)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model version served or draining, and every folder's model not served (with
        why), by name; only the served ones with `ready_only`."""
        registry = self.plane.registry
        entries = [IndexEntry(m.name, m.card.version, READY, "") for m in registry.models.values()]
        drain = f"draining: serves its sessions until unused for {self.settings.model_drain_s:g} s"
        entries += [
            IndexEntry(name, version, UNAVAILABLE, drain) for name, version in registry.draining
        ]
        if not ready_only:
            entries += self._not_served()
        entries.sort(key=lambda e: (e.name, e.state != READY, e.version))
        return [asdict(e) for e in entries]

    def _not_served(self) -> list[IndexEntry]:
        served = set(self.plane.registry.models)
        entries = []
        try:
            cards = folder_cards(self.settings.model_dir)
        except ModelLoadError as exc:  # the dir went away: nothing more to list
            return [IndexEntry("", "", UNAVAILABLE, str(exc))]
        for directory, card in cards:
            if isinstance(card, ModelLoadError):
                entries.append(IndexEntry(directory.name, "", UNAVAILABLE, str(card)))
                continue
            if card.name in served or (card.name, card.version) in self.plane.registry.draining:
                continue
            why = self.failed.get(card.name) or (
                "unloaded" if card.name in self.unloaded else "not loaded"
            )
            entries.append(IndexEntry(card.name, card.version, UNAVAILABLE, why))
        return entries

    async def load(self, caller: Principal, name: str) -> None:
        """Load (or reload) model `name` from its folder in the model dir: ModelNotFound if no
        folder holds it, ModelLoadFailed (nothing changed) if it does not verify."""
        self.plane.check_admin(caller, "loading a model")
        async with self._lock:
            await self._load(name, caller.id)

    async def unload(self, caller: Principal, name: str) -> None:
        """Stop serving model `name` to new work; its sessions drain (ModelNotFound if it is
        not served)."""
        self.plane.check_admin(caller, "unloading a model")
        async with self._lock:
            model = self.plane.registry.retire(name)
            self.unloaded[name] = model.card.version
            log.info(
                "model unloaded",
                extra={"model": name, "version": model.card.version, "by": caller.id},
            )

    async def _load(self, name: str, by: str) -> None:
        settings = self.settings
        try:
            directory, card = await asyncio.to_thread(find_model, settings.model_dir, name)
        except ModelLoadError as exc:
            raise ModelLoadFailed(str(exc), model=name) from None
        current = self.plane.registry.models.get(name)
        if current is not None and current.card.version == card.version:
            log.info("model already loaded", extra={"model": name, "version": card.version})
            return
        try:
            model = await asyncio.to_thread(
                load_model,
                directory,
                settings.ort_intra_op_threads,
                settings.ort_inter_op_threads,
                settings.native_kernel,
            )
            if model.name != name:  # the folder changed between the scan and the load
                raise ModelLoadError(f"{directory}: its card now names model {model.name!r}")
            router, job = model_router(settings, model)
        except ModelLoadError as exc:
            self.failed[name] = str(exc)
            log.warning("model load failed", extra={"model": name, "error": str(exc), "by": by})
            raise ModelLoadFailed(str(exc), model=name) from None
        replaced = self.plane.add_model(model, router)
        if job is not None:
            self.calibrating.add(job)
        self.failed.pop(name, None)
        self.unloaded.pop(name, None)
        log.info(
            "model loaded",
            extra={
                "model": name,
                "version": card.version,
                "directory": str(directory),
                "replaced": replaced.card.version if replaced else None,
                "by": by,
            },
        )

    async def scan(self) -> None:
        """Load the folders whose model is not served at their version (unless unloaded at
        that version on request); unload served models whose folder is gone."""
        async with self._lock:
            cards, unreadable = await asyncio.to_thread(_folder_cards, self.settings.model_dir)
            registry = self.plane.registry
            for name, (version, folder) in cards.items():
                current = registry.models.get(name)
                if (current and current.card.version == version) or self.unloaded.get(
                    name
                ) == version:
                    continue
                if self._scanned.get(name) == folder:  # failed as it is: wait for a change
                    continue
                try:
                    await self._load(name, "model dir scan")
                except (ModelLoadFailed, ModelNotFound) as exc:
                    self._scanned[name] = folder
                    self.failed[name] = f"{version}: {exc.message}"
            for name in set(registry.models) - set(cards):
                if registry.models[name].directory in unreadable:
                    continue  # its folder is there, its card half written: keep what was loaded
                model = registry.retire(name)
                log.info(
                    "model unloaded",
                    extra={"model": name, "version": model.card.version, "by": "model dir scan"},
                )

    async def drain(self) -> None:
        """Release the draining versions unused for SARNN_MODEL_DRAIN_S."""
        for model in await self.plane.release_drained(self.settings.model_drain_s):
            log.info(
                "model version released", extra={"model": model.name, "version": model.card.version}
            )

    async def _every(self, interval_s: float, job) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except Exception:
                log.exception("model repository task failed", extra={"task": job.__name__})


def _folder_state(directory: Path, version: str) -> FolderState:
    """A model folder as it is now: a folder still being copied in changes."""
    stats = [(p.name, p.stat()) for p in directory.iterdir()]
    files = tuple(sorted((name, s.st_size, s.st_mtime_ns) for name, s in stats))
    return version, directory.stat().st_mtime_ns, files


def _folder_cards(model_dir: Path) -> tuple[dict[str, tuple[str, FolderState]], set[Path]]:
    """Model name -> version and folder state of every readable card in the model dir, and the
    folders whose card cannot be read."""
    cards, unreadable = {}, set()
    for directory, card in folder_cards(model_dir):
        if isinstance(card, ModelLoadError):
            unreadable.add(directory)
            continue
        cards.setdefault(card.name, (card.version, _folder_state(directory, card.version)))
    return cards, unreadable
