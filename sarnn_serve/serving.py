"""What every request to the data plane needs besides sessions: the served models and their
micro-batchers, the callers (API keys, connection slots) and the counters of what they saw,
stateless prediction, and the start and stop of the batchers and the store's sweep."""

import logging
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager

from sarnn_serve import model_info
from sarnn_serve.auth import KeyRing, Principal
from sarnn_serve.batcher import MicroBatcher
from sarnn_serve.card import ModelCard
from sarnn_serve.engines import make_batcher
from sarnn_serve.errors import (
    Forbidden,
    InvalidInput,
    ModelNotFound,
    ModelUnavailable,
    ServiceError,
)
from sarnn_serve.metrics import Monitor
from sarnn_serve.predict import run_sequences
from sarnn_serve.quotas import ConnectionLimit
from sarnn_serve.registry import LoadedModel, ModelKey, Registry
from sarnn_serve.results import PredictResult
from sarnn_serve.routing import Router
from sarnn_serve.schemas import PredictRequest
from sarnn_serve.settings import Settings
from sarnn_serve.stats import model_stats
from sarnn_serve.store import SessionStore
from sarnn_serve.sweeper import Sweeper
from sarnn_serve.thresholds import Thresholds
from sarnn_serve.watchers import Activity

log = logging.getLogger("sarnn.service")


