"""The data plane: the one place that creates, advances and deletes sessions.

Every transport (REST, WebSocket) calls these methods; they validate against the model card,
run the engine through the micro-batcher, write the session back with a compare-and-set and
account the compute in one place (`Monitor.record_usage`).
"""

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson

from sarnn_serve.accounting import usage
from sarnn_serve.batcher import MicroBatcher
from sarnn_serve.errors import (
    ConcurrentUpdate,
    InvalidInput,
    ModelUnavailable,
    PayloadTooLarge,
    SeqConflict,
)
from sarnn_serve.locks import KeyedLocks
from sarnn_serve.metrics import Monitor
from sarnn_serve.registry import LoadedModel, Registry
from sarnn_serve.results import step_results, usage_dict
from sarnn_serve.sessions import SessionRecord, new_session_id
from sarnn_serve.settings import Settings
from sarnn_serve.store import Gone, SessionStore
from sarnn_serve.validation import parse_inputs

log = logging.getLogger("sarnn.service")
JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY
CAS_ATTEMPTS = 3
RECENT_SESSIONS = 100
WATCH_QUEUE = 256


class DataPlane:
    """Sessions, chunks and predictions over a registry of models and a session store."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: SessionStore,
        monitor: Monitor,
        executor: Executor,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.monitor = monitor
        self._locks = KeyedLocks()
        self._sweeper: asyncio.Task | None = None
        self.recent: OrderedDict[str, str] = OrderedDict()
        self.watchers: dict[str, set[asyncio.Queue]] = {}
        self.batchers = {
            name: MicroBatcher(
                model.engine,
                executor,
                max_rows=settings.batch_max_rows,
                max_steps=settings.batch_max_steps,
                wait_s=settings.batch_wait_ms / 1000,
                observe=monitor.prom.inference_seconds.labels(name).observe,
            )
            for name, model in registry.models.items()
        }

    async def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.start()
        await self.refresh_active()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for batcher in self.batchers.values():
            await batcher.stop()
        await self.store.close()

    # models ---------------------------------------------------------------------------

    def model(self, name: str | None) -> LoadedModel:
        """The named model, or the only one when no name is given."""
        if name is None:
            names = self.registry.names()
            if len(names) != 1:
                raise InvalidInput("model", f"required; available: {', '.join(names)}")
            name = names[0]
        return self.registry.get(name)

    def describe(self, model: LoadedModel) -> dict:
        card = model.card
        return {
            **card.model_dump(),
            "state_size": card.state_size,
            "cost_per_step": card.cost_summary().model_dump(),
        }

    def model_stats(self, name: str) -> dict:
        model = self.registry.get(name)
        return {
            "model": name,
            "hidden": model.card.hidden,
            "active_sessions": self.monitor.active.get(name, 0),
            **self.monitor.stats[name].snapshot(),
        }

    # sessions -------------------------------------------------------------------------

    async def create_session(
        self, model_name: str | None, threshold: float | None, idle_timeout_s: float | None
    ) -> dict:
        model = self.model(model_name)
        card = model.card
        record = SessionRecord(
            id=new_session_id(),
            model=card.name,
            model_version=card.version,
            threshold=threshold if threshold is not None else card.threshold,
            ttl_s=idle_timeout_s or self.settings.session_ttl_s,
            state=np.zeros(card.state_size, np.float32),
        )
        gone = await self.store.create(record.id, card.name, record.encode(), record.ttl_s)
        self._account_gone(gone)
        self.monitor.session_created(card.name)
        log.info(
            "session created",
            extra={"session": record.id, "model": card.name, "threshold": record.threshold},
        )
        return record.summary(card.cost)

    async def _record(self, session_id: str) -> tuple[SessionRecord, int, LoadedModel]:
        stored = await self.store.load(session_id)
        record = SessionRecord.decode(stored.data)
        model = self.registry.models.get(record.model)
        if model is None or model.card.version != record.model_version:
            raise ModelUnavailable(
                f"session {session_id} belongs to model {record.model} version "
                f"{record.model_version}, which this server does not serve",
                session=session_id,
            )
        return record, stored.version, model

    async def get_session(self, session_id: str) -> dict:
        record, _, model = await self._record(session_id)
        return record.summary(model.card.cost)

    async def session_model(self, session_id: str) -> LoadedModel:
        _, _, model = await self._record(session_id)
        return model

    async def delete_session(self, session_id: str) -> dict:
        async with self._locks.hold(session_id):
            stored = await self.store.delete(session_id)
        record = SessionRecord.decode(stored.data)
        self.monitor.session_ended(record.model, "deleted")
        self.recent.pop(session_id, None)
        log.info(
            "session deleted",
            extra={"session": session_id, "model": record.model, "steps": record.steps},
        )
        model = self.registry.models.get(record.model)
        summary = record.summary(model.card.cost) if model else {"id": session_id}
        return summary

    async def advance(
        self, session_id: str, seq: int | None, raw_inputs: Any, include_mask: bool = False
    ) -> bytes:
        """Apply one chunk (or replay the answer to a retried seq); returns the JSON answer."""
        async with self._locks.hold(session_id):
            record, version, model = await self._record(session_id)
            card = model.card
            x = parse_inputs(raw_inputs, card.n_features, self.settings.max_chunk_steps)
            digest = hashlib.blake2b(x.tobytes(), digest_size=16).digest()
            for attempt in range(CAS_ATTEMPTS):
                if attempt:
                    record, version, model = await self._record(session_id)
                want = record.next_seq if seq is None else seq
                if want == record.next_seq - 1 and record.last_response:
                    return self._replay(record, digest, want)
                if want != record.next_seq:
                    raise SeqConflict(want, record.next_seq)
                result = await self.batchers[card.name].run(x, record.state, record.threshold)
                steps, used = step_results(
                    card, result.logits, result.updates, record.steps, include_mask
                )
                record.state = result.state
                record.steps += used.steps
                record.updates += used.updates
                record.next_seq = want + 1
                record.last_seen = time.time()
                payload = orjson.dumps(
                    {
                        "type": "chunk",
                        "session_id": session_id,
                        "seq": want,
                        "model": card.name,
                        "steps": steps,
                        "chunk": usage_dict(used),
                        "session": record.summary(card.cost),
                        "replayed": False,
                    },
                    option=JSON_OPTS,
                )
                record.last_digest, record.last_response = digest, payload
                if await self.store.compare_and_set(
                    session_id, version, record.encode(), record.ttl_s
                ):
                    self.monitor.record_usage(card.name, used)
                    self._note_activity(session_id, card.name, want, result.updates, steps)
                    return payload
                log.warning(
                    "concurrent update; retrying",
                    extra={"session": session_id, "model": card.name, "seq": want},
                )
        raise ConcurrentUpdate(f"session {session_id} changed concurrently; retry", seq=seq)

    def _replay(self, record: SessionRecord, digest: bytes, seq: int) -> bytes:
        if digest != record.last_digest:
            raise SeqConflict(seq, record.next_seq)
        body = orjson.loads(record.last_response)
        body["replayed"] = True
        log.info("chunk replayed", extra={"session": record.id, "model": record.model, "seq": seq})
        return orjson.dumps(body)

    # stateless ------------------------------------------------------------------------

    async def predict(
        self,
        model_name: str,
        sequences: list[Any],
        threshold: float | None,
        include_steps: bool,
        include_mask: bool,
    ) -> dict:
        """Run whole sequences from a zero state, batched together; nothing is stored."""
        model = self.registry.get(model_name)
        card = model.card
        if not sequences:
            raise InvalidInput("inputs", "must hold at least one sequence")
        if len(sequences) > self.settings.max_predict_sequences:
            raise PayloadTooLarge(
                f"inputs: {len(sequences)} sequences exceed the limit of "
                f"{self.settings.max_predict_sequences}",
                field="inputs",
            )
        xs = [
            parse_inputs(seq, card.n_features, self.settings.max_chunk_steps, f"inputs[{i}]")
            for i, seq in enumerate(sequences)
        ]
        tau = threshold if threshold is not None else card.threshold
        zero = np.zeros(card.state_size, np.float32)
        batcher = self.batchers[card.name]
        results = await asyncio.gather(*(batcher.run(x, zero, tau) for x in xs))
        out, total_steps, total_updates = [], 0, 0
        for x, r in zip(xs, results, strict=True):
            steps, used = step_results(card, r.logits, r.updates, 0, include_mask)
            total_steps += used.steps
            total_updates += used.updates
            out.append(
                {
                    "length": len(x),
                    "final": steps[-1],
                    "steps": steps if include_steps else None,
                    "usage": usage_dict(used),
                }
            )
        total = usage(card.cost, total_steps, total_updates)
        self.monitor.record_usage(card.name, total)
        return {"model": card.name, "sequences": out, "usage": usage_dict(total)}

    # housekeeping ---------------------------------------------------------------------

    def _note_activity(
        self, session_id: str, model: str, seq: int, updates: np.ndarray, steps: list[dict]
    ) -> None:
        """Remember recently active sessions and feed dashboard watchers of this session."""
        self.recent[session_id] = model
        self.recent.move_to_end(session_id)
        while len(self.recent) > RECENT_SESSIONS:
            self.recent.popitem(last=False)
        queues = self.watchers.get(session_id)
        if not queues:
            return
        event = {
            "seq": seq,
            "steps": [
                {"index": s["index"], "label": s["label"], "updates": s["updates"]} for s in steps
            ],
            "masks": updates.astype(np.uint8),
        }
        for q in queues:
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

    @asynccontextmanager
    async def watch(self, session_id: str) -> AsyncIterator[asyncio.Queue]:
        """Subscribe to the chunks of one session as they are applied on this replica."""
        await self._record(session_id)
        queue: asyncio.Queue = asyncio.Queue(WATCH_QUEUE)
        self.watchers.setdefault(session_id, set()).add(queue)
        try:
            yield queue
        finally:
            self.watchers[session_id].discard(queue)
            if not self.watchers[session_id]:
                del self.watchers[session_id]

    def _account_gone(self, gone: list[Gone]) -> None:
        for g in gone:
            self.monitor.session_ended(g.tag, g.reason)
            self.recent.pop(g.session_id, None)
            log.info(f"session {g.reason}", extra={"session": g.session_id, "model": g.tag})

    async def refresh_active(self) -> None:
        """Set the active-sessions gauge from the store (the truth across replicas)."""
        active = await self.store.active()
        for name in self.registry.names():
            self.monitor.set_active(name, active.get(name, 0))

    async def sweep(self) -> None:
        self._account_gone(await self.store.sweep())
        await self.refresh_active()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("session sweep failed")
