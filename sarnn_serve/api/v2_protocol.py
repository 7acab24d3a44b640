"""The Open Inference Protocol (KServe v2) over the data plane, whatever carries it: the HTTP
routes (`api/v2.py`) and the gRPC service (`api/grpc_service.py`) decode a request into
`api.codec.InferRequest` and its raw tensor bytes, and call `infer` here.

A request whose `sequence_id` parameter is not 0 or "" advances that sequence's session, whose id
is derived from (caller, model, sequence id): `sequence_start` opens it (restarting a live one),
`sequence_end` deletes it after its chunk. A retry (the same request `id` at the same position)
is the data plane's retry of the last seq: answered again, applied once. A request without a
sequence is stateless, like POST /v1/models/{name}/predict. An error's protocol message is
"<code>: <message>" of the typed error.
"""

from contextlib import suppress
from typing import Any

import numpy as np

from sarnn_serve.api.codec import (
    InferParameters,
    InferRequest,
    OutputTensor,
    decode_inputs,
    step_tensors,
)
from sarnn_serve.auth import Principal
from sarnn_serve.card import ModelCard
from sarnn_serve.errors import (
    InvalidInput,
    ModelUnavailable,
    ServiceError,
    SessionNotFound,
)
from sarnn_serve.registry import LoadedModel
from sarnn_serve.results import StepOutputs
from sarnn_serve.schemas import ArrayChunk, PredictRequest, SessionCreate, Usage
from sarnn_serve.service import DataPlane
from sarnn_serve.sessions import sequence_session_id
from sarnn_serve.validation import parse_inputs

INPUT = "x"
OUTPUTS = {"probabilities": "FP32", "class": "INT64", "updates": "INT32", "mask": "BOOL"}
DEFAULT_OUTPUTS = ("probabilities", "class", "updates")
EXTENSIONS = ["binary_tensor_data", "sequence", "sequence(string_id)", "model_repository"]
PLATFORM = "onnx_onnxv1"
SEQUENCE_GONE = {
    "unknown": "is not open: start it with sequence_start=true",
    "expired": "expired after being idle: start it again with sequence_start=true",
    "evicted": "was evicted to make room for newer sessions: start it again with "
    "sequence_start=true",
    "deleted": "has ended (sequence_end) or was deleted: start it again with sequence_start=true",
}


def error_message(exc: ServiceError) -> str:
    """The protocol's error message for a typed error: "<code>: <message>"."""
    return f"{exc.code}: {exc.message}"


class SequenceNotOpen(ServiceError):
    """A sequence without a live session; the code is the store's reason (session_expired...)."""

    status = 404

    def __init__(self, sequence_id: int | str, gone: SessionNotFound) -> None:
        reason = gone.detail.get("reason", "unknown")
        what = SEQUENCE_GONE.get(reason, SEQUENCE_GONE["unknown"])
        super().__init__(f"sequence_id {sequence_id!r} {what}", reason=reason)
        self.code = gone.code


def model_metadata(card: ModelCard) -> dict[str, Any]:
    """The model's input and outputs: names, datatypes and shapes (-1: any size)."""
    shapes = {
        "probabilities": [-1, -1, card.n_classes],
        "class": [-1, -1],
        "updates": [-1, -1],
        "mask": [-1, -1, card.hidden],
    }
    return {
        "name": card.name,
        "versions": [card.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, -1, card.n_features]}],
        "outputs": [
            {"name": name, "datatype": datatype, "shape": shapes[name]}
            for name, datatype in OUTPUTS.items()
        ],
    }


async def infer(
    dp: DataPlane, who: Principal, model: LoadedModel, req: InferRequest, binary: bytes
) -> tuple[dict[str, Any], list[OutputTensor]]:
    """Run one input tensor `x` [N, T, F]: a chunk of a sequence (N = 1) with a sequence_id
    parameter, otherwise N whole sequences from a zero state. The response's header (model,
    id, parameters) and its outputs (`binary`: the tensors' bytes after a JSON header)."""
    card = model.card
    x = model_input(req, binary, card, dp.settings.max_chunk_steps)
    wanted = requested_outputs(req)
    if req.parameters.in_sequence:
        outputs, parameters = await run_sequence(dp, who, card, req, x, "mask" in wanted)
    else:
        outputs, parameters = await run_stateless(
            dp, req.parameters, card.name, x, "mask" in wanted
        )
    arrays = step_tensors(outputs)
    header = {
        "model_name": card.name,
        "model_version": card.version,
        **({"id": req.id} if req.id else {}),
        "parameters": parameters,
    }
    tensors = [OutputTensor(name, OUTPUTS[name], arrays[name], b) for name, b in wanted.items()]
    return header, tensors


