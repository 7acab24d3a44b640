"""The /v2 routes driven by the official client library, `tritonclient.http`, unmodified and with
its default settings, against a real `sarnn-serve` serving the tiny exported watch model.

A held-out watch recording is streamed as one sequence in chunks, with binary tensor data on and
off, and every step must match what a native /v1 session answers to the same chunks: class and
update count exactly, probabilities within 1e-5.
"""

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.service_fixtures import TINY_MODEL, LiveServer, watch_steps

pytestmark = pytest.mark.slow  # starts a sarnn-serve process

OUTPUTS = ("probabilities", "class", "updates")


@pytest.fixture(scope="module")
def recording() -> np.ndarray:
    """The start of the first held-out watch recording (tests/data), [T, 6] raw sensor values."""
    return watch_steps()


@pytest.fixture(scope="module")
def chunks(recording: np.ndarray) -> list[np.ndarray]:
    """The recording cut into chunks of 1 to 64 steps."""
    sizes = np.random.default_rng(0).integers(1, 65, len(recording))
    cuts = np.cumsum(sizes)
    return np.split(recording, cuts[cuts < len(recording)])


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(live_server.url.removeprefix("http://")) as c:
        yield c


@pytest.fixture(scope="module")
def native(live_server: LiveServer, chunks: list[np.ndarray]) -> dict[str, np.ndarray]:
    """What a /v1 session answers to the chunks, step by step."""
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        sid = c.post("/v1/sessions", json={"model": TINY_MODEL}).json()["id"]
        steps = []
        for seq, x in enumerate(chunks):
            r = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": x.tolist()})
            assert r.status_code == 200, r.text
            steps += r.json()["steps"]
        c.delete(f"/v1/sessions/{sid}")
    return {
        "probabilities": np.array([s["probabilities"] for s in steps], np.float32),
        "class": np.array([s["class"] for s in steps]),
        "updates": np.array([s["updates"] for s in steps]),
    }


def chunk_input(x: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("x", [1, *x.shape], "FP32")
    tensor.set_data_from_numpy(x[None], binary_data=binary)
    return tensor


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_model_metadata(TINY_MODEL)
    version = meta["versions"][0]
    assert client.is_model_ready(TINY_MODEL) and client.is_model_ready(TINY_MODEL, version)
    assert not client.is_model_ready(TINY_MODEL, "0") and not client.is_model_ready("nope")
    assert {"binary_tensor_data", "sequence"} <= set(client.get_server_metadata()["extensions"])
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, -1, 6]}]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        ("probabilities", "FP32"),
        ("class", "INT64"),
        ("updates", "INT32"),
        ("mask", "BOOL"),
    ]
    assert client.get_model_metadata(TINY_MODEL, version) == meta


@pytest.mark.parametrize(("binary", "sequence_id"), [(True, 1001), (False, "recording-0")])
def test_a_recording_streamed_as_a_sequence_matches_a_native_session(
    client: triton.InferenceServerClient,
    chunks: list[np.ndarray],
    native: dict[str, np.ndarray],
    binary: bool,
    sequence_id: int | str,
) -> None:
    """Binary on: the client's defaults (binary inputs, no outputs named, so all come back as
    binary data). Off: JSON inputs and each output asked for as JSON."""
    outputs = (
        None if binary else [triton.InferRequestedOutput(n, binary_data=False) for n in OUTPUTS]
    )
    got: dict[str, list[np.ndarray]] = {name: [] for name in OUTPUTS}
    for i, x in enumerate(chunks):
        result = client.infer(
            TINY_MODEL,
            [chunk_input(x, binary)],
            outputs=outputs,
            sequence_id=sequence_id,
            sequence_start=i == 0,
            sequence_end=i == len(chunks) - 1,
        )
        for name in OUTPUTS:
            got[name].append(result.as_numpy(name)[0])
    response = result.get_response()
    assert response["parameters"]["sequence_id"] == sequence_id
    assert response["parameters"]["steps"] == len(native["class"])
    classes, updates = np.concatenate(got["class"]), np.concatenate(got["updates"])
    np.testing.assert_array_equal(classes, native["class"])
    np.testing.assert_array_equal(updates, native["updates"])
    probabilities = np.concatenate(got["probabilities"])
    np.testing.assert_allclose(probabilities, native["probabilities"], rtol=0, atol=1e-5)
    with pytest.raises(InferenceServerException) as ended:
        client.infer(TINY_MODEL, [chunk_input(chunks[0], binary)], sequence_id=sequence_id)
    assert ended.value.status() == "404" and "has ended" in ended.value.message()


def test_a_retry_with_the_same_request_id_is_replayed(
    client: triton.InferenceServerClient, chunks: list[np.ndarray]
) -> None:
    sequence = {"sequence_id": 7}
    client.infer(TINY_MODEL, [chunk_input(chunks[0], True)], **sequence, sequence_start=True)
    first = client.infer(TINY_MODEL, [chunk_input(chunks[1], True)], request_id="r1", **sequence)
    again = client.infer(TINY_MODEL, [chunk_input(chunks[1], True)], request_id="r1", **sequence)
    assert first.get_response()["parameters"]["replayed"] is False
    assert again.get_response()["id"] == "r1"
    assert again.get_response()["parameters"] == {
        **first.get_response()["parameters"],
        "replayed": True,
    }
    for name in OUTPUTS:
        np.testing.assert_array_equal(again.as_numpy(name), first.as_numpy(name))


def test_masks_and_a_threshold(
    client: triton.InferenceServerClient, chunks: list[np.ndarray], live_server: LiveServer
) -> None:
    x = chunks[0]
    result = client.infer(
        TINY_MODEL,
        [chunk_input(x, True)],
        outputs=[triton.InferRequestedOutput("mask"), triton.InferRequestedOutput("updates")],
        sequence_id="masked",
        sequence_start=True,
        parameters={"threshold": 0.3},
    )
    mask, updates = result.as_numpy("mask"), result.as_numpy("updates")
    assert mask.dtype == bool and mask.shape[:2] == (1, len(x))
    np.testing.assert_array_equal(mask.sum(axis=-1), updates)
    with httpx.Client(base_url=live_server.url) as c:
        body = {"inputs": [x.tolist()], "threshold": 0.3, "include_mask": True}
        steps = c.post(f"/v1/models/{TINY_MODEL}/predict", json=body).json()["sequences"][0]
    np.testing.assert_array_equal(mask[0], np.array([s["mask"] for s in steps["steps"]], bool))


def test_errors_are_exceptions_with_status_and_message(
    client: triton.InferenceServerClient, chunks: list[np.ndarray]
) -> None:
    x = [chunk_input(chunks[0], True)]
    cases = [
        (lambda: client.infer(TINY_MODEL, x, sequence_id="never-started"), "404", "not open"),
        (lambda: client.infer(TINY_MODEL, x, model_version="0"), "404", "version 0"),
        (lambda: client.infer("nope", x), "404", "unknown model"),
        (lambda: client.get_model_metadata("nope"), "404", "model_not_found"),
        (lambda: client.infer(TINY_MODEL, x, parameters={"threshold": 2.0}), "422", "threshold"),
    ]
    for call, status, words in cases:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == status
        assert isinstance(info.value.message(), str) and words in str(info.value)
