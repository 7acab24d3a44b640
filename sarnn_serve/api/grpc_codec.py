"""Messages of the Open Inference Protocol over gRPC (`grpc_predict_v2.proto`) to and from the
protocol's transport-free types: a ModelInferRequest becomes the same checked `InferRequest`
and raw tensor bytes an HTTP body does, so both transports share every check and error.

Input tensors come as `raw_input_contents` (one entry per input, as tritonclient sends them) or as
typed `contents`; outputs always go back as `raw_output_contents`.
"""

from typing import Any

import numpy as np

from sarnn_serve.api import grpc_predict_v2_pb2 as pb
from sarnn_serve.api.codec import DTYPES, InferRequest, OutputTensor, check_request
from sarnn_serve.errors import InvalidInput

# the field of InferTensorContents that holds each datatype's elements
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
INT64_MAX = 2**63 - 1


def parameters_of(entries: Any) -> dict[str, Any]:
    """A map<string, InferParameter> as plain values (an unset parameter as None)."""
    values = {}
    for name, parameter in entries.items():
        kind = parameter.WhichOneof("parameter_choice")
        values[name] = None if kind is None else getattr(parameter, kind)
    return values


def set_parameters(entries: Any, values: dict[str, Any]) -> None:
    """Fill a map<string, InferParameter> from plain bool, int, float and str values."""
    for name, value in values.items():
        parameter = entries[name]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            if value > INT64_MAX:
                parameter.uint64_param = value
            else:
                parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        elif isinstance(value, str):
            parameter.string_param = value
        else:
            raise TypeError(f"parameter {name!r}: {type(value).__name__} has no InferParameter")


def infer_request(msg: pb.ModelInferRequest) -> tuple[InferRequest, bytes]:
    """The checked request of a ModelInferRequest and its raw input bytes, in input order."""
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(
            "raw_input_contents",
            f"{len(raw)} entries for {len(msg.inputs)} inputs: send one per input, or none",
        )
    inputs = []
    for i, tensor in enumerate(msg.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "shape": list(tensor.shape),
            "datatype": tensor.datatype,
            "parameters": parameters_of(tensor.parameters),
        }
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"inputs[{i}].contents", "not allowed with raw_input_contents")
            entry["parameters"]["binary_data_size"] = len(raw[i])
        else:
            field = CONTENTS.get(tensor.datatype)
            entry["data"] = list(getattr(tensor.contents, field)) if field else []
        inputs.append(entry)
    data: dict[str, Any] = {
        "id": msg.id,
        "parameters": parameters_of(msg.parameters),
        "inputs": inputs,
    }
    if msg.outputs:
        data["outputs"] = [
            {"name": out.name, "parameters": parameters_of(out.parameters)} for out in msg.outputs
        ]
    return check_request(data), b"".join(raw)


def infer_response(header: dict[str, Any], outputs: list[OutputTensor]) -> pb.ModelInferResponse:
    """A ModelInferResponse of the protocol's answer, every output as raw bytes."""
    response = pb.ModelInferResponse(
        model_name=header["model_name"],
        model_version=header["model_version"],
        id=header.get("id", ""),
    )
    set_parameters(response.parameters, header["parameters"])
    for out in outputs:
        array = np.ascontiguousarray(out.array, DTYPES[out.datatype])
        response.outputs.add(name=out.name, datatype=out.datatype, shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response


def model_metadata_response(metadata: dict[str, Any]) -> pb.ModelMetadataResponse:
    """A ModelMetadataResponse of the protocol's model metadata."""
    response = pb.ModelMetadataResponse(
        name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"]
    )
    for kind in ("inputs", "outputs"):
        for tensor in metadata[kind]:
            getattr(response, kind).add(**tensor)
    return response
