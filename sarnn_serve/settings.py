"""Every setting of the service, read once from the environment (prefix SARNN_)."""

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sarnn_serve.store.redis_target import target

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models"


class Settings(BaseSettings):
    """Configuration of one sarnn-serve process; `SARNN_<FIELD>` overrides each field."""

    model_config = SettingsConfigDict(env_prefix="SARNN_", protected_namespaces=())

    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="Directory of model directories.")
    default_model: str | None = Field(
        None,
        description="Model used when a request names none and several are served (unset: "
        "the only model, else the first by name that skips work, as the start-up log says).",
    )
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes.")
    forwarded_allow_ips: str = Field(
        "",
        description="Comma-separated addresses or networks of the reverse proxy in front, the "
        "only peers whose X-Forwarded-For names the client (per-IP quotas with keys off); "
        "empty: none, the peer's own address is the client. Name the proxy itself, never '*'.",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="Log level: debug, info, warning, error or critical."
    )

    store: Literal["memory", "redis"] = Field(
        "memory", description="Session store: memory (one process) or redis (shared)."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (store=redis).")
    redis_prefix: str = Field("sarnn", description="Prefix of every Redis key.")
    redis_max_connections: int = Field(
        64, ge=1, description="Redis connections per process; more calls wait for one."
    )
    redis_mode: Literal["auto", "single", "cluster", "sentinel"] = Field(
        "auto",
        description="How Redis is reached: single (one endpoint), cluster (Redis Cluster), "
        "sentinel (the master that SARNN_REDIS_SENTINELS name); auto: cluster for a "
        "redis+cluster:// URL, sentinel when sentinels are set, else single.",
    )
    redis_sentinels: str = Field(
        "",
        description="Comma-separated host:port of Redis Sentinels (sentinel mode); the URL's "
        "password, database and TLS then apply to the master they name.",
    )
    redis_master_name: str = Field(
        "sarnn", description="The master's name in the Sentinels' configuration."
    )
    redis_sentinel_password: str = Field(
        "", description="Password of the Sentinels themselves (empty: none)."
    )
    redis_shards: int = Field(
        60,
        ge=1,
        le=16384,
        description="Redis Cluster: sessions are spread over this many hash tags, each one slot "
        "with its own LRU order and share of SARNN_MAX_SESSIONS.",
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        description="Replicas that must confirm each create and chunk write (Redis WAIT) "
        "before it is answered; 0: off. A chunk a failover loses anyway is reported as 409 "
        "session_rolled_back.",
    )
    redis_wait_timeout_ms: int = Field(
        100, ge=1, description="Longest wait for SARNN_REDIS_WAIT_REPLICAS per write."
    )
    record_format: int = Field(
        2,
        ge=1,
        le=2,
        description="Session record format written (either is read): 2, named fields; 1 while "
        "replicas of a release that reads only format 1 share the store (a rolling upgrade).",
    )
    session_ttl_s: float = Field(
        900.0, gt=0, description="Idle time after which a session expires."
    )
    max_sessions: int = Field(
        100_000, ge=1, description="Live sessions; past it the least recently used is evicted."
    )
    sweep_interval_s: float = Field(5.0, gt=0, description="How often expired sessions are swept.")
    model_poll_s: float = Field(
        0.0,
        ge=0,
        description="How often the model dir is scanned for models added, changed or removed "
        "(0: never; load and unload through the repository API instead).",
    )
    model_drain_s: float = Field(
        900.0,
        gt=0,
        description="A replaced or unloaded model version serves the sessions started on it "
        "until none has used it for this long, then is released.",
    )

    max_chunk_steps: int = Field(4096, ge=1, description="Steps per chunk or sequence.")
    max_predict_sequences: int = Field(256, ge=1, description="Sequences per predict request.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="HTTP body size limit.")
    ws_max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="WebSocket message size limit."
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request's headers must have arrived this long after the connection "
        "opened (or the previous response ended), else 408 and the connection is closed.",
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Size limit of a request's headers (431 past it)."
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request body is due this long after it is first read, plus a second "
        "per SARNN_BODY_MIN_RATE bytes received; a slower one gets 408 and its connection "
        "is closed.",
    )
    body_min_rate: float = Field(
        4096.0, gt=0, description="Least rate of a request body, in bytes per second."
    )

    ort_intra_op_threads: int = Field(1, ge=1, description="onnxruntime intra-op threads.")
    ort_inter_op_threads: int = Field(1, ge=1, description="onnxruntime inter-op threads.")
    engine_threads: int = Field(
        1, ge=1, description="Threads that run onnxruntime calls (one model's run concurrently)."
    )
    batch_max_rows: int = Field(256, ge=1, description="Rows (sessions) per batched call.")
    batch_max_steps: int = Field(65_536, ge=1, description="Rows x padded steps per call.")
    batch_wait_ms: float = Field(
        0.0, ge=0, description="Longest wait for a batch to fill (it is cut at once when full)."
    )
    batch_inline_steps: int = Field(
        64,
        ge=0,
        description="Calls of at most this many padded steps (rows x steps) run on the event "
        "loop instead of an engine thread (0: never).",
    )
    batch_max_queue: int = Field(
        8192, ge=1, description="Chunks that may wait for one model; past it, 503 overloaded."
    )
    degrade_queue_ms: float = Field(
        0.0,
        ge=0,
        description="Queueing delay target of graceful degradation: past it, sessions created "
        "with degrade=true run at raised thresholds until the delay falls (0: off).",
    )
    degrade_step: float = Field(
        0.05, gt=0, lt=1, description="Threshold added per degradation level."
    )
    engine_path: Literal["auto", "dense", "sparse", "native"] = Field(
        "auto",
        description="What runs batches: auto (per batch, the dense graph or the path that skips "
        "work, whichever the timing calibration at load says is faster: the native kernel where "
        "it was built, else the sparse graph), or always dense / sparse (needs "
        "model.sparse.onnx) / native (needs the built kernel).",
    )
    native_kernel: bool = Field(
        True, description="Load the package's native kernel for each model, where it was built."
    )
    switch_interval_s: float = Field(1e-4, gt=0, description="sys.setswitchinterval value.")

    grpc_enabled: bool = Field(
        True, description="Serve the Open Inference Protocol over gRPC as well, on grpc_port."
    )
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="gRPC port (on host); 0: any free port, logged."
    )
    grpc_tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate chain of the gRPC port; with grpc_tls_key_file it serves "
        "TLS (unset: plaintext).",
    )
    grpc_tls_key_file: Path | None = Field(
        None, validate_default=True, description="PEM private key of grpc_tls_cert_file."
    )

    @field_validator("grpc_tls_key_file")
    @classmethod
    def _tls_pair(cls, key: Path | None, info: ValidationInfo) -> Path | None:
        """A certificate and its key go together."""
        if (key is None) != (info.data.get("grpc_tls_cert_file") is None):
            raise ValueError("set SARNN_GRPC_TLS_CERT_FILE and SARNN_GRPC_TLS_KEY_FILE together")
        return key

    api_keys: str = Field(
        "",
        description="Comma-separated API keys; a key ending in ':admin' has the admin role. "
        "Empty (with no key file): keys off, anyone who reaches the port may drive any session "
        "whose id they know.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="File of hashed keys, one per line: 'sha256:<hex> <name> [admin]'.",
    )
    list_sessions: bool = Field(
        False, description="With keys off, let anyone list recent session ids (GET /v1/sessions)."
    )
    max_sessions_per_key: int = Field(
        1000, ge=1, description="Open sessions one key (or, with keys off, one client IP) may hold."
    )
    session_create_rate: float = Field(
        50.0, gt=0, description="Sessions one key (or client IP) may open per second, per replica."
    )
    session_create_burst: int = Field(
        200, ge=1, description="Sessions one key may open at once before the rate applies."
    )
    max_ws_connections: int = Field(
        2000, ge=1, description="Concurrent WebSocket connections per process."
    )
    max_ws_connections_per_key: int = Field(
        200, ge=1, description="Concurrent WebSocket connections per key (or client IP)."
    )
    allowed_origins: str = Field(
        "",
        description="Comma-separated browser Origins allowed to open WebSockets ('*' for any); "
        "empty: same origin only. Clients that send no Origin (not browsers) are allowed.",
    )
    max_store_bytes: int = Field(
        2 * 1024**3,
        ge=1024 * 1024,
        description="Bytes of sessions one process holds, each its record plus about 1 kB of "
        "bookkeeping: the memory store's sessions (past it, the key holding the most loses its "
        "least recently used), or with Redis the records it wrote last (kept to save a round "
        "trip).",
    )

    @model_validator(mode="after")
    def _redis_target(self) -> "Settings":
        """With store=redis: the URL, the mode and the Sentinels fit together."""
        if self.store == "redis":
            target(self)
        return self

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: str) -> str:
        """Each entry an IP address or network: a name or '*' would trust more than the proxy."""
        for entry in filter(None, (e.strip() for e in value.split(","))):
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (name the proxy's address)"
                ) from None
        return value
