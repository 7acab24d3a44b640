"""The Open Inference Protocol routes (/v2) against the native API (/v1).

In-process: an app with the native and /v2 routers over a data plane with the fake engine of
test_unit_batcher, a MemoryStore (with a clock the tests move) and real settings; requests are
built and answers parsed here by hand (not with sarnn_serve.api.codec), in JSON and as binary
tensor data. The slow tests at the end run a real `sarnn-serve` on the tiny exported model.
"""

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from sarnn_serve.api import errors, models, sessions, v2, v2_repository, v2_route
from sarnn_serve.api.limits import BodyLimit
from sarnn_serve.auth import KeyRing
from sarnn_serve.metrics import Monitor, PromMetrics
from sarnn_serve.registry import LoadedModel, Registry
from sarnn_serve.service import DataPlane
from sarnn_serve.settings import Settings
from sarnn_serve.store.memory import MemoryStore
from tests.fixtures import CARD, MODEL, FakeEngine
from tests.service_fixtures import TINY_MODEL, LiveServer

HEADER = "Inference-Header-Content-Length"
INFER = f"/v2/models/{MODEL}/infer"
NUMPY = {"FP32": "<f4", "INT64": "<i8", "INT32": "<i4", "BOOL": "?"}
F, H, C = CARD.n_features, CARD.hidden, CARD.n_classes


class Clock:
    """The store's clock, moved by the tests."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Served:
    """A started data plane behind an in-process app, with an httpx client per caller."""

    def __init__(self, plane: DataPlane, clock: Clock) -> None:
        self.plane = plane
        self.clock = clock
        self.app = FastAPI(title="sarnn-serve", version="0.1.0")
        self.app.state.plane = plane
        errors.install(self.app)
        for module in (sessions, models, v2_repository, v2):
            self.app.include_router(module.router)
        self.app.add_middleware(
            BodyLimit,
            max_bytes=plane.settings.max_body_bytes,
            formats={v2_route.PREFIX: v2_route.error_body},
        )

    def client(self, host: str = "10.0.0.1", key: str | None = None) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        transport = httpx.ASGITransport(self.app, client=(host, 4000))
        return httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers)

    @property
    def engine_calls(self) -> int:
        return len(self.plane.registry.get(MODEL).engine.calls)


MakeServed = Callable[..., Awaitable[Served]]


@pytest.fixture
async def make_served() -> AsyncIterator[MakeServed]:
    """Factory: make_served(max_sessions=100, **settings) -> Served."""
    executor = ThreadPoolExecutor(1)
    planes: list[DataPlane] = []

    async def make(max_sessions: int = 100, **overrides: Any) -> Served:
        settings = Settings(session_ttl_s=60, **overrides)
        clock = Clock()
        plane = DataPlane(
            settings,
            Registry({MODEL: LoadedModel(CARD, FakeEngine())}),
            MemoryStore(max_sessions, clock=clock),
            Monitor(PromMetrics(), {MODEL: CARD.hidden}),
            executor,
            keyring=KeyRing.from_settings(settings),
        )
        await plane.start()
        planes.append(plane)
        return Served(plane, clock)

    yield make
    for plane in planes:
        await plane.stop()
    executor.shutdown()


@pytest.fixture
async def served(make_served: MakeServed) -> Served:
    return await make_served()


@pytest.fixture
async def client(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with served.client() as c:
        yield c


# --- requests and answers, by hand ---------------------------------------------------------------


def recording(steps: int, seed: int = 0, rows: int = 1) -> np.ndarray:
    """Inputs [rows, steps, F] float32."""
    return np.random.default_rng(seed).standard_normal((rows, steps, F)).astype(np.float32)


def request(
    x: np.ndarray,
    *,
    binary: bool = False,
    outputs: list[Any] | None = None,
    request_id: str | None = None,
    **parameters: Any,
) -> tuple[bytes, dict[str, str]]:
    """An inference request body for input x (JSON data, or binary after the JSON header) and
    the headers it needs; `outputs` are names or (name, binary_data) pairs."""
    tensor: dict[str, Any] = {"name": "x", "shape": list(x.shape), "datatype": "FP32"}
    if binary:
        tensor["parameters"] = {"binary_data_size": x.nbytes}
    else:
        tensor["data"] = x.ravel().tolist()
    head: dict[str, Any] = {"inputs": [tensor]}
    if request_id is not None:
        head["id"] = request_id
    if parameters:
        head["parameters"] = parameters
    if outputs is not None:
        head["outputs"] = [
            {"name": o}
            if isinstance(o, str)
            else {"name": o[0], "parameters": {"binary_data": o[1]}}
            for o in outputs
        ]
    text = json.dumps(head).encode()
    if not binary:
        return text, {}
    return text + x.astype("<f4").tobytes(), {HEADER: str(len(text))}


def answer(r: httpx.Response) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON header of a 200 answer and its output tensors (JSON or binary data)."""
    assert r.status_code == 200, r.text
    length = r.headers.get(HEADER)
    head = json.loads(r.content[: int(length)] if length else r.content)
    rest, at = (r.content[int(length) :] if length else b""), 0
    arrays = {}
    for out in head["outputs"]:
        dtype, shape = NUMPY[out["datatype"]], out["shape"]
        size = out.get("parameters", {}).get("binary_data_size")
        if size is None:
            arrays[out["name"]] = np.array(out["data"], dtype).reshape(shape)
        else:
            arrays[out["name"]] = np.frombuffer(rest[at : at + size], dtype).reshape(shape)
            at += size
    assert at == len(rest)
    return head, arrays


