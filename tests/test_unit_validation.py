"""Checks of client-supplied values (validation.py): which error, and which field it names."""

from typing import Any

import numpy as np
import pytest

from sarnn_serve.errors import InvalidInput, InvalidJson, PayloadTooLarge
from sarnn_serve.schemas import MAX_ABS_INPUT, ChunkRequest, StreamOpen
from sarnn_serve.validation import (
    error_from,
    field_name,
    out_of_range,
    parse_inputs,
    validate_request,
)


def invalid(raw: Any, n_features: int = 3, max_steps: int = 10, field: str = "inputs") -> str:
    """The field named by the InvalidInput that parse_inputs raises for `raw`."""
    with pytest.raises(InvalidInput) as info:
        parse_inputs(raw, n_features, max_steps, field)
    assert info.value.status == 422 and info.value.code == "invalid_input"
    return info.value.detail["field"]


def test_parse_inputs_returns_float32_steps() -> None:
    x = parse_inputs([[1, 2.5, -3], [0, 1e-3, 7], [MAX_ABS_INPUT, -MAX_ABS_INPUT, 0]], 3, 10)
    assert x.dtype == np.float32 and x.shape == (3, 3)
    np.testing.assert_array_equal(
        x, np.asarray([[1, 2.5, -3], [0, 1e-3, 7], [MAX_ABS_INPUT, -MAX_ABS_INPUT, 0]], np.float32)
    )
    arr = np.ones((4, 3), np.float64)
    assert parse_inputs(arr, 3, 10).dtype == np.float32


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([], "inputs"),
        ("abc", "inputs"),
        ({"a": 1}, "inputs"),
        ([[1, 2, 3], [1, 2]], "inputs[1]"),  # rows of different lengths
        ([[1, 2, 3], 4], "inputs[1]"),
        ([[1, 2, 3], [1, 2, 3, 4]], "inputs[1]"),
        (np.array([[1, 2, 3], [1, 2, np.nan]]), "inputs[1][2]"),
        (np.array([[1, 2, 3], [np.inf, 2, 3]]), "inputs[1][0]"),
        (np.array([[1, 2, 3], [1, -np.inf, 3]]), "inputs[1][1]"),
        (np.array([[1, 2, 3], [1, 2, MAX_ABS_INPUT * 1.01]]), "inputs[1][2]"),
        (np.array([[1, 2, 3], [-MAX_ABS_INPUT * 1.01, 2, 3]]), "inputs[1][0]"),
        (np.array([[1, 2, 3], [1, 2, 1e39]]), "inputs[1][2]"),  # finite, not in float32
        (np.array([["a", "b", "c"]]), "inputs"),
        (np.zeros((0, 3)), "inputs"),
    ],
)
def test_parse_inputs_names_the_bad_part(raw: Any, field: str) -> None:
    """Lists: their shape (their values were checked by the request model, below); arrays:
    shape and values."""
    assert invalid(raw) == field


def test_parse_inputs_names_elements_deep_in_wide_steps() -> None:
    nan = np.zeros((3, 6), np.float32)
    nan[1, 5] = np.nan
    assert invalid(nan, n_features=6) == "inputs[1][5]"


def test_parse_inputs_prefixes_the_given_field() -> None:
    assert invalid([[1, 2, 3], [1, 2]], field="inputs[2]") == "inputs[2][1]"


def test_parse_inputs_rejects_a_wrong_feature_count_of_an_array() -> None:
    assert invalid(np.zeros((2, 4), np.float32)) == "inputs"


def test_too_many_steps_is_payload_too_large() -> None:
    assert parse_inputs([[0, 0, 0]] * 10, 3, 10).shape == (10, 3)
    with pytest.raises(PayloadTooLarge) as info:
        parse_inputs([[0, 0, 0]] * 11, 3, 10)
    assert info.value.status == 413
    assert info.value.detail == {"field": "inputs", "limit": 10}
    with pytest.raises(InvalidInput):  # malformed at any size: 422 before 413
        parse_inputs([[0]] * 11, 3, 10)


def request_error(data: Any, model: type = ChunkRequest) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        validate_request(model, data)
    return info.value


def test_validate_request_accepts_a_chunk() -> None:
    chunk = validate_request(ChunkRequest, {"seq": 3, "inputs": [[1, 2.5]], "include_mask": True})
    assert chunk == ChunkRequest(seq=3, inputs=[[1.0, 2.5]], include_mask=True)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"seq": 0, "inputs": [[1, 2, 3], [1, 2, True]]}, "inputs[1][2]"),
        ({"seq": 0, "inputs": [[0.0] * 6, [1, 2, 3, 4, 5, "x"]]}, "inputs[1][5]"),
        ({"seq": 0, "inputs": [[1, float("nan")]]}, "inputs[0][1]"),
        ({"seq": 0, "inputs": [[float("inf")]]}, "inputs[0][0]"),
        ({"seq": 0, "inputs": [[1, 2], [3, -MAX_ABS_INPUT * 1.01]]}, "inputs[1][1]"),
        ({"seq": 0, "inputs": [[1], []]}, "inputs[1]"),
        ({"seq": 0, "inputs": []}, "inputs"),
        ({"seq": 0}, "inputs"),
        ({"seq": "1", "inputs": [[1]]}, "seq"),
        ({"seq": True, "inputs": [[1]]}, "seq"),
        ({"seq": -1, "inputs": [[1]]}, "seq"),
        ({"seq": 0, "inputs": [[1]], "include_mask": 1}, "include_mask"),
        ({"seq": 0, "inputs": [[1]], "bogus": 1}, "bogus"),
        ([1, 2], "body"),
        ("text", "body"),
    ],
)
def test_validate_request_names_the_field(data: Any, field: str) -> None:
    assert request_error(data).detail["field"] == field


def test_bytes_keys_are_an_invalid_body() -> None:
    err = request_error({b"seq": 0, b"inputs": [[1]]})
    assert err.detail["field"] == "body" and "strings" in err.message
    assert request_error({"seq": 0, 1: [[1]]}).detail["field"] == "body"


def test_query_parameters_are_coerced_when_not_strict() -> None:
    params = validate_request(StreamOpen, {"threshold": "0.3", "delete_on_close": "true"}, False)
    assert params.threshold == 0.3 and params.delete_on_close is True
    with pytest.raises(InvalidInput) as info:
        validate_request(StreamOpen, {"idle_timeout_s": "-1"}, strict=False)
    assert info.value.detail["field"] == "idle_timeout_s"


def test_error_from_maps_json_syntax_to_invalid_json() -> None:
    err = error_from([{"type": "json_invalid", "loc": ("body", 17), "msg": "JSON decode error"}])
    assert isinstance(err, InvalidJson)
    assert err.detail == {"field": "body"} and err.code == "invalid_json"
    err = error_from([{"type": "missing", "loc": ("body", "seq"), "msg": "Field required"}])
    assert isinstance(err, InvalidInput) and err.detail == {"field": "seq"}


@pytest.mark.parametrize(
    ("loc", "name"),
    [
        (("body", "inputs", 1, 5), "inputs[1][5]"),
        (("inputs", "1", "5"), "inputs[1][5]"),
        (("body",), "body"),
        ((), "body"),
        (("body", "card", "training", "seed"), "card.training.seed"),
    ],
)
def test_field_name(loc: tuple, name: str) -> None:
    assert field_name(loc) == name


def test_out_of_range_names_the_field() -> None:
    error = out_of_range("inputs[3]")
    assert isinstance(error, InvalidInput) and error.detail["field"] == "inputs[3]"
