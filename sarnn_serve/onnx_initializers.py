"""Read the initializers (weights) of an ONNX model file without the onnx package.

The serving runtime has onnxruntime, which runs a graph but does not hand out its weights; the
native kernel needs them. An ONNX file is a protobuf `ModelProto`; this walks its wire format
down to `graph.initializer` and decodes float32 and int64 tensors (raw or typed data) and bool
tensors (raw data).
"""

import math
from pathlib import Path

import numpy as np

MODEL_GRAPH, GRAPH_INITIALIZER = 7, 5
TENSOR_DIMS, TENSOR_TYPE, TENSOR_FLOATS, TENSOR_INT64S, TENSOR_NAME, TENSOR_RAW = 1, 2, 4, 7, 8, 9
DTYPES = {1: np.dtype("<f4"), 7: np.dtype("<i8"), 9: np.dtype("?")}
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class OnnxFormatError(ValueError):
    """The file is not an ONNX model this reader understands."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) of each field: an int for VARINT, else the field's
    bytes (a memoryview)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (LENGTH, FIXED64, FIXED32):
            if wire == LENGTH:
                size, pos = _varint(buf, pos)
            else:
                size = 8 if wire == FIXED64 else 4
            if pos + size > len(buf):
                raise OnnxFormatError("truncated field")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise OnnxFormatError(f"unsupported wire type {wire}")
        yield number, wire, value


def _packed_varints(buf: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos)
        values.append(value)
    return values


def _tensor(buf: memoryview) -> tuple[str, np.ndarray | None]:
    dims: list[int] = []
    name, dtype, raw, typed = "", 0, None, []
    for number, wire, value in _fields(buf):
        if number == TENSOR_DIMS:
            dims += _packed_varints(value) if wire == LENGTH else [value]
        elif number == TENSOR_TYPE:
            dtype = value
        elif number == TENSOR_NAME:
            name = bytes(value).decode()
        elif number == TENSOR_RAW:
            raw = bytes(value)
        elif number == TENSOR_FLOATS:
            typed.append(np.frombuffer(value, "<f4"))  # packed, or one FIXED32 value
        elif number == TENSOR_INT64S:
            ints = _packed_varints(value) if wire == LENGTH else [value]
            typed.append(np.array(ints, np.uint64).view(np.int64))
    if dtype not in DTYPES:
        return name, None
    if raw is not None:
        if len(raw) % DTYPES[dtype].itemsize:
            raise OnnxFormatError(f"tensor {name!r}: raw data of {len(raw)} bytes")
        array = np.frombuffer(raw, DTYPES[dtype])
    elif typed:
        array = np.concatenate([np.asarray(t) for t in typed]).astype(DTYPES[dtype])
    else:
        array = np.empty(0, DTYPES[dtype])
    if array.size != math.prod(dims):  # exact: int64 arithmetic would wrap for huge dims
        raise OnnxFormatError(f"tensor {name!r}: {array.size} values for shape {dims}")
    return name, array.reshape(dims).astype(DTYPES[dtype].newbyteorder("="))


def read_initializers(path: Path) -> dict[str, np.ndarray]:
    """Float32, int64 and bool initializers of the ONNX model at `path`, by name (others are
    left out)."""
    model = memoryview(path.read_bytes())
    graphs = [
        value for number, wire, value in _fields(model) if (number, wire) == (MODEL_GRAPH, LENGTH)
    ]
    if len(graphs) != 1:
        raise OnnxFormatError(f"{path}: no graph")
    tensors, names = {}, set()
    for number, wire, value in _fields(graphs[0]):
        if (number, wire) == (GRAPH_INITIALIZER, LENGTH):
            name, array = _tensor(value)
            if name in names:  # which one a runtime reads is up to it
                raise OnnxFormatError(f"initializer {name!r} defined twice")
            names.add(name)
            if array is not None:
                tensors[name] = array
    return tensors
