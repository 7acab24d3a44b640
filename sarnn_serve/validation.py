"""Checks of client-supplied values, shared by every transport."""

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from sarnn_serve.errors import InvalidInput, InvalidJson, PayloadTooLarge, ServiceError
from sarnn_serve.schemas import MAX_ABS_INPUT

RequestModel = TypeVar("RequestModel", bound=BaseModel)


def field_name(loc: Sequence[Any]) -> str:
    """A pydantic error location as the field path clients see: inputs[1][5], body."""
    parts = [str(p) for p in loc if p != "body"]
    out = parts[0] if parts else "body"
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def error_from(errors: Sequence[dict[str, Any]]) -> ServiceError:
    """The typed error for pydantic's first complaint (JSON syntax, or a named field)."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        # a JSON syntax error's loc is ("body", <char offset>): the field at fault is the body
        return InvalidJson(str(first["msg"]))
    return InvalidInput(field_name(first.get("loc", ())), str(first["msg"]))


def validate_request(model: type[RequestModel], data: Any, strict: bool = True) -> RequestModel:
    """`data` (a decoded frame, or query parameters with strict=False) as a request model;
    the same checks and error fields as the REST bodies."""
    if isinstance(data, dict) and not all(isinstance(k, str) for k in data):
        raise InvalidInput("body", "object keys must be strings")
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise error_from(exc.errors(include_url=False)) from None


def parse_inputs(raw: Any, n_features: int, max_steps: int, field: str = "inputs") -> np.ndarray:
    """Steps into float32 [T, F]; InvalidInput names the bad part, PayloadTooLarge more than
    `max_steps` well-formed steps (a malformed request is 422 at any size: the body's size
    limit bounds the work).

    Each value is checked once. A list comes from a request body its model has validated
    (every value a finite number within MAX_ABS_INPUT: `schemas.Number`), so only its row
    lengths, which depend on the model served, are checked here; an array (binary frames, v2
    tensors) is checked here, vectorised."""
    if isinstance(raw, np.ndarray):
        arr = _checked_array(raw, n_features, field)
    elif isinstance(raw, list) and raw:
        for i, row in enumerate(raw):
            if not isinstance(row, list) or len(row) != n_features:
                got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
                raise InvalidInput(f"{field}[{i}]", f"expected {n_features} features, got {got}")
        arr = np.array(raw, np.float32)
    else:
        raise InvalidInput(field, "must be a non-empty list of steps, each a list of numbers")
    if len(arr) > max_steps:
        raise PayloadTooLarge(
            f"{field}: {len(arr)} steps exceed the limit of {max_steps} per chunk",
            field=field,
            limit=max_steps,
        )
    return arr


def _checked_array(arr: np.ndarray, n_features: int, field: str) -> np.ndarray:
    """An array of steps as float32, refused unless numeric [T, F] with T >= 1 and every value
    finite within MAX_ABS_INPUT."""
    if arr.dtype.kind not in "fiu" or arr.ndim != 2 or len(arr) == 0:
        raise InvalidInput(field, "must be a non-empty [steps, features] array of numbers")
    if arr.shape[1] != n_features:
        raise InvalidInput(field, f"expected {n_features} features per step, got {arr.shape[1]}")
    if arr.dtype.kind in "iu":  # as floats, so that abs() cannot wrap around
        arr = arr.astype(np.float64)
    # one pass: NaN fails the comparison, and anything that would overflow float32 is refused
    # before the cast (the bound is far below float32's range)
    if not np.abs(arr).max() <= MAX_ABS_INPUT:
        bad = ~np.isfinite(arr) | (np.abs(arr) > MAX_ABS_INPUT)
        i, j = np.argwhere(bad)[0]
        raise InvalidInput(
            f"{field}[{i}][{j}]", f"must be a finite number within ±{MAX_ABS_INPUT:g}"
        )
    return arr.astype(np.float32, copy=False)


def out_of_range(field: str = "inputs") -> InvalidInput:
    """The error of a chunk that drove the model out of float range (nothing is stored)."""
    return InvalidInput(field, "these values drive the model's state out of float range")
