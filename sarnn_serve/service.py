"""The data plane: the one place that creates, advances and deletes sessions.

Every transport (REST, WebSocket, gRPC) calls these methods with the same typed requests
(`schemas`) and gets typed results (`results`) back, which it renders itself (`api.codec`);
the data plane checks who is calling, validates against the model card, runs the engine
through the micro-batcher, keeps the seq order and retries of each session, writes the session
back with a compare-and-set and accounts the compute in one place (`Monitor.record_usage`).
Models, callers, quotas and stateless prediction are `serving.Serving`, which it extends.
"""

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager

import numpy as np

from sarnn_serve.accounting import Usage
from sarnn_serve.auth import KeyRing, Principal
from sarnn_serve.card import ModelCard
from sarnn_serve.errors import (
    ConcurrentUpdate,
    Forbidden,
    RetryMismatch,
    SeqConflict,
    ServiceError,
    SessionRolledBack,
    SessionUnreadable,
)
from sarnn_serve.locks import KeyedLocks
from sarnn_serve.metrics import Monitor
from sarnn_serve.quotas import CreationRate
from sarnn_serve.records import PackedOutputs
from sarnn_serve.registry import Registry
from sarnn_serve.results import ChunkResult, StepOutputs
from sarnn_serve.routing import Router
from sarnn_serve.schemas import Chunk, SessionCreate
from sarnn_serve.serving import Serving
from sarnn_serve.session_access import SessionAccess
from sarnn_serve.sessions import SessionRecord, new_session_id, request_digest
from sarnn_serve.settings import Settings
from sarnn_serve.store import SessionStore
from sarnn_serve.thresholds import prior_rate
from sarnn_serve.validation import out_of_range, parse_inputs

log = logging.getLogger("sarnn.service")
CAS_ATTEMPTS = 3


