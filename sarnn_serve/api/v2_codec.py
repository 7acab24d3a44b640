"""Bodies of the Open Inference Protocol (KServe v2) over HTTP: the inference request with its
tensors as JSON or as Triton's binary tensor data, and the response in either form.

A body with binary tensors is the JSON header followed by the tensors' bytes in the order of the
tensors in the header; the `Inference-Header-Content-Length` header gives the JSON's length and
each binary tensor's `binary_data_size` parameter its bytes (little-endian, row-major, BOOL one
byte). Errors are the service's typed errors; nothing here knows about HTTP frameworks.
"""

import math
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from sarnn_serve.errors import InvalidInput, InvalidJson, ServiceError
from sarnn_serve.validation import validate_request

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "?",
        "UINT8": "u1",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
        "INT8": "i1",
        "INT16": "<i2",
        "INT32": "<i4",
        "INT64": "<i8",
        "FP16": "<f2",
        "FP32": "<f4",
        "FP64": "<f8",
    }.items()
}
KINDS = {"b": ((bool,), "a boolean"), "i": ((int,), "an integer"), "u": ((int,), "an integer")}
NUMBERS = ((int, float), "a number")
UNSUPPORTED = ("shared_memory_region", "classification")
OBJECT = ConfigDict(extra="forbid", strict=True)
PARAMETERS = ConfigDict(extra="allow", strict=True)


class InputParameters(BaseModel):
    model_config = PARAMETERS

    binary_data_size: int | None = Field(None, ge=0)


class RequestInput(BaseModel):
    model_config = OBJECT

    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    parameters: InputParameters = InputParameters()
    data: Any = None


class OutputParameters(BaseModel):
    model_config = PARAMETERS

    binary_data: bool | None = None


class RequestOutput(BaseModel):
    model_config = OBJECT

    name: str
    parameters: OutputParameters = OutputParameters()


class InferParameters(BaseModel):
    """Request parameters this server reads (others are accepted and ignored)."""

    model_config = PARAMETERS

    sequence_id: int | str = 0
    sequence_start: bool = False
    sequence_end: bool = False
    binary_data_output: bool = False
    threshold: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False)
    target_update_rate: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    degrade: bool = False

    @field_validator("sequence_id", mode="plain")
    @classmethod
    def _sequence_id(cls, value: Any) -> int | str:
        if isinstance(value, str) or (type(value) is int and 0 <= value < 2**64):
            return value
        raise PydanticCustomError("sequence_id", "must be an unsigned 64-bit integer or a string")

    @property
    def in_sequence(self) -> bool:
        """Whether the request belongs to a sequence (an id of 0 or "" means it does not)."""
        return self.sequence_id not in (0, "")


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    id: str = ""
    parameters: InferParameters = InferParameters()
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None
    model_name: str | None = Field(None, description="Accepted and ignored: the path names it.")
    model_version: str | None = Field(None, description="Accepted and ignored.")


@dataclass
class OutputTensor:
    """One tensor of a response, sent as binary data or as JSON."""

    name: str
    datatype: str
    array: np.ndarray
    binary: bool


