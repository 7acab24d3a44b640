"""Request and response bodies of the HTTP API (they also document it at /docs)."""

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

MAX_ABS_INPUT = 1e9
Number = Annotated[
    float, Field(strict=True, allow_inf_nan=False, ge=-MAX_ABS_INPUT, le=MAX_ABS_INPUT)
]
Step = Annotated[list[Number], Field(min_length=1)]
AnswerMode = Literal["steps", "columns"]
MAX_IDLE_TIMEOUT_S = 7 * 24 * 3600
MIN_IDLE_TIMEOUT_S = 1.0  # below it a session would expire between two chunks
MAX_SEQ = 2**63 - 1


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable reason, e.g. seq_conflict.")
    message: str
    field: str | None = Field(None, description="The request field at fault, when there is one.")
    expected_seq: int | None = None
    retry_after_s: float | None = Field(None, description="With 429: when to try again.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    model: str | None = Field(None, description="Model name; the only model if omitted.")
    threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description="Gate threshold tau in (0, 1); default from the card.",
    )
    target_update_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Instead of threshold: hold the session to this share of neurons updated "
        "per step; a controller sets its threshold after each chunk, within the model's "
        "measured threshold range (the card's threshold_curve).",
    )
    degrade: bool = Field(
        False,
        description="Let the server raise this session's threshold (spend less per step) "
        "while it is overloaded (SARNN_DEGRADE_QUEUE_MS); never without it.",
    )
    idle_timeout_s: float | None = Field(
        None,
        ge=MIN_IDLE_TIMEOUT_S,
        le=MAX_IDLE_TIMEOUT_S,
        allow_inf_nan=False,
        description="Idle time before expiry, from 1 second to 7 days (default: the server's).",
    )


class StreamAttach(BaseModel):
    """Query parameters of WS /v1/sessions/{id}/stream."""

    model_config = ConfigDict(extra="forbid", strict=True)

    answer: AnswerMode = Field(
        "steps", description="Answer mode of JSON and msgpack frames that name none."
    )
    delete_on_close: bool = Field(False, description="Delete the session when the socket closes.")
    access_token: str | None = Field(
        None, description="An API key, for clients that cannot send an Authorization header."
    )


class StreamOpen(SessionCreate, StreamAttach):
    """Query parameters of WS /v1/stream: those of POST /v1/sessions, and StreamAttach's."""


class Usage(BaseModel):
    steps: int
    updates: int = Field(description="Neuron updates (u = 1) summed over steps.")
    update_rate: float = Field(description="updates / (steps x H).")
    macs_dense: int = Field(description="Multiply-adds a dense cell spends.")
    macs_selective: int = Field(description="Multiply-adds the selective cell spends.")
    macs_saved: int


class SessionSummary(Usage):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    model: str
    model_version: str
    threshold: float = Field(description="The threshold the next chunk runs at.")
    target_update_rate: float | None = Field(
        None, description="The update rate the session is held to, if any."
    )
    degrade: bool = Field(False, description="Whether the server may raise its threshold.")
    idle_timeout_s: float
    created: float = Field(description="Unix time.")
    last_seen: float = Field(description="Unix time.")
    next_seq: int = Field(description="The seq the next chunk must carry.")


class SessionDeleted(BaseModel):
    """The answer to deleting a session that has no summary to give: its stored record cannot
    be read here, or its model is no longer served."""

    id: str
    deleted: bool = True
    note: str = Field(description="Why there is no summary.")


class SessionRef(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    model: str


class ChunkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    seq: int = Field(
        ge=0,
        le=MAX_SEQ,
        description="0 for the first chunk; repeat the last seq (same inputs and include_mask) "
        "to retry.",
    )
    inputs: list[Step] = Field(
        min_length=1, description="Steps, each a list of F raw sensor values (F: the model's)."
    )
    include_mask: bool = Field(False, description="Return each step's update mask (H of 0/1).")
    answer: AnswerMode | None = Field(
        None,
        description="steps (the default): one object per step with label and probabilities; "
        "columns: the lean answer, arrays of classes and update counts (ChunkColumns).",
    )
    include_probabilities: bool = Field(
        False, description="With answer=columns, add the probabilities [T][C] (steps has them)."
    )


@dataclass
class ArrayChunk:
    """A chunk whose steps arrive as an array (binary WebSocket frames, v2 tensors): the fields
    of ChunkRequest with `inputs` [T, F] float32, checked by the data plane as a JSON chunk's
    values are. Not a request body: the transports that decode such chunks build it."""

    seq: int
    inputs: np.ndarray
    include_mask: bool = False
    answer: AnswerMode | None = None
    include_probabilities: bool = False


Chunk = ChunkRequest | ArrayChunk  # what DataPlane.advance takes


class StepResult(BaseModel):
    index: int = Field(description="Step index within the session (or sequence).")
    label: str
    class_: int = Field(alias="class")
    probabilities: list[float]
    updates: int = Field(description="Neurons updated at this step (out of H).")
    mask: list[int] | None = None


class ChunkResponse(BaseModel):
    type: Literal["chunk"] = "chunk"
    session_id: str
    seq: int
    model: str
    steps: list[StepResult]
    chunk: Usage
    session: SessionSummary
    threshold: float = Field(description="The threshold this chunk ran at.")
    expected_accuracy: float | None = Field(
        None,
        description="Validation streaming accuracy of the model at that threshold (the card's "
        "threshold curve), if measured.",
    )
    replayed: bool = Field(description="True when this answers a retry of the last seq.")


class ChunkColumns(BaseModel):
    """The lean chunk answer (answer=columns): per-step arrays, the session's running totals."""

    type: Literal["chunk"] = "chunk"
    seq: int
    first_index: int = Field(description="Session step index of the chunk's first step.")
    classes: list[int] = Field(description="Predicted class per step (labels: the model card).")
    updates: list[int] = Field(description="Neurons updated per step (out of H).")
    probabilities: list[list[float]] | None = Field(
        None, description="With include_probabilities: [T][C]."
    )
    masks: list[list[int]] | None = Field(None, description="With include_mask: [T][H] of 0/1.")
    session_steps: int
    session_updates: int
    threshold: float = Field(description="The threshold this chunk ran at.")
    replayed: bool


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: list[Annotated[list[Step], Field(min_length=1)]] = Field(
        min_length=1, description="A batch of sequences [N][T_i][F]."
    )
    threshold: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False)
    include_steps: bool = Field(True, description="Return per-step predictions.")
    include_mask: bool = False


class SequenceResult(BaseModel):
    length: int
    final: StepResult
    steps: list[StepResult] | None = None
    usage: Usage


class PredictResponse(BaseModel):
    model: str
    sequences: list[SequenceResult]
    usage: Usage
