"""Every setting of the service, read once from the environment (prefix SARNN_)."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models"


class Settings(BaseSettings):
    """Configuration of one sarnn-serve process; `SARNN_<FIELD>` overrides each field."""

    model_config = SettingsConfigDict(env_prefix="SARNN_", protected_namespaces=())

    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="Directory of model directories.")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(1, ge=1, description="uvicorn worker processes.")
    log_level: str = "info"

    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sarnn"
    session_ttl_s: float = Field(
        900.0, gt=0, description="Idle time after which a session expires."
    )
    max_sessions: int = Field(100_000, ge=1)
    sweep_interval_s: float = Field(5.0, gt=0, description="How often expired sessions are swept.")

    max_chunk_steps: int = Field(4096, ge=1)
    max_predict_sequences: int = Field(256, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    ws_max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)

    ort_intra_op_threads: int = Field(1, ge=1)
    ort_inter_op_threads: int = Field(1, ge=1)
    engine_threads: int = Field(1, ge=1, description="Threads that run onnxruntime calls.")
    batch_max_rows: int = Field(256, ge=1, description="Rows (sessions) per batched call.")
    batch_max_steps: int = Field(65_536, ge=1, description="Rows x padded steps per call.")
    batch_wait_ms: float = Field(1.0, ge=0, description="How long a batch waits to fill.")
    switch_interval_s: float = Field(1e-4, gt=0, description="sys.setswitchinterval value.")