def parse_request(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """An inference request body (`header_length`: its Inference-Header-Content-Length header,
    if any) as the checked JSON request and the binary data after it."""
    binary = b""
    if header_length is not None:
        # ASCII digits only: str.isdigit also takes superscripts, which int() refuses
        digits = header_length.strip()
        n = int(digits) if digits.isascii() and digits.isdigit() else -1
        if n == 0:
            raise ServiceError(
                f"{HEADER_LENGTH}: 0 (a raw binary request) is not supported; send the JSON "
                "header before the binary data",
                field=HEADER_LENGTH,
            )
        if not 0 < n <= len(body):
            raise InvalidInput(
                HEADER_LENGTH,
                f"must be the length of the JSON header, between 1 and the body's {len(body)} "
                f"bytes; got {header_length!r}",
            )
        body, binary = body[:n], body[n:]
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("body", "must be a JSON object")
    return check_request(data), binary


def check_request(data: dict[str, Any]) -> InferRequest:
    """A decoded request (from JSON, or from gRPC's messages) as the checked request."""
    request = validate_request(InferRequest, data)
    for i, out in enumerate(request.outputs or ()):
        _refuse_unsupported(out.parameters.model_extra, f"outputs[{i}].parameters")
    for i, tensor in enumerate(request.inputs):
        _refuse_unsupported(tensor.parameters.model_extra, f"inputs[{i}].parameters")
    return request


def decode_inputs(request: InferRequest, binary: bytes) -> list[np.ndarray]:
    """The request's input tensors, in order, from their JSON data or the binary data."""
    arrays, at = [], 0
    for i, tensor in enumerate(request.inputs):
        field = f"inputs[{i}]"
        dtype = _dtype(tensor.datatype, f"{field}.datatype")
        size = tensor.parameters.binary_data_size
        if size is None:
            if tensor.data is None:
                raise InvalidInput(f"{field}.data", "required unless the tensor is binary data")
            arrays.append(_from_json(tensor.data, dtype, tensor.shape, f"{field}.data"))
            continue
        if tensor.data is not None:
            raise InvalidInput(f"{field}.data", "not allowed with binary_data_size")
        if at + size > len(binary):
            raise InvalidInput(
                f"{field}.parameters.binary_data_size",
                f"{size} bytes from byte {at} run past the {len(binary)} bytes of binary data",
            )
        arrays.append(_from_bytes(binary[at : at + size], dtype, tensor.shape, field))
        at += size
    if at != len(binary):
        raise InvalidInput(
            "body", f"{len(binary) - at} bytes after the tensors' binary data belong to none"
        )
    return arrays


def _dtype(datatype: str, field: str) -> np.dtype:
    if datatype not in DTYPES:
        raise InvalidInput(
            field, f"unsupported datatype {datatype!r}; supported: {', '.join(DTYPES)}"
        )
    return DTYPES[datatype]


def _refuse_unsupported(extra: dict[str, Any] | None, field: str) -> None:
    for name in UNSUPPORTED:
        if name in (extra or {}):
            raise ServiceError(f"{field}.{name}: not supported by this server", field=field)


def _from_bytes(raw: bytes, dtype: np.dtype, shape: list[int], field: str) -> np.ndarray:
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"{field}.parameters.binary_data_size",
            f"{len(raw)} bytes, but shape {shape} of {dtype.itemsize}-byte elements needs "
            f"{count * dtype.itemsize}",
        )
    if dtype.kind == "b":
        codes = np.frombuffer(raw, np.uint8)
        if (codes > 1).any():
            raise InvalidInput(field, "BOOL elements must be bytes 0 or 1")
        return codes.astype(bool).reshape(shape)
    return np.frombuffer(raw, dtype).reshape(shape)


def _flatten(data: Any) -> list[Any]:
    """The elements of nested lists in row-major order (iteratively: nesting may be deep)."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _from_json(data: Any, dtype: np.dtype, shape: list[int], field: str) -> np.ndarray:
    values = _flatten(data)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(field, f"{len(values)} elements, but shape {shape} holds {count}")
    allowed, kind = KINDS.get(dtype.kind, NUMBERS)
    for j, value in enumerate(values):
        if type(value) not in allowed:
            raise InvalidInput(f"{field}[{j}]", f"must be {kind}, got {type(value).__name__}")
    try:
        with np.errstate(over="ignore"):  # a float overflow becomes inf: callers refuse it
            array = np.array(values, np.float64 if dtype.kind == "f" else dtype).astype(dtype)
    except OverflowError:
        raise InvalidInput(field, f"an element is out of range for {dtype.name}") from None
    return array.reshape(shape)


def encode_response(
    header: dict[str, Any], outputs: list[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body (`header` with the outputs) and, when some output is binary data, the
    length of its JSON part (the Inference-Header-Content-Length)."""
    entries, buffers = [], []
    for out in outputs:
        array = np.ascontiguousarray(out.array, DTYPES[out.datatype])
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": array.shape}
        if out.binary:
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            entry["data"] = array.ravel()
        entries.append(entry)
    body = orjson.dumps({**header, "outputs": entries}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return body, None
    return body + b"".join(buffers), len(body)