def model_input(req: InferRequest, binary: bytes, card: ModelCard, max_steps: int) -> np.ndarray:
    """The one input tensor, FP32 [N, T, F] with N, T >= 1 (checked before it is decoded) and
    finite values within the inputs' bound, the checks of every transport."""
    names = [tensor.name for tensor in req.inputs]
    if names != [INPUT]:
        raise InvalidInput("inputs", f"the model takes one input, {INPUT!r}; got {names}")
    tensor = req.inputs[0]
    if tensor.datatype != "FP32":
        raise InvalidInput("inputs[0].datatype", f"must be FP32, got {tensor.datatype!r}")
    shape = tensor.shape
    if len(shape) != 3 or shape[2] != card.n_features or min(shape) < 1:
        raise InvalidInput(
            "inputs[0].shape",
            f"must be [N, T, {card.n_features}] with N, T >= 1 (N sequences of T steps of "
            f"{card.n_features} features); got {shape}",
        )
    x = decode_inputs(req, binary)[0]
    for i, sequence in enumerate(x):
        parse_inputs(sequence, card.n_features, max_steps, f"inputs[0].data[{i}]")
    return x


def requested_outputs(req: InferRequest) -> dict[str, bool]:
    """Output name -> sent as binary data; with none named, every output but the masks."""
    default = req.parameters.binary_data_output
    if not req.outputs:
        return dict.fromkeys(DEFAULT_OUTPUTS, default)
    wanted = {}
    for i, out in enumerate(req.outputs):
        if out.name not in OUTPUTS:
            raise InvalidInput(
                f"outputs[{i}].name", f"unknown output {out.name!r}; outputs: {', '.join(OUTPUTS)}"
            )
        binary = out.parameters.binary_data
        wanted[out.name] = default if binary is None else binary
    return wanted


async def run_stateless(
    dp: DataPlane, params: InferParameters, model: str, x: np.ndarray, include_mask: bool
) -> tuple[list[StepOutputs], dict[str, Any]]:
    """Each row of x as a whole sequence from a zero state (nothing is stored)."""
    for flag in ("sequence_start", "sequence_end"):
        if getattr(params, flag):
            raise InvalidInput(f"parameters.{flag}", "needs a sequence_id other than 0 or ''")
    request = PredictRequest.model_construct(
        inputs=list(x), threshold=params.threshold, include_steps=True, include_mask=include_mask
    )
    result = await dp.predict(model, request)
    return [outputs for outputs, _ in result.sequences], result.usage.as_dict()


async def run_sequence(
    dp: DataPlane,
    who: Principal,
    card: ModelCard,
    req: InferRequest,
    x: np.ndarray,
    include_mask: bool,
) -> tuple[list[StepOutputs], dict[str, Any]]:
    """Apply x [1, T, F] to the request's sequence (opened, continued or ended); its steps and
    the response parameters: the sequence id, its session and the session's totals."""
    params = req.parameters
    if x.shape[0] != 1:
        raise ServiceError(
            f"inputs[0].shape: a request of a sequence carries one sequence, [1, T, "
            f"{card.n_features}]; batches of several sequences are not supported",
            field="inputs[0].shape",
        )
    for name in ("threshold", "target_update_rate", "degrade"):
        if name in params.model_fields_set and not params.sequence_start:
            raise InvalidInput(f"parameters.{name}", "is set when a sequence starts")
    session_id = sequence_session_id(who.id, card.name, params.sequence_id)
    try:
        if params.sequence_start:
            opening = SessionCreate(
                model=card.name,
                threshold=params.threshold,
                target_update_rate=params.target_update_rate,
                degrade=params.degrade,
            )
            seq = await start_sequence(dp, who, session_id, req.id, opening)
        else:
            seq, _ = await dp.sequence_seq(who, session_id, req.id)
        chunk = ArrayChunk(seq=seq, inputs=x[0], include_mask=include_mask)
        result = await dp.advance(who, session_id, chunk, req.id)
        summary = await dp.delete_session(who, session_id) if params.sequence_end else None
    except SessionNotFound as exc:
        raise SequenceNotOpen(params.sequence_id, exc) from None
    totals = summary or result.session
    return [result.outputs], {
        "sequence_id": params.sequence_id,
        "session_id": session_id,
        "replayed": result.replayed,
        **{name: totals[name] for name in Usage.model_fields},
    }


async def start_sequence(
    dp: DataPlane,
    who: Principal,
    session_id: str,
    request_id: str,
    opening: SessionCreate,
) -> int:
    """Open the sequence's session as `opening` asks, ending a live one, unless this request is
    the start that was applied last (a retry, seq 0). The seq of the start's chunk: 0."""
    if request_id:
        with suppress(SessionNotFound, ModelUnavailable):
            seq, retry = await dp.sequence_seq(who, session_id, request_id)
            if retry and seq == 0:
                return 0
    with suppress(SessionNotFound):
        await dp.delete_session(who, session_id)
    await dp.create_session(who, opening, session_id=session_id)
    return 0