class DataPlane(Serving):
    """The session state machine over the models, callers and store of `Serving`."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: SessionStore,
        monitor: Monitor,
        executor: Executor,
        keyring: KeyRing | None = None,
        routers: dict[str, Router] | None = None,
    ) -> None:
        super().__init__(settings, registry, store, monitor, executor, keyring, routers)
        self._locks = KeyedLocks()
        self.access = SessionAccess(settings, registry, store, self.keyring)
        self.worker = self.access.worker
        self._creation_rate = CreationRate(
            settings.session_create_rate, settings.session_create_burst
        )

    # sessions -------------------------------------------------------------------------

    async def create_session(
        self, caller: Principal, request: SessionCreate, session_id: str | None = None
    ) -> dict:
        """Open a session under a new random id, or under `session_id` (an Open Inference
        Protocol sequence's) when no live session has that id (ConcurrentUpdate otherwise)."""
        model = self.model(request.model)
        card = model.card
        threshold = self.thresholds.first(card, request)
        self._creation_rate.take(caller.id)
        record = SessionRecord(
            id=session_id or new_session_id(self.worker),
            model=card.name,
            model_version=card.version,
            threshold=threshold,
            ttl_s=request.idle_timeout_s or self.settings.session_ttl_s,
            state=np.zeros(card.state_size, np.float32),
            owner=caller.id,
            recent_rate=prior_rate(card),
            target_rate=request.target_update_rate,
            degrade=request.degrade,
        )
        try:
            async with self._locks.hold(record.id):
                if session_id is not None and await self.access.exists(session_id):
                    raise ConcurrentUpdate(f"session {session_id} was opened concurrently; retry")
                gone = await self.store.create(
                    record.id,
                    card.name,
                    record.encode(self.settings.record_format),
                    record.ttl_s,
                    owner=caller.id,
                    max_owned=self.settings.max_sessions_per_key,
                )
        except ServiceError:
            self._creation_rate.refund(caller.id)
            raise
        self.sweeper.gone(gone)
        self.monitor.session_created(card.name)
        log.info(
            "session created",
            extra={
                "session": record.id,
                "model": card.name,
                "owner": caller.id,
                "threshold": record.threshold,
                "target_update_rate": record.target_rate,
                "degrade": record.degrade,
            },
        )
        return record.summary(card.cost)

    async def get_session(self, caller: Principal, session_id: str) -> dict:
        record, _, model = await self.access.record(session_id, caller)
        return record.summary(model.card.cost)

    async def sequence_seq(
        self, caller: Principal, session_id: str, request_id: str
    ) -> tuple[int, bool]:
        """The seq of a request in an Open Inference Protocol sequence: (next_seq, False), or
        (next_seq - 1, True) when `request_id` is the last applied chunk's (a retry)."""
        record, _, _ = await self.access.record(session_id, caller)
        if record.repeats(request_id):
            return record.next_seq - 1, True
        return record.next_seq, False

    async def list_sessions(self, caller: Principal) -> list[dict]:
        """Sessions recently active on this replica that the caller may see, newest first."""
        if not self.keyring.enabled and not self.settings.list_sessions:
            raise Forbidden(
                "listing sessions is off: it would hand out every session id; turn on API keys "
                "and use an admin key, or set SARNN_LIST_SESSIONS=true on a private network"
            )
        see_all = caller.admin or not self.keyring.enabled
        return self.activity.listed(None if see_all else caller.id)

    async def delete_session(self, caller: Principal, session_id: str) -> dict:
        async with self._locks.hold(session_id):
            self.access.forget(session_id)
            stored = await self.access.load(session_id, caller, delete=True)
        self.activity.ended(session_id)
        try:
            record = self.access.decode(session_id, stored.data)
        except SessionUnreadable as exc:
            log.info("session deleted", extra={"session": session_id})
            return {"id": session_id, "deleted": True, "note": exc.message}
        self.monitor.session_ended(record.model, "deleted")
        log.info(
            "session deleted",
            extra={"session": session_id, "model": record.model, "steps": record.steps},
        )
        model = self.registry.lookup(record.model, record.model_version)
        if model is None:
            note = f"its model {record.model} is not served here, so no summary"
            return {"id": session_id, "deleted": True, "note": note}
        return record.summary(model.card.cost)

    async def advance(
        self,
        caller: Principal,
        session_id: str,
        chunk: Chunk,
        request_id: str = "",
        arrived: float | None = None,
    ) -> ChunkResult:
        """Apply one chunk, or answer a retry of the last seq again without applying it;
        `request_id` (of an Open Inference Protocol request) is kept to recognise its retry;
        `arrived` (the event loop's clock) is when the chunk reached the server, if it waited
        before this call (a socket's read-ahead): its queueing delay counts from then.

        With a shared store, the record this process wrote last for the session is kept
        (`_written`), so that the next chunk in order costs one store round trip (the
        compare-and-set) instead of two; a stale copy fails the compare-and-set and the record
        is loaded again."""
        async with self._locks.hold(session_id):
            known = self.access.forget(session_id)
            record = (
                None if known is None else self.access.decode(session_id, known[1], trusted=True)
            )
            model = None
            if record is not None and record.next_seq == chunk.seq:
                version = known[0]
                self.access.check_owner(record, caller)
                model = self.registry.lookup(record.model, record.model_version)
            if model is None:
                record, version, model = await self.access.record(session_id, caller)
            card = model.card
            x = parse_inputs(chunk.inputs, card.n_features, self.settings.max_chunk_steps)
            digest = hashlib.blake2b(
                x.tobytes() + bytes([chunk.include_mask]), digest_size=16
            ).digest()
            for attempt in range(CAS_ATTEMPTS):
                if attempt:
                    record, version, model = await self.access.record(session_id, caller)
                seq = chunk.seq
                if seq == record.next_seq - 1 and record.last_outputs is not None:
                    return self._replay(record, card, digest, seq, chunk.answer)
                if seq > record.next_seq:
                    log.warning(
                        "chunk ahead of the session: the store lost chunks, or seqs skipped",
                        extra={"session": session_id, "seq": seq, "next_seq": record.next_seq},
                    )
                    raise SessionRolledBack(seq, record.next_seq)
                if seq != record.next_seq:
                    raise SeqConflict(seq, record.next_seq)
                own, threshold = record.threshold, self.thresholds.now(record)
                result = await self.batcher(card).run(
                    x, record.state, threshold, record.recent_rate, arrived
                )
                if not result.finite:
                    raise out_of_range()
                outputs = StepOutputs.from_graph(
                    record.steps, result.logits, result.updates, chunk.include_mask, result.counts
                )
                used = outputs.usage(card)
                record.state = result.state
                record.steps += used.steps
                record.updates += used.updates
                record.next_seq = seq + 1
                record.note_rate(used.steps, used.updates, card.hidden)
                self.thresholds.steer(record, card, threshold, used)
                record.last_seen = time.time()
                record.last_digest, record.last_outputs = digest, PackedOutputs.of(outputs)
                record.last_request = request_digest(request_id) if request_id else b""
                data = record.encode(self.settings.record_format)
                if await self.store.compare_and_set(session_id, version, data, record.ttl_s):
                    self.access.remember(session_id, version + 1, data)
                    self.monitor.record_usage(card.name, used)
                    self.monitor.record_threshold(
                        card.name, session_id, threshold, degraded=threshold != own
                    )
                    self.activity.applied(
                        session_id,
                        record.model,
                        record.owner,
                        seq,
                        card.class_labels,
                        outputs,
                        result.updates,
                    )
                    return self._result(record, card, seq, outputs, used, False, chunk.answer)
                log.warning(
                    "concurrent update; retrying",
                    extra={"session": session_id, "model": card.name, "seq": seq},
                )
        raise ConcurrentUpdate(f"session {session_id} changed concurrently; retry", seq=chunk.seq)

    def _result(
        self,
        record: SessionRecord,
        card: ModelCard,
        seq: int,
        outputs: StepOutputs,
        used: Usage,
        replayed: bool,
        answer: str | None,
    ) -> ChunkResult:
        """The typed answer; the full session summary (and the accuracy expected at the
        chunk's threshold) only for answers that show it."""
        threshold = record.threshold if record.last_threshold is None else record.last_threshold
        lean = answer == "columns"

        return ChunkResult(
            record.id,
            seq,
            card.name,
            outputs,
            used,
            record.steps,
            record.updates,
            replayed,
            card.class_labels,
            card.hidden,
            None if lean else record.summary(card.cost),
            threshold,
            None if lean else self.thresholds.accuracy_at(card, threshold),
        )

    def _replay(
        self, record: SessionRecord, card: ModelCard, digest: bytes, seq: int, answer: str | None
    ) -> ChunkResult:
        if digest != record.last_digest:
            raise RetryMismatch(seq, record.next_seq)
        log.info("chunk replayed", extra={"session": record.id, "model": record.model, "seq": seq})
        outputs = record.last_outputs.unpack()
        return self._result(record, card, seq, outputs, outputs.usage(card), True, answer)

    # housekeeping ---------------------------------------------------------------------

    @asynccontextmanager
    async def watch(self, caller: Principal, session_id: str) -> AsyncIterator[asyncio.Queue]:
        """Subscribe to the chunks of one session as they are applied on this replica."""
        await self.access.record(session_id, caller)
        with self.activity.subscribe(session_id) as queue:
            yield queue