class Serving:
    """Models, callers and quotas over a registry of models and a session store; the session
    state machine (`service.DataPlane`) extends it."""

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
        """`routers`: the router of each model at start, by name (default: auto routing)."""
        self.settings = settings
        self.executor = executor
        self.registry = registry
        self.store = store
        self.monitor = monitor
        self.keyring = keyring or KeyRing({})
        self._connections = ConnectionLimit(
            settings.max_ws_connections, settings.max_ws_connections_per_key
        )
        self.activity = Activity()
        self.sweeper = Sweeper(store, registry, monitor, self.activity)
        self.thresholds = Thresholds(settings, registry)
        self.degraders = self.thresholds.degraders
        self.batchers: dict[ModelKey, MicroBatcher] = {}
        for model in registry.models.values():
            self._add_batcher(model, (routers or {}).get(model.name))

    async def start(self) -> None:
        """Start the batchers and the expiry sweep. A session store that does not answer yet
        (unreachable, wrong password) is logged once; readiness waits for it."""
        for batcher in self.batchers.values():
            batcher.start()
        try:
            await self.refresh_active()
        except ServiceError as exc:
            log.warning(
                "session store not answering; not ready until it does",
                extra={"error": exc.message},
            )
        self.sweeper.start(self.settings.sweep_interval_s)

    async def stop(self) -> None:
        await self.sweeper.stop()
        for batcher in self.batchers.values():
            await batcher.stop()
        await self.store.close()

    # models ---------------------------------------------------------------------------

    def _add_batcher(self, model: LoadedModel, router: Router | None) -> MicroBatcher:
        degrader = self.thresholds.add(model.card)
        self.monitor.add_model(model.name, model.card.hidden)
        batcher = make_batcher(self.settings, model, self.executor, self.monitor, router, degrader)
        self.batchers[model.key] = batcher
        return batcher

    def add_model(self, model: LoadedModel, router: Router) -> LoadedModel | None:
        """Serve a model version loaded after start as its model's current version, from the
        running event loop; the version it replaces, if any, drains (returned)."""
        self._add_batcher(model, router).start()
        return self.registry.install(model)

    async def release_drained(self, idle_s: float) -> list[LoadedModel]:
        """Stop serving the draining versions no session has used for `idle_s` seconds."""
        released = self.registry.release(idle_s)
        for model in released:
            await self.batchers.pop(model.key).stop()
            self.thresholds.drop(model.card)
        return released

    def batcher(self, card: ModelCard) -> MicroBatcher:
        """The micro-batcher of a served model version (ModelUnavailable if it was released
        since the request looked it up)."""
        try:
            return self.batchers[card.name, card.version]
        except KeyError:
            raise ModelUnavailable(
                f"model {card.name} version {card.version} was released while this request "
                "waited; it is no longer served here"
            ) from None

    def check_admin(self, caller: Principal, action: str) -> None:
        """Forbidden unless keys are off or the caller's key has the admin role."""
        if self.keyring.enabled and not caller.admin:
            raise Forbidden(f"{action} needs an admin key")

    def model(self, name: str | None) -> LoadedModel:
        """The named model; with no name, the default model or the only one."""
        if name is None:
            name = self.default_model()
            if name is None:
                available = ", ".join(self.registry.names())
                raise InvalidInput("model", f"required; available: {available}")
        return self.registry.get(name)

    def served_model(self, name: str, version: str | None = None) -> LoadedModel:
        """The named model, checked against the version named, if any (ModelNotFound)."""
        model = self.registry.get(name)
        if version is not None and version != model.card.version:
            raise ModelNotFound(
                f"{name} version {version}", [f"{name} version {model.card.version}"]
            )
        return model

    def feature_widths(self) -> set[int]:
        """The row lengths (features per step) of the served models."""
        return {model.card.n_features for model in self.registry.models.values()}

    def set_router(self, key: ModelKey, router: Router) -> None:
        """Route a model version's batches with `router` from now on (once calibrated); a
        version released meanwhile is skipped."""
        batcher = self.batchers.get(key)
        if batcher is not None:
            batcher.router = router

    def list_models(self) -> list[dict]:
        """Every served model's card."""
        return model_info.describe_all(self.registry, self.default_model())

    def default_model(self) -> str | None:
        """The model of requests that name none (`Registry.default`)."""
        return self.registry.default(self.settings.default_model)[0]

    def describe(self, name: str) -> dict:
        """A model's card with its state size, cost per step and whether it is the default."""
        return model_info.describe(self.registry, name, self.default_model())

    def model_stats(self, name: str) -> dict:
        """A model's live statistics on this replica (`stats.model_stats`)."""
        model = self.registry.get(name)
        return model_stats(model, self.batcher(model.card), self.monitor, self.degraders.get(name))

    # callers --------------------------------------------------------------------------

    def authenticate(self, authorization: str | None, client_host: str | None) -> Principal:
        """The caller of a request (Unauthorized if keys are on and it has none)."""
        return self.keyring.authenticate(authorization, client_host)

    @contextmanager
    def stream_slot(self, caller: Principal) -> Iterator[None]:
        """Hold one of the caller's (and the process's) WebSocket connection slots."""
        try:
            with self._connections.hold(caller.id):
                self.monitor.prom.ws_connections.set(self._connections.open)
                yield
        finally:
            self.monitor.prom.ws_connections.set(self._connections.open)

    def record_error(self, exc: ServiceError) -> None:
        """Count an error a client saw, whatever the transport."""
        self.monitor.record_error(exc.code)

    def count_error(self, code: str) -> None:
        """Count an error the HTTP layer itself answered (unknown path, wrong method)."""
        self.monitor.record_error(code)

    def record_message(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one WebSocket message answered (HTTP requests are counted by middleware)."""
        self.monitor.record_request(endpoint, status, seconds)

    async def ready(self) -> list[str]:
        """The served models, once the store answers (StoreUnavailable otherwise)."""
        await self.refresh_active()
        return self.registry.names()

    # stateless ------------------------------------------------------------------------

    async def predict(self, model_name: str, request: PredictRequest) -> PredictResult:
        """Run whole sequences from a zero state, batched together; nothing is stored."""
        card = self.registry.get(model_name).card
        result = await run_sequences(card, self.batcher(card), self.settings, request)
        self.monitor.record_usage(card.name, result.usage)
        return result

    # housekeeping ---------------------------------------------------------------------

    async def refresh_active(self) -> None:
        """Set the active-sessions gauge from the store (the truth across replicas)."""
        await self.sweeper.refresh_active()

    async def sweep(self) -> None:
        """Account for the sessions the store ended and refresh the gauge."""
        await self.sweeper.sweep()
