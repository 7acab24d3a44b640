"""Prometheus metrics and the per-model live stats: both fed by `Monitor.record_usage`,
so /metrics, /v1/models/{name}/stats, sessions and the dashboard report the same numbers."""

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from sarnn_serve.accounting import Usage
from sarnn_serve.batcher import CallTiming

disable_created_metrics()

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
WINDOW_S = 60
THRESHOLD_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
DEGRADED_WINDOW_S = 10.0


class PromMetrics:
    """The Prometheus series of one app (own registry, so several apps can live in a test)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("model",)) -> Counter:
            return Counter(name, doc, labels, registry=r)

        self.sessions_created = counter("sarnn_sessions_created", "Sessions created.")
        self.sessions_deleted = counter("sarnn_sessions_deleted", "Sessions deleted by clients.")
        self.sessions_expired = counter("sarnn_sessions_expired", "Sessions expired when idle.")
        self.sessions_evicted = counter(
            "sarnn_sessions_evicted", "Sessions evicted (least recently used) at the limit."
        )
        self.active_sessions = Gauge(
            "sarnn_active_sessions", "Live sessions.", ("model",), registry=r
        )
        self.requests = counter(
            "sarnn_requests", "Requests by endpoint and status.", ("endpoint", "status")
        )
        self.errors = counter("sarnn_errors", "Errors by reason.", ("reason",))
        self.engine_seconds = Counter(
            "sarnn_engine_seconds",
            "Seconds spent in engine calls, by path (dense or sparse graph, native kernel).",
            ("model", "path"),
            registry=r,
        )
        self.engine_calls = Counter(
            "sarnn_engine_calls", "Engine calls, by path.", ("model", "path"), registry=r
        )
        self.engine_dense_seconds = counter(
            "sarnn_engine_dense_equivalent_seconds",
            "Seconds the dense graph would have spent on the same calls: measured for calls "
            "that ran dense, predicted by the load-time calibration for the others.",
        )
        self.sparse_crossover = Gauge(
            "sarnn_sparse_crossover_update_rate",
            "Calibrated update rate below which the work-skipping path is faster, by batch "
            "size (the union rate of a batch for the sparse graph, the mean row rate for the "
            "native kernel).",
            ("model", "batch"),
            registry=r,
        )
        self.batcher_restarts = counter(
            "sarnn_batcher_restarts", "Micro-batcher loops restarted after a failure."
        )
        self.queued_chunks = Gauge(
            "sarnn_queued_chunks", "Chunks waiting for an engine call.", ("model",), registry=r
        )
        self.ws_connections = Gauge(
            "sarnn_ws_connections", "Open WebSocket streams of this process.", registry=r
        )
        self.request_seconds = Histogram(
            "sarnn_request_duration_seconds",
            "Whole request (or WebSocket message) handling time.",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.effective_threshold = Histogram(
            "sarnn_effective_threshold",
            "Threshold each chunk ran at: the session's own, or raised by degradation.",
            ("model",),
            buckets=THRESHOLD_BUCKETS,
            registry=r,
        )
        self.degraded_sessions = Gauge(
            "sarnn_degraded_sessions",
            f"Sessions whose last chunk in the last {DEGRADED_WINDOW_S:g} s ran at a threshold "
            "raised by degradation.",
            ("model",),
            registry=r,
        )
        self.degrade_level = Gauge(
            "sarnn_degrade_level",
            "Degradation level: degradable sessions run at threshold + level x SARNN_DEGRADE_STEP.",
            ("model",),
            registry=r,
        )
        self.inference_seconds = Histogram(
            "sarnn_inference_duration_seconds",
            "Time of one onnxruntime call (a batch of chunks).",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )


USAGE_SERIES = (
    ("sarnn_steps", "Steps processed.", "steps"),
    ("sarnn_neuron_updates", "Neuron updates (u = 1).", "updates"),
    ("sarnn_neuron_slots", "Neuron slots: steps x hidden size.", "slots"),
    ("sarnn_macs_dense", "Multiply-adds a dense cell would have spent.", "macs_dense"),
    ("sarnn_macs_selective", "Multiply-adds the selective cell spent.", "macs_selective"),
)


class UsageCollector(Collector):
    """The usage counters, read from the per-model totals when /metrics is scraped (a chunk
    adds to plain integers; nothing Prometheus-side runs per chunk)."""

    def __init__(self, stats: "dict[str, ModelStats]") -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, doc, attr in USAGE_SERIES:
            family = CounterMetricFamily(name, doc, labels=("model",))
            for model, stats in self.stats.items():
                total = stats.total
                value = total.steps * stats.hidden if attr == "slots" else getattr(total, attr)
                family.add_metric((model,), value)
            yield family


@dataclass
class _Second:
    at: int
    steps: int = 0
    updates: int = 0
    macs_dense: int = 0
    macs_selective: int = 0


class ModelStats:
    """Totals since start and per-second buckets over the last minute for one model."""

    def __init__(self, hidden: int, clock=time.time) -> None:
        self.hidden = hidden
        self.clock = clock
        self.started = clock()
        self.total = _Second(0)
        self.recent: deque[_Second] = deque()
        self.engine_seconds: dict[str, float] = {}
        self.engine_calls: dict[str, int] = {}
        self.dense_seconds = 0.0

    def add_call(self, timing: CallTiming) -> None:
        """One engine call: its measured seconds and its dense equivalent."""
        self.engine_seconds[timing.path] = (
            self.engine_seconds.get(timing.path, 0.0) + timing.seconds
        )
        self.engine_calls[timing.path] = self.engine_calls.get(timing.path, 0) + 1
        self.dense_seconds += timing.dense_seconds

    def engine_snapshot(self) -> dict:
        """Measured engine time by graph, beside what the dense graph would have spent."""
        spent = sum(self.engine_seconds.values())
        return {
            "calls": dict(self.engine_calls),
            "seconds": dict(self.engine_seconds),
            "dense_equivalent_seconds": self.dense_seconds,
            "measured_time_saved_s": self.dense_seconds - spent,
            "measured_time_saved": 1 - spent / self.dense_seconds if self.dense_seconds else 0.0,
        }

    def add(self, u: Usage) -> None:
        now = int(self.clock())
        if not self.recent or self.recent[-1].at != now:
            self.recent.append(_Second(now))
        for bucket in (self.total, self.recent[-1]):
            bucket.steps += u.steps
            bucket.updates += u.updates
            bucket.macs_dense += u.macs_dense
            bucket.macs_selective += u.macs_selective
        self._trim(now)

    def _trim(self, now: int) -> None:
        while self.recent and self.recent[0].at <= now - WINDOW_S:
            self.recent.popleft()

    def snapshot(self) -> dict:
        """Overall and last-minute update rate, savings and throughput."""
        now = self.clock()
        self._trim(int(now))
        window = min(WINDOW_S, max(1.0, now - self.started))
        last = _Second(0)
        for b in self.recent:
            last.steps += b.steps
            last.updates += b.updates
            last.macs_dense += b.macs_dense
            last.macs_selective += b.macs_selective

        def rate(b: _Second) -> float:
            return b.updates / (b.steps * self.hidden) if b.steps else 0.0

        def saving(b: _Second) -> float:
            return 1 - b.macs_selective / b.macs_dense if b.macs_dense else 0.0

        return {
            "steps": self.total.steps,
            "updates": self.total.updates,
            "update_rate": rate(self.total),
            "macs_dense": self.total.macs_dense,
            "macs_selective": self.total.macs_selective,
            "macs_saved": self.total.macs_dense - self.total.macs_selective,
            "saving": saving(self.total),
            "last_minute": {
                "steps": last.steps,
                "update_rate": rate(last),
                "saving": saving(last),
                "steps_per_s": last.steps / window,
            },
        }


class Monitor:
    """One accounting sink: every processed chunk goes through `record_usage`."""

    def __init__(self, prom: PromMetrics, hidden_sizes: dict[str, int]) -> None:
        self.prom = prom
        self.active = dict.fromkeys(hidden_sizes, 0)
        self.stats = {name: ModelStats(h) for name, h in hidden_sizes.items()}
        prom.registry.register(UsageCollector(self.stats))
        self._request_series: dict[tuple[str, int], tuple] = {}
        self._thresholds = {name: prom.effective_threshold.labels(name) for name in hidden_sizes}
        self._degraded: dict[str, OrderedDict[str, float]] = {
            n: OrderedDict() for n in hidden_sizes
        }

    def add_model(self, model: str, hidden: int) -> None:
        """Account for a model loaded after start (or a new version of one): its statistics
        start afresh if its hidden size changed."""
        if model not in self.stats or self.stats[model].hidden != hidden:
            self.stats[model] = ModelStats(hidden)
        self.active.setdefault(model, 0)
        self._thresholds.setdefault(model, self.prom.effective_threshold.labels(model))
        self._degraded.setdefault(model, OrderedDict())

    def record_usage(self, model: str, u: Usage) -> None:
        self.stats[model].add(u)

    def watch_queue(self, model: str, waiting: Callable[[], int]) -> None:
        """Report a model's queued chunks from `waiting` at each scrape."""
        self.prom.queued_chunks.labels(model).set_function(waiting)

    def record_threshold(
        self, model: str, session: str, threshold: float, degraded: bool, clock=time.monotonic
    ) -> None:
        """The threshold a session's chunk ran at, and whether degradation raised it."""
        self._thresholds[model].observe(threshold)
        recent = self._degraded[model]
        if degraded:
            recent[session] = clock()
            recent.move_to_end(session)
        elif recent:
            recent.pop(session, None)

    def degraded_sessions(self, model: str, clock=time.monotonic) -> int:
        """Sessions whose last chunk in the last DEGRADED_WINDOW_S ran degraded."""
        recent = self._degraded[model]
        horizon = clock() - DEGRADED_WINDOW_S
        while recent and next(iter(recent.values())) < horizon:
            recent.popitem(last=False)
        return len(recent)

    def watch_degrade_level(self, model: str, level: Callable[[], int]) -> None:
        """Report a model's degradation level from `level`, and its degraded sessions."""
        self.prom.degrade_level.labels(model).set_function(level)
        self.prom.degraded_sessions.labels(model).set_function(
            lambda: self.degraded_sessions(model)
        )

    def batcher_restarted(self, model: str) -> None:
        self.prom.batcher_restarts.labels(model).inc()

    def record_call(self, model: str, timing: CallTiming) -> None:
        """One engine call of a model (every transport's chunks pass through here)."""
        self.prom.inference_seconds.labels(model).observe(timing.seconds)
        self.prom.engine_seconds.labels(model, timing.path).inc(timing.seconds)
        self.prom.engine_calls.labels(model, timing.path).inc()
        self.prom.engine_dense_seconds.labels(model).inc(timing.dense_seconds)
        self.stats[model].add_call(timing)

    def set_crossover(self, model: str, crossover: dict[int, float]) -> None:
        for batch, rate in crossover.items():
            self.prom.sparse_crossover.labels(model, str(batch)).set(rate)

    def record_error(self, code: str) -> None:
        """One client-visible error, counted by its code (every transport calls this)."""
        self.prom.errors.labels(code).inc()

    def record_request(self, endpoint: str, status: int, seconds: float) -> None:
        """One HTTP request or WebSocket message answered."""
        series = self._request_series.get((endpoint, status))
        if series is None:
            series = (
                self.prom.requests.labels(endpoint, str(status)),
                self.prom.request_seconds.labels(endpoint),
            )
            self._request_series[endpoint, status] = series
        series[0].inc()
        series[1].observe(seconds)

    def set_active(self, model: str, count: int) -> None:
        self.active[model] = max(0, count)
        self.prom.active_sessions.labels(model).set(self.active[model])

    def session_created(self, model: str) -> None:
        self.prom.sessions_created.labels(model).inc()
        self.set_active(model, self.active.get(model, 0) + 1)

    def session_ended(self, model: str, reason: str) -> None:
        """A session was deleted by its client, expired or evicted."""
        counters = {
            "deleted": self.prom.sessions_deleted,
            "expired": self.prom.sessions_expired,
            "evicted": self.prom.sessions_evicted,
        }
        counters[reason].labels(model).inc()
        self.set_active(model, self.active.get(model, 0) - 1)
