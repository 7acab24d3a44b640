"""Session records in the store as a caller may reach them: who owns them, which worker holds
them, decoding them (an unreadable record is that session's error only), and with a shared
store the record this process wrote last for each session (so that the next chunk in order
costs one store round trip, the compare-and-set, instead of two)."""

import logging
import os

from sarnn_serve.auth import KeyRing, Principal
from sarnn_serve.errors import ModelUnavailable, OtherWorker, SessionNotFound, SessionUnreadable
from sarnn_serve.record_cache import RecordCache
from sarnn_serve.records import RecordUnreadable
from sarnn_serve.registry import LoadedModel, Registry
from sarnn_serve.sessions import SessionRecord, id_is_reused, tagged_worker, worker_tag
from sarnn_serve.settings import Settings
from sarnn_serve.store import SessionStore, Stored

log = logging.getLogger("sarnn.service")
WRITTEN_RECORDS = 4096  # at most this many records this process wrote are kept (RecordCache)


class SessionAccess:
    """Loads, deletes and decodes session records for a caller."""

    def __init__(
        self, settings: Settings, registry: Registry, store: SessionStore, keyring: KeyRing
    ) -> None:
        self.registry = registry
        self.store = store
        self.keyring = keyring
        # with a shared store, the records written last (a local store holds them already)
        self._written = (
            None if store.local else RecordCache(settings.max_store_bytes, WRITTEN_RECORDS)
        )
        # with several workers sharing no store, ids say which worker holds the session
        local = settings.workers > 1 and settings.store == "memory"
        self.worker = worker_tag(os.getpid()) if local else ""

    def owner(self, caller: Principal) -> str | None:
        """The owner whose sessions alone `caller` may reach (None: any session): with keys on,
        a non-admin key's own; another key's session is then exactly an unknown id."""
        return caller.id if self.keyring.enabled and not caller.admin else None

    def check_owner(self, record: SessionRecord, caller: Principal) -> None:
        """With keys on, another key's session does not exist for a non-admin caller."""
        if self.owner(caller) not in (None, record.owner):
            raise SessionNotFound(record.id)

    async def exists(self, session_id: str) -> bool:
        try:
            await self.store.load(session_id)
        except SessionNotFound:
            return False
        return True

    async def load(self, session_id: str, caller: Principal, delete: bool = False) -> Stored:
        """The stored session as `caller` may see it (removed from the store if `delete`);
        OtherWorker if it is unknown here and another worker's."""
        call = self.store.delete if delete else self.store.load
        try:
            return await call(session_id, self.owner(caller))
        except SessionNotFound:
            if self.worker and tagged_worker(session_id) not in (None, self.worker):
                raise OtherWorker(session_id) from None
            raise

    async def record(
        self, session_id: str, caller: Principal
    ) -> tuple[SessionRecord, int, LoadedModel]:
        """The session's record, its store version and its model (ModelUnavailable if this
        server does not serve that model at that version)."""
        stored = await self.load(session_id, caller)
        record = self.decode(session_id, stored.data, trusted=self.store.local)
        model = self.registry.lookup(record.model, record.model_version)
        if model is None:
            raise ModelUnavailable(
                f"session {session_id} belongs to model {record.model} version "
                f"{record.model_version}, which this server does not serve",
                session=session_id,
            )
        if record.state.size != model.card.state_size:
            raise self.unreadable(
                session_id,
                f"state: {record.state.size} values where model {record.model} keeps "
                f"{model.card.state_size}",
            )
        return record, stored.version, model

    def decode(self, session_id: str, data: bytes, trusted: bool = False) -> SessionRecord:
        """The record of a session's stored bytes; SessionUnreadable (this session's error
        only) if they are not a record this release reads, or another session's. `trusted`:
        bytes this process wrote (an in-process store's, or kept by `remember`)."""
        try:
            record = SessionRecord.decode(data, trusted)
        except RecordUnreadable as exc:
            raise self.unreadable(session_id, str(exc)) from None
        if record.id != session_id:
            raise self.unreadable(session_id, "the record is another session's")
        return record

    def unreadable(self, session_id: str, problem: str) -> SessionUnreadable:
        log.warning("session record unreadable", extra={"session": session_id, "error": problem})
        return SessionUnreadable(session_id, problem)

    def remember(self, session_id: str, version: int, data: bytes) -> None:
        """Keep the record just written (with a shared store, for ids that name one session)."""
        if self._written is not None and not id_is_reused(session_id):
            self._written.put(session_id, version, data)

    def forget(self, session_id: str) -> tuple[int, bytes] | None:
        """The kept record of a session (version, bytes), no longer kept."""
        return None if self._written is None else self._written.take(session_id)