async def infer(
    c: httpx.AsyncClient, x: np.ndarray, path: str = INFER, **kw: Any
) -> httpx.Response:
    body, headers = request(x, **kw)
    return await c.post(path, content=body, headers=headers)


def error(r: httpx.Response, status: int, *words: str) -> str:
    """The message of a protocol error body {"error": "<string>"} with `status`."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for word in words:
        assert word in body["error"], body
    return body["error"]


async def native_steps(
    c: httpx.AsyncClient, chunks: list[np.ndarray], threshold: float | None = None, mask=False
) -> tuple[dict[str, np.ndarray], dict]:
    """The steps a /v1 session answers to `chunks` [T_i, F] as arrays, and its summary."""
    r = await c.post("/v1/sessions", json={} if threshold is None else {"threshold": threshold})
    sid = r.json()["id"]
    steps = []
    for seq, x in enumerate(chunks):
        body = {"seq": seq, "inputs": x.tolist(), "include_mask": mask}
        r = await c.post(f"/v1/sessions/{sid}/chunks", json=body)
        assert r.status_code == 200, r.text
        steps += r.json()["steps"]
    summary = (await c.delete(f"/v1/sessions/{sid}")).json()
    return arrays_of(steps), summary


def arrays_of(steps: list[dict]) -> dict[str, np.ndarray]:
    arrays = {
        "probabilities": np.array([[s["probabilities"] for s in steps]], np.float32),
        "class": np.array([[s["class"] for s in steps]]),
        "updates": np.array([[s["updates"] for s in steps]]),
    }
    if "mask" in steps[0]:
        arrays["mask"] = np.array([[s["mask"] for s in steps]], bool)
    return arrays


def assert_same_steps(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    """Classes, update counts and masks exactly, probabilities within 1e-5."""
    assert set(got) == set(ref)
    np.testing.assert_array_equal(got["class"], ref["class"])
    np.testing.assert_array_equal(got["updates"], ref["updates"])
    np.testing.assert_allclose(got["probabilities"], ref["probabilities"], rtol=0, atol=1e-5)
    if "mask" in ref:
        np.testing.assert_array_equal(got["mask"], ref["mask"])


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts], axis=1) for name in parts[0]}


def totals(parameters: dict) -> dict:
    keys = ("steps", "updates", "update_rate", "macs_dense", "macs_selective", "macs_saved")
    return {k: parameters[k] for k in keys}


# --- health and metadata -------------------------------------------------------------------------


async def test_health_and_server_metadata(client: httpx.AsyncClient) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready"):
        r = await client.get(path)
        assert (r.status_code, r.content) == (200, b""), path
    meta = (await client.get("/v2")).json()
    assert meta["name"] == "sarnn-serve" and meta["version"] == "0.1.0"
    assert {"binary_tensor_data", "sequence", "sequence(string_id)"} <= set(meta["extensions"])


@pytest.mark.parametrize("versioned", [False, True])
async def test_model_metadata_names_datatypes_and_shapes(
    client: httpx.AsyncClient, versioned: bool
) -> None:
    path = f"/v2/models/{MODEL}" + (f"/versions/{CARD.version}" if versioned else "")
    meta = (await client.get(path)).json()
    assert meta["name"] == MODEL and meta["versions"] == [CARD.version]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, -1, F]}]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1, C]},
        {"name": "class", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "updates", "datatype": "INT32", "shape": [-1, -1]},
        {"name": "mask", "datatype": "BOOL", "shape": [-1, -1, H]},
    ]


async def test_another_version_or_model_is_not_found(client: httpx.AsyncClient) -> None:
    x = recording(3)
    for path in (
        f"/v2/models/{MODEL}/versions/v0",
        f"/v2/models/{MODEL}/versions/v0/ready",
        "/v2/models/nope",
        "/v2/models/nope/ready",
    ):
        error(await client.get(path), 404, "model_not_found")
    r = await infer(client, x, f"/v2/models/{MODEL}/versions/v0/infer")
    assert "v0" in error(r, 404, "model_not_found", f"version {CARD.version}")
    _, arrays = answer(await infer(client, x, f"/v2/models/{MODEL}/versions/{CARD.version}/infer"))
    assert arrays["class"].shape == (1, 3)


async def test_server_ready_fails_while_the_store_is_down(
    served: Served, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sarnn_serve.errors import StoreUnavailable

    async def down() -> dict:
        raise StoreUnavailable("redis is unreachable")

    monkeypatch.setattr(served.plane.store, "active", down)
    error(await client.get("/v2/health/ready"), 503, "store_unavailable", "unreachable")
    assert (await client.get("/v2/health/live")).status_code == 200


# --- stateless inference -------------------------------------------------------------------------


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
async def test_stateless_matches_predict_in_json_and_binary(
    client: httpx.AsyncClient, binary_in: bool, binary_out: bool
) -> None:
    x = recording(7, rows=3)
    r = await infer(client, x, binary=binary_in, binary_data_output=binary_out)
    assert (HEADER in r.headers) is binary_out
    assert r.headers["content-type"] == (
        "application/octet-stream" if binary_out else "application/json"
    )
    head, arrays = answer(r)
    assert head["model_name"] == MODEL and head["model_version"] == CARD.version
    assert "id" not in head
    assert [o["name"] for o in head["outputs"]] == ["probabilities", "class", "updates"]
    predicted = await client.post(f"/v1/models/{MODEL}/predict", json={"inputs": x.tolist()})
    sequences = predicted.json()["sequences"]
    ref = {k: np.concatenate([arrays_of(s["steps"])[k] for s in sequences]) for k in arrays}
    assert_same_steps(arrays, ref)
    assert arrays["probabilities"].shape == (3, 7, C) and arrays["class"].dtype == np.int64
    assert arrays["updates"].dtype == np.int32
    assert totals(head["parameters"]) == predicted.json()["usage"]


async def test_no_content_type_and_any_content_type_are_accepted(
    client: httpx.AsyncClient,
) -> None:
    x = recording(4)
    for binary in (False, True):
        body, headers = request(x, binary=binary)
        plain = client.build_request("POST", INFER, content=body, headers=headers)
        assert "content-type" not in plain.headers
        first = answer(await client.send(plain))
        typed = {**headers, "content-type": "text/plain"}
        again = answer(await client.post(INFER, content=body, headers=typed))
        assert_same_steps(first[1], again[1])


async def test_outputs_chosen_one_by_one_and_binary_per_output(client: httpx.AsyncClient) -> None:
    x = recording(5)
    ref = answer(await infer(client, x, outputs=["probabilities", "class", "updates", "mask"]))[1]
    assert ref["mask"].shape == (1, 5, H) and ref["mask"].dtype == bool
    r = await infer(
        client, x, outputs=[("mask", True), "class", ("updates", False)], binary_data_output=True
    )
    head, arrays = answer(r)
    assert [o["name"] for o in head["outputs"]] == ["mask", "class", "updates"]
    assert ["data" in o for o in head["outputs"]] == [False, False, True]
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 5 * H}
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], ref[name])


async def test_threshold_of_a_stateless_request(client: httpx.AsyncClient) -> None:
    x = recording(9)
    r = await client.post(
        f"/v1/models/{MODEL}/predict", json={"inputs": x.tolist(), "threshold": 0.2}
    )
    ref = arrays_of(r.json()["sequences"][0]["steps"])
    _, arrays = answer(await infer(client, x, threshold=0.2))
    assert_same_steps(arrays, ref)
    _, default = answer(await infer(client, x))
    assert not np.array_equal(default["updates"], arrays["updates"])


# --- sequences -----------------------------------------------------------------------------------


async def test_a_sequence_in_chunks_matches_a_native_session(client: httpx.AsyncClient) -> None:
    x = recording(20)[0]
    chunks = [x[:6], x[6:7], x[7:15], x[15:]]
    ref, summary = await native_steps(client, chunks)
    parts = []
    for i, part in enumerate(chunks):
        flags = {"sequence_start": i == 0, "sequence_end": i == len(chunks) - 1}
        r = await infer(client, part[None], binary=i % 2 == 1, sequence_id=42, **flags)
        head, arrays = answer(r)
        parts.append(arrays)
        assert head["parameters"]["sequence_id"] == 42
        assert head["parameters"]["replayed"] is False
        assert head["parameters"]["steps"] == sum(len(c) for c in chunks[: i + 1])
    assert_same_steps(concat(parts), ref)
    assert totals(head["parameters"]) == totals(summary)


async def test_response_parameters_are_the_sessions_totals(client: httpx.AsyncClient) -> None:
    x = recording(8)
    head, _ = answer(await infer(client, x, sequence_id="s", sequence_start=True))
    sid = head["parameters"]["session_id"]
    summary = (await client.get(f"/v1/sessions/{sid}")).json()
    assert totals(head["parameters"]) == totals(summary)
    assert summary["next_seq"] == 1 and summary["model"] == MODEL


async def test_end_deletes_the_sequence(client: httpx.AsyncClient) -> None:
    x = recording(4)
    head, _ = answer(await infer(client, x, sequence_id=5, sequence_start=True))
    sid = head["parameters"]["session_id"]
    answer(await infer(client, x, sequence_id=5, sequence_end=True))
    assert (await client.get(f"/v1/sessions/{sid}")).json()["error"]["code"] == "session_deleted"
    r = await infer(client, x, sequence_id=5)
    error(r, 404, "session_deleted", "sequence_id 5 has ended")
    answer(await infer(client, x, sequence_id=6, sequence_start=True, sequence_end=True))
    error(await infer(client, x, sequence_id=6), 404, "session_deleted")


async def test_an_unknown_sequence_says_so(client: httpx.AsyncClient) -> None:
    r = await infer(client, recording(2), sequence_id=77)
    error(r, 404, "session_not_found", "sequence_id 77 is not open", "sequence_start")
    error(await infer(client, recording(2), sequence_id="abc"), 404, "'abc' is not open")


async def test_an_expired_sequence_says_so(served: Served, client: httpx.AsyncClient) -> None:
    x = recording(3)
    answer(await infer(client, x, sequence_id=1, sequence_start=True))
    served.clock.now += 61
    error(await infer(client, x, sequence_id=1), 404, "session_expired", "expired", "idle")
    served.clock.now += 61
    await served.plane.sweep()
    error(await infer(client, x, sequence_id=1), 404, "session_expired")


async def test_an_evicted_sequence_says_so(make_served: MakeServed) -> None:
    served = await make_served(max_sessions=2)
    x = recording(3)
    async with served.client() as c:
        for sequence in (1, 2, 3):
            answer(await infer(c, x, sequence_id=sequence, sequence_start=True))
        error(await infer(c, x, sequence_id=1), 404, "session_evicted", "evicted")
        answer(await infer(c, x, sequence_id=3))


async def test_start_on_a_live_sequence_restarts_it(client: httpx.AsyncClient) -> None:
    x = recording(12)[0]
    first = answer(await infer(client, x[None, :5], sequence_id=9, sequence_start=True))
    answer(await infer(client, x[None, 5:], sequence_id=9))
    again = answer(await infer(client, x[None, :5], sequence_id=9, sequence_start=True))
    assert_same_steps(again[1], first[1])
    assert again[0]["parameters"]["steps"] == 5
    assert again[0]["parameters"]["session_id"] == first[0]["parameters"]["session_id"]


async def test_ids_are_per_type_and_caller(served: Served) -> None:
    """42 and "42" are two sequences; another client (another key, with keys on) has its own."""
    x = recording(10)[0]
    async with served.client("10.0.0.1") as a, served.client("10.0.0.2") as b:
        answer(await infer(a, x[None, :4], sequence_id=42, sequence_start=True))
        answer(await infer(a, x[None, :4], sequence_id="42", sequence_start=True))
        answer(await infer(b, x[None, :2], sequence_id=42, sequence_start=True))
        head, _ = answer(await infer(a, x[None, 4:], sequence_id=42))
        assert head["parameters"]["steps"] == 10
        head, _ = answer(await infer(a, x[None, 4:5], sequence_id="42"))
        assert head["parameters"]["steps"] == 5
        head, _ = answer(await infer(b, x[None, 2:], sequence_id=42))
        assert head["parameters"]["steps"] == 10


async def test_threshold_is_set_at_start(client: httpx.AsyncClient) -> None:
    x = recording(16)[0]
    chunks = [x[:10], x[10:]]
    ref, _ = await native_steps(client, chunks, threshold=0.2)
    start = await infer(client, chunks[0][None], sequence_id=3, sequence_start=True, threshold=0.2)
    parts = [answer(start)[1], answer(await infer(client, chunks[1][None], sequence_id=3))[1]]
    assert_same_steps(concat(parts), ref)
    default, _ = await native_steps(client, chunks)
    assert not np.array_equal(default["updates"], ref["updates"])
    r = await infer(client, chunks[1][None], sequence_id=3, threshold=0.2)
    error(r, 422, "parameters.threshold", "when a sequence starts")


async def test_masks_only_when_named(client: httpx.AsyncClient) -> None:
    x = recording(6)[0]
    ref, _ = await native_steps(client, [x], mask=True)
    names = ["probabilities", "class", "updates", "mask"]
    head, _ = answer(await infer(client, x[None], sequence_id=4, sequence_start=True))
    assert [o["name"] for o in head["outputs"]] == names[:3]
    r = await infer(client, x[None], sequence_id=4, sequence_start=True, outputs=names)
    assert_same_steps(answer(r)[1], ref)


# --- retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
async def test_a_retry_by_request_id_replays_its_answer(served: Served, binary: bool) -> None:
    x = recording(9)[0]
    async with served.client() as c:
        first = await infer(c, x[None, :4], binary=binary, request_id="a", sequence_id=8,
                            sequence_start=True)  # fmt: skip
        again = await infer(c, x[None, :4], binary=binary, request_id="a", sequence_id=8,
                            sequence_start=True)  # fmt: skip
        assert answer(again)[0]["parameters"]["replayed"] is True
        assert again.content == first.content.replace(b'"replayed":false', b'"replayed":true')
        second = await infer(c, x[None, 4:], binary=binary, request_id="b", sequence_id=8)
        calls = served.engine_calls
        for _ in range(2):
            retry = await infer(c, x[None, 4:], binary=binary, request_id="b", sequence_id=8)
            assert retry.content == second.content.replace(b'"replayed":false', b'"replayed":true')
        assert served.engine_calls == calls
        head, _ = answer(retry)
        assert head["id"] == "b" and head["parameters"]["steps"] == 9
        summary = (await c.get(f"/v1/sessions/{head['parameters']['session_id']}")).json()
        assert summary["next_seq"] == 2 and summary["steps"] == 9


async def test_a_retry_in_json_replays_a_binary_request(client: httpx.AsyncClient) -> None:
    x = recording(5)
    first = await infer(client, x, binary=True, request_id="r", sequence_id=1, sequence_start=True)
    again = await infer(client, x, request_id="r", sequence_id=1, sequence_start=True)
    assert answer(again)[0]["parameters"]["replayed"] is True
    assert_same_steps(answer(again)[1], answer(first)[1])


async def test_a_retry_with_other_inputs_or_outputs_is_refused(client: httpx.AsyncClient) -> None:
    x = recording(8)[0]
    answer(await infer(client, x[None, :4], request_id="a", sequence_id=2, sequence_start=True))
    second = answer(await infer(client, x[None, 4:6], request_id="b", sequence_id=2))
    r = await infer(client, x[None, 4:6] + 1, request_id="b", sequence_id=2)
    error(r, 409, "retry_mismatch")
    r = await infer(client, x[None, 4:6], request_id="b", sequence_id=2, outputs=["mask"])
    error(r, 409, "retry_mismatch")
    head, arrays = answer(await infer(client, x[None, 4:6], request_id="b", sequence_id=2))
    assert head["parameters"]["replayed"] is True
    assert_same_steps(arrays, second[1])


async def test_without_an_id_or_with_a_new_one_a_request_is_applied(
    client: httpx.AsyncClient,
) -> None:
    x = recording(6)[0]
    answer(await infer(client, x[None, :2], sequence_id=3, sequence_start=True))
    for rid in (None, None, "c", "d"):
        head, _ = answer(await infer(client, x[None, :1], request_id=rid, sequence_id=3))
        assert head["parameters"]["replayed"] is False
    assert head["parameters"]["steps"] == 6
    head, _ = answer(await infer(client, x[None, :1], request_id="c", sequence_id=3))
    assert head["parameters"]["replayed"] is False and head["parameters"]["steps"] == 7


async def test_a_native_chunk_after_a_request_ends_its_retry(client: httpx.AsyncClient) -> None:
    x = recording(4)
    head, _ = answer(await infer(client, x, request_id="a", sequence_id=4, sequence_start=True))
    sid = head["parameters"]["session_id"]
    r = await client.post(f"/v1/sessions/{sid}/chunks", json={"seq": 1, "inputs": x[0].tolist()})
    assert r.status_code == 200, r.text
    head, _ = answer(await infer(client, x, request_id="a", sequence_id=4))
    assert head["parameters"]["replayed"] is False and head["parameters"]["steps"] == 12


async def test_a_retried_start_after_more_chunks_restarts(client: httpx.AsyncClient) -> None:
    x = recording(4)
    answer(await infer(client, x, request_id="a", sequence_id=6, sequence_start=True))
    answer(await infer(client, x, request_id="b", sequence_id=6))
    head, _ = answer(await infer(client, x, request_id="a", sequence_id=6, sequence_start=True))
    assert head["parameters"]["replayed"] is False and head["parameters"]["steps"] == 4


# --- errors --------------------------------------------------------------------------------------


def raw(head: dict, tail: bytes = b"", length: int | None = None) -> tuple[bytes, dict]:
    text = json.dumps(head).encode()
    headers = {HEADER: str(len(text) if length is None else length)} if tail or length else {}
    return text + tail, headers


X = {"name": "x", "shape": [1, 2, F], "datatype": "FP32", "data": [0.5] * (2 * F)}
BINARY_X = {"name": "x", "shape": [1, 2, F], "datatype": "FP32",
            "parameters": {"binary_data_size": 8 * F}}  # fmt: skip
FLOATS = np.full(2 * F, 0.5, "<f4").tobytes()

BAD: dict[str, tuple[tuple[bytes, dict], int, str]] = {
    "not JSON": ((b"{", {}), 422, "invalid_json"),
    "not an object": ((b"[1]", {}), 422, "body: must be a JSON object"),
    "no inputs": (raw({}), 422, "inputs"),
    "empty inputs": (raw({"inputs": []}), 422, "inputs"),
    "an unknown field": (raw({"inputs": [X], "input": 1}), 422, "input"),
    "another input name": (raw({"inputs": [{**X, "name": "INPUT"}]}), 422, "takes one input, 'x'"),
    "two inputs": (raw({"inputs": [X, {**X, "name": "y"}]}), 422, "takes one input"),
    "FP64": (raw({"inputs": [{**X, "datatype": "FP64"}]}), 422, "must be FP32"),
    "BYTES": (raw({"inputs": [{**X, "datatype": "BYTES"}]}), 422, "must be FP32"),
    "two dimensions": (raw({"inputs": [{**X, "shape": [2, F]}]}), 422, "[N, T, 3]"),
    "other features": (raw({"inputs": [{**X, "shape": [1, 3, 2]}]}), 422, "[N, T, 3]"),
    "no steps": (raw({"inputs": [{**X, "shape": [1, 0, F], "data": []}]}), 422, "T >= 1"),
    "a negative dimension": (raw({"inputs": [{**X, "shape": [1, -2, F]}]}), 422, "shape"),
    "too few elements": (raw({"inputs": [{**X, "data": [0.5]}]}), 422, "1 elements"),
    "a string element": (raw({"inputs": [{**X, "data": ["1"] * 2 * F}]}), 422, "data[0]"),
    "a boolean element": (
        raw({"inputs": [{**X, "data": [True] * 2 * F}]}),
        422,
        "must be a number",
    ),
    "out of bounds": (raw({"inputs": [{**X, "data": [1e10] * 2 * F}]}), 422, "finite number"),
    "no data": (raw({"inputs": [{k: v for k, v in X.items() if k != "data"}]}), 422, "required"),
    "binary too short": (raw({"inputs": [BINARY_X]}, FLOATS[:-4]), 422, "run past"),
    "binary too long": (raw({"inputs": [BINARY_X]}, FLOATS + b"\0"), 422, "belong to none"),
    "binary and data": (raw({"inputs": [{**BINARY_X, "data": [1]}]}, FLOATS), 422, "not allowed"),
    "header length past the body": (raw({"inputs": [X]}, b"", 10**6), 422, HEADER),
    "header length not a number": (
        (json.dumps({"inputs": [X]}).encode(), {HEADER: "x"}),
        422,
        HEADER,
    ),
    "a raw binary request": ((FLOATS, {HEADER: "0"}), 400, "raw binary request"),
    "an unknown output": (raw({"inputs": [X], "outputs": [{"name": "y"}]}), 422, "outputs[0]"),
    "classification": (
        raw({"inputs": [X], "outputs": [{"name": "class", "parameters": {"classification": 2}}]}),
        400,
        "classification: not supported",
    ),
    "shared memory": (
        raw({"inputs": [{**X, "parameters": {"shared_memory_region": "r"}}]}),
        400,
        "shared_memory_region: not supported",
    ),
    "a boolean sequence id": (
        raw({"inputs": [X], "parameters": {"sequence_id": True}}),
        422,
        "parameters.sequence_id: must be an unsigned 64-bit integer or a string",
    ),
    "a negative sequence id": (
        raw({"inputs": [X], "parameters": {"sequence_id": -1}}),
        422,
        "parameters.sequence_id",
    ),
    "a start without a sequence id": (
        raw({"inputs": [X], "parameters": {"sequence_start": True}}),
        422,
        "parameters.sequence_start: needs a sequence_id",
    ),
    "an end with sequence id 0": (
        raw({"inputs": [X], "parameters": {"sequence_id": 0, "sequence_end": True}}),
        422,
        "parameters.sequence_end",
    ),
    "a threshold of 1": (
        raw({"inputs": [X], "parameters": {"threshold": 1.0}}),
        422,
        "parameters.threshold",
    ),
    "a batch of a sequence": (
        raw(
            {
                "inputs": [{**X, "shape": [2, 1, F]}],
                "parameters": {"sequence_id": 1, "sequence_start": True},
            }
        ),
        400,
        "batches of several sequences are not supported",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_a_bad_request_gets_a_string_error_and_changes_nothing(
    served: Served, client: httpx.AsyncClient, case: str
) -> None:
    (body, headers), status, words = BAD[case]
    x = recording(3)
    answer(await infer(client, x, sequence_id=1, sequence_start=True))
    calls = served.engine_calls
    error(await client.post(INFER, content=body, headers=headers), status, words)
    assert served.engine_calls == calls
    head, _ = answer(await infer(client, x, sequence_id=1))
    assert head["parameters"]["steps"] == 6


async def test_a_rejected_start_leaves_the_live_sequence(client: httpx.AsyncClient) -> None:
    x = recording(3)
    answer(await infer(client, x, sequence_id=1, sequence_start=True))
    bad = np.full_like(x, 1e10)
    error(await infer(client, bad, sequence_id=1, sequence_start=True), 422, "finite")
    head, _ = answer(await infer(client, x, sequence_id=1))
    assert head["parameters"]["steps"] == 6


async def test_limits_answer_with_string_errors(make_served: MakeServed) -> None:
    served = await make_served(max_chunk_steps=8, max_body_bytes=2048)
    async with served.client() as c:
        error(await infer(c, recording(9)), 413, "payload_too_large", "limit of 8")
        body, _ = request(recording(8))

        async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(5):
                yield body

        stream = c.build_request("POST", INFER, content=streamed())
        error(await c.send(stream), 413, "payload_too_large")
        compressed = await c.post(INFER, content=body, headers={"content-encoding": "gzip"})
        error(compressed, 400, "Content-Encoding")


async def test_with_keys_a_key_is_needed_and_sequences_are_per_key(
    make_served: MakeServed,
) -> None:
    served = await make_served(api_keys="alice,bob")
    x = recording(4)
    async with served.client() as nobody, served.client(key="alice") as alice:
        for path in ("/v2", f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready"):
            error(await nobody.get(path), 401, "unauthorized")
        r = await infer(nobody, x)
        error(r, 401, "missing API key")
        assert r.headers["www-authenticate"] == "Bearer"
        error(await infer(nobody, x, "/v2/models/nope/infer"), 401)
        assert (await nobody.get("/v2/health/ready")).status_code == 200
        answer(await infer(alice, x, sequence_id=1, sequence_start=True))
        async with served.client("10.0.0.9", key="alice") as alice_elsewhere:
            head, _ = answer(await infer(alice_elsewhere, x, sequence_id=1))
            assert head["parameters"]["steps"] == 8
        async with served.client(key="bob") as bob:
            error(await infer(bob, x, sequence_id=1), 404, "session_not_found")
        error(await infer(nobody, x, sequence_id=1), 401)


async def test_quotas_answer_with_retry_after(make_served: MakeServed) -> None:
    served = await make_served(session_create_rate=0.001, session_create_burst=1)
    x = recording(2)
    async with served.client() as c:
        answer(await infer(c, x, sequence_id=1, sequence_start=True))
        r = await infer(c, x, sequence_id=2, sequence_start=True)
        error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        answer(await infer(c, x))


async def test_errors_are_counted(served: Served, client: httpx.AsyncClient) -> None:
    prom = served.plane.monitor.prom.registry.get_sample_value
    before = prom("sarnn_errors_total", {"reason": "session_not_found"}) or 0
    await infer(client, recording(2), sequence_id=99)
    assert prom("sarnn_errors_total", {"reason": "session_not_found"}) == before + 1


async def test_native_routes_keep_their_error_format(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = await client.get("/v3/sessions")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # an unknown /v2 path gets the protocol's string error (tritonclient prints it)
    r = await client.get("/v2/models/watch-tiny/config")
    assert r.status_code == 404 and r.json() == {"error": "not_found: Not Found"}
    # a method a /v2 path does not take: 405 in the protocol's format, naming the one it takes
    r = await client.get("/v2/models/watch-tiny/infer")
    assert r.status_code == 405 and r.json() == {"error": "method_not_allowed: Method Not Allowed"}
    assert r.headers["allow"] == "POST"
    r = await client.delete("/v2")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    # the repository extension's routes are /v2 routes too
    r = await client.get("/v2/repository/index")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


# --- a real server on the exported model ---------------------------------------------------------


@pytest.mark.slow
def test_a_real_server_streams_a_sequence_like_a_native_session(live_server: LiveServer) -> None:
    """Over real HTTP on the exported graph: metadata, a sequence in chunks (JSON, binary, with
    masks, a retry) against a /v1 session fed the same chunks, and a stateless request."""
    x = np.random.default_rng(3).normal(0, 1, (30, 6)).astype(np.float32)
    chunks = [x[:1], x[1:13], x[13:14], x[14:]]
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        meta = c.get(f"/v2/models/{TINY_MODEL}").json()
        card = c.get(f"/v1/models/{TINY_MODEL}").json()
        assert meta["versions"] == [card["version"]]
        assert meta["inputs"][0]["shape"] == [-1, -1, card["n_features"]]
        assert meta["outputs"][3]["shape"] == [-1, -1, card["hidden"]]
        sid = c.post("/v1/sessions", json={"threshold": 0.4}).json()["id"]
        ref = []
        for seq, part in enumerate(chunks):
            body = {"seq": seq, "inputs": part.tolist(), "include_mask": True}
            ref += c.post(f"/v1/sessions/{sid}/chunks", json=body).json()["steps"]
        path = f"/v2/models/{TINY_MODEL}/versions/{card['version']}/infer"
        names = ["probabilities", "class", "updates", "mask"]
        parts = []
        for i, part in enumerate(chunks):
            params = {"sequence_id": "watch-1", "sequence_start": i == 0}
            if i == 0:
                params["threshold"] = 0.4
            params["binary_data_output"] = i > 1
            body, headers = request(
                part[None], binary=i % 2 == 0, outputs=names, request_id=f"r{i}", **params
            )
            r = c.post(path, content=body, headers=headers)
            parts.append(answer(r)[1])
            if i == 2:
                assert c.post(path, content=body, headers=headers).content == r.content.replace(
                    b'"replayed":false', b'"replayed":true'
                )
        assert_same_steps(concat(parts), arrays_of(ref))
        stateless = answer(c.post(path, content=request(x[None])[0]))[1]
        whole = c.post(f"/v1/models/{TINY_MODEL}/predict", json={"inputs": [x.tolist()]}).json()
        assert_same_steps(stateless, arrays_of(whole["sequences"][0]["steps"]))
        r = c.post(path, content=request(x[None], sequence_id="watch-2")[0])
        error(r, 404, "session_not_found", "'watch-2' is not open")
