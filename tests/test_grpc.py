"""The Open Inference Protocol over gRPC, driven by the official client library,
`tritonclient.grpc`, unmodified, against a real `sarnn-serve` serving the shipped watch-gru model
with API keys on.

A held-out watch recording (subject 10) is streamed chunk by chunk on Triton's ModelStreamInfer
with sequence_id / sequence_start / sequence_end, and every step must match what a native /v1
session answers to the same chunks and what the offline graph (onnxruntime on
models/watch-gru/model.onnx, the whole recording in one call) computes: class and update count
exactly, probabilities within 1e-5.
"""

import importlib.util
import queue
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from sarnn_serve.api import grpc_predict_v2_pb2 as pb
from sarnn_serve.api import grpc_predict_v2_pb2_grpc as pb_grpc
from sarnn_serve.api.app import create_app
from sarnn_serve.api.grpc_service import grpc_status, peer_host
from sarnn_serve.errors import ServiceError
from sarnn_serve.results import softmax
from sarnn_serve.settings import Settings
from tests.service_fixtures import SHIPPED_MODELS as DEFAULT_MODEL_DIR
from tests.service_fixtures import LiveServer, free_port, start_server, stop_server, watch_steps

pytestmark = pytest.mark.slow  # starts sarnn-serve processes

MODEL = "watch-gru"
OUTPUTS = ("probabilities", "class", "updates")
ALICE, BOB = "alice-key", "bob-key"
TIMEOUT = 30
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding only the shipped watch-gru (a link to it)."""
    root = tmp_path_factory.mktemp("grpc-models")
    (root / MODEL).symlink_to(DEFAULT_MODEL_DIR / MODEL, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(
    models: Path, grpc_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """sarnn-serve with keys on, serving gRPC on `grpc_port`."""
    env = {"SARNN_GRPC_PORT": str(grpc_port), "SARNN_API_KEYS": f"{ALICE},{BOB}"}
    live = start_server(models, tmp_path_factory.mktemp("grpc"), env)
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def client(server: LiveServer, grpc_port: int) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as c:
        yield c


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


def answers_of(steps: list[dict]) -> dict[str, np.ndarray]:
    return {
        "probabilities": np.array([s["probabilities"] for s in steps], np.float32),
        "class": np.array([s["class"] for s in steps]),
        "updates": np.array([s["updates"] for s in steps]),
    }


@pytest.fixture(scope="module")
def native(server: LiveServer, chunks: list[np.ndarray]) -> dict[str, np.ndarray]:
    """What a /v1 session answers to the chunks, step by step."""
    auth = {"authorization": f"Bearer {ALICE}"}
    with httpx.Client(base_url=server.url, timeout=TIMEOUT, headers=auth) as c:
        sid = c.post("/v1/sessions", json={"model": MODEL}).json()["id"]
        steps = []
        for seq, x in enumerate(chunks):
            r = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": x.tolist()})
            assert r.status_code == 200, r.text
            steps += r.json()["steps"]
        c.delete(f"/v1/sessions/{sid}")
    return answers_of(steps)


@pytest.fixture(scope="module")
def offline(recording: np.ndarray) -> dict[str, np.ndarray]:
    """The offline graph on the whole recording at once, from a zero state."""
    graph = ort.InferenceSession(
        str(DEFAULT_MODEL_DIR / MODEL / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    state = np.zeros((1, graph.get_inputs()[1].shape[1]), np.float32)
    logits, updates, _ = graph.run(None, {"x": recording[None], "state": state})
    return {
        "probabilities": softmax(logits[0]),
        "class": logits[0].argmax(-1),
        "updates": updates[0].sum(-1),
    }


def chunk_input(x: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("x", [1, *x.shape], "FP32")
    tensor.set_data_from_numpy(x[None])
    return tensor


def parameters(result: triton.InferResult) -> dict[str, Any]:
    """A response's parameters as plain values."""
    params = result.get_response().parameters
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in params.items()}


def keyed(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def assert_same_steps(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(got["class"], want["class"])
    np.testing.assert_array_equal(got["updates"], want["updates"])
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=0, atol=1e-5)


class Stream:
    """A tritonclient.grpc stream whose answers are read in the order they arrive."""

    def __init__(self, client: triton.InferenceServerClient, key: str | None = ALICE) -> None:
        self.client = client
        self.answers: queue.Queue = queue.Queue()
        headers = keyed(key) if key else None
        client.start_stream(
            lambda result, error: self.answers.put((result, error)), headers=headers
        )

    def next(self) -> tuple[triton.InferResult | None, InferenceServerException | None]:
        return self.answers.get(timeout=TIMEOUT)

    def close(self) -> None:
        self.client.stop_stream()


# the recording, streamed -----------------------------------------------------------------


@pytest.mark.parametrize("sequence_id", [1001, "recording-10"])
def test_a_recording_streamed_matches_a_native_session_and_the_offline_graph(
    client: triton.InferenceServerClient,
    chunks: list[np.ndarray],
    native: dict[str, np.ndarray],
    offline: dict[str, np.ndarray],
    sequence_id: int | str,
) -> None:
    stream = Stream(client)
    try:
        for i, x in enumerate(chunks):
            client.async_stream_infer(
                MODEL,
                [chunk_input(x)],
                request_id=str(i),
                sequence_id=sequence_id,
                sequence_start=i == 0,
                sequence_end=i == len(chunks) - 1,
            )
        results = {}
        for _ in chunks:
            result, error = stream.next()
            assert error is None, error
            results[int(result.get_response().id)] = result
        # the sequence has ended: a request for it is answered with an error, the stream goes on
        client.async_stream_infer(MODEL, [chunk_input(chunks[0])], sequence_id=sequence_id)
        result, error = stream.next()
        assert result is None and "has ended" in error.message()
    finally:
        stream.close()
    got = {
        name: np.concatenate([results[i].as_numpy(name)[0] for i in range(len(chunks))])
        for name in OUTPUTS
    }
    assert_same_steps(got, native)
    assert_same_steps(got, offline)
    last = parameters(results[len(chunks) - 1])
    assert last["sequence_id"] == sequence_id and last["steps"] == len(offline["class"])
    assert last["replayed"] is False


def test_sequences_on_one_stream_are_each_answered_in_order(
    client: triton.InferenceServerClient, chunks: list[np.ndarray], native: dict[str, np.ndarray]
) -> None:
    """Two sequences interleaved on one stream: each gets the native answers, step by step."""
    first = chunks[:6]
    stream = Stream(client)
    try:
        for i, x in enumerate(first):
            for sequence_id in (11, 12):
                client.async_stream_infer(
                    MODEL,
                    [chunk_input(x)],
                    request_id=f"{sequence_id}-{i}",
                    sequence_id=sequence_id,
                    sequence_start=i == 0,
                    sequence_end=i == len(first) - 1,
                )
        by_sequence: dict[str, list[tuple[int, triton.InferResult]]] = {"11": [], "12": []}
        for _ in range(2 * len(first)):
            result, error = stream.next()
            assert error is None, error
            sequence_id, i = result.get_response().id.split("-")
            by_sequence[sequence_id].append((int(i), result))
    finally:
        stream.close()
    steps = sum(len(x) for x in first)
    for answers in by_sequence.values():
        assert [i for i, _ in answers] == list(range(len(first)))  # a sequence's own order
        got = {n: np.concatenate([r.as_numpy(n)[0] for _, r in answers]) for n in OUTPUTS}
        assert_same_steps(got, {n: v[:steps] for n, v in native.items()})


# unary calls ------------------------------------------------------------------------------


def test_model_infer_as_a_sequence_and_stateless(
    client: triton.InferenceServerClient,
    chunks: list[np.ndarray],
    native: dict[str, np.ndarray],
    offline: dict[str, np.ndarray],
) -> None:
    got: dict[str, list[np.ndarray]] = {name: [] for name in OUTPUTS}
    for i, x in enumerate(chunks[:4]):
        result = client.infer(
            MODEL,
            [chunk_input(x)],
            sequence_id="unary",
            sequence_start=i == 0,
            sequence_end=i == 3,
            headers=keyed(ALICE),
        )
        for name in OUTPUTS:
            got[name].append(result.as_numpy(name)[0])
    steps = sum(len(x) for x in chunks[:4])
    assert_same_steps({n: np.concatenate(v) for n, v in got.items()}, native_prefix(native, steps))
    # no sequence: each row a whole sequence from a zero state; masks on request
    x = np.stack([chunks[0][:5], chunks[0][:5]])
    masked = [triton.InferRequestedOutput(name) for name in ("class", "updates", "mask")]
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(MODEL, [tensor], outputs=masked, headers=keyed(ALICE))
    np.testing.assert_array_equal(result.as_numpy("class"), np.tile(offline["class"][:5], (2, 1)))
    mask = result.as_numpy("mask")
    assert mask.dtype == bool and mask.shape == (2, 5, 128)
    np.testing.assert_array_equal(mask.sum(-1), result.as_numpy("updates"))
    assert parameters(result)["steps"] == 10 and result.as_numpy("probabilities") is None


def native_prefix(native: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
    return {name: values[:steps] for name, values in native.items()}


def test_a_retry_with_the_same_request_id_is_replayed(
    client: triton.InferenceServerClient, chunks: list[np.ndarray]
) -> None:
    def infer(x: np.ndarray, **kwargs: Any) -> triton.InferResult:
        return client.infer(MODEL, [chunk_input(x)], sequence_id=7, headers=keyed(ALICE), **kwargs)

    infer(chunks[0], sequence_start=True)
    first = infer(chunks[1], request_id="r1")
    again = infer(chunks[1], request_id="r1")
    assert parameters(first)["replayed"] is False
    assert again.get_response().id == "r1"
    assert parameters(again) == {**parameters(first), "replayed": True}
    for name in OUTPUTS:
        np.testing.assert_array_equal(again.as_numpy(name), first.as_numpy(name))
    # a retry on a stream is replayed too, and the sequence goes on from where it was
    stream = Stream(client)
    try:
        client.async_stream_infer(MODEL, [chunk_input(chunks[1])], request_id="r1", sequence_id=7)
        client.async_stream_infer(MODEL, [chunk_input(chunks[2])], request_id="r2", sequence_id=7)
        (replayed, e1), (advanced, e2) = stream.next(), stream.next()
    finally:
        stream.close()
    assert e1 is None and e2 is None
    assert parameters(replayed)["replayed"] is True
    assert parameters(advanced)["steps"] == sum(len(x) for x in chunks[:3])


# health, metadata, keys, errors ------------------------------------------------------------


def test_health_and_metadata_match_the_http_routes(
    client: triton.InferenceServerClient, server: LiveServer
) -> None:
    auth = keyed(ALICE)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_model_metadata(MODEL, headers=auth, as_json=True)
    version = meta["versions"][0]
    assert client.is_model_ready(MODEL, headers=auth)
    assert client.is_model_ready(MODEL, version, headers=auth)
    assert not client.is_model_ready(MODEL, "0", headers=auth)
    assert not client.is_model_ready("nope", headers=auth)
    with httpx.Client(base_url=server.url, headers=auth) as c:
        http_meta = c.get(f"/v2/models/{MODEL}").json()
        http_server = c.get("/v2").json()
    for tensor in meta["inputs"] + meta["outputs"]:
        tensor["shape"] = [int(n) for n in tensor["shape"]]  # int64 is a string in proto JSON
    assert meta == http_meta
    assert client.get_server_metadata(headers=auth, as_json=True) == http_server
    assert client.get_model_metadata(MODEL, version, headers=auth, as_json=True)["name"] == MODEL


def test_methods_not_served_are_unimplemented(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config(MODEL, headers=keyed(ALICE))
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"


def test_api_keys_in_metadata_behave_as_on_v2(
    client: triton.InferenceServerClient, chunks: list[np.ndarray], grpc_port: int
) -> None:
    x = [chunk_input(chunks[0])]
    for headers in (None, keyed("mallory-key"), {"authorization": f"Basic {ALICE}"}):
        for call in (
            lambda h=headers: client.infer(MODEL, x, headers=h),
            lambda h=headers: client.get_model_metadata(MODEL, headers=h),
            lambda h=headers: client.get_server_metadata(headers=h),
        ):
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == "StatusCode.UNAUTHENTICATED"
            assert "unauthorized" in info.value.message()
    # health needs no key, as on HTTP
    assert client.is_server_live() and client.is_server_ready()
    # a stream without a key is refused as it opens, before any request
    stream = Stream(client, key=None)
    try:
        result, error = stream.next()
    finally:
        stream.client.stop_stream(cancel_requests=True)
    assert result is None and error.status() == "StatusCode.UNAUTHENTICATED"
    # one key's sequence does not exist for another key
    client.infer(MODEL, x, sequence_id="mine", sequence_start=True, headers=keyed(ALICE))
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, x, sequence_id="mine", headers=keyed(BOB))
    assert info.value.status() == "StatusCode.NOT_FOUND" and "not open" in info.value.message()
    client.infer(MODEL, x, sequence_id="mine", sequence_end=True, headers=keyed(ALICE))
    # the challenge header of a 401 comes back as trailing metadata
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.ServerMetadata(pb.ServerMetadataRequest())
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ("www-authenticate", "Bearer") in failed.value.trailing_metadata()


def test_errors_are_statuses_with_the_v2_message(
    client: triton.InferenceServerClient, chunks: list[np.ndarray]
) -> None:
    auth = keyed(ALICE)
    x = [chunk_input(chunks[0])]
    five = triton.InferInput("x", [1, 3, 5], "FP32")
    five.set_data_from_numpy(np.zeros((1, 3, 5), np.float32))
    too_long = chunk_input(np.zeros((4097, 6), np.float32))
    not_finite = chunk_input(np.full((2, 6), np.nan, np.float32))
    oversized = chunk_input(np.zeros((200_000, 6), np.float32))  # 4.8 MB > SARNN_MAX_BODY_BYTES
    cases = [
        (lambda: client.infer(MODEL, [five], headers=auth), "INVALID_ARGUMENT", "inputs[0].shape"),
        (lambda: client.infer(MODEL, [not_finite], headers=auth), "INVALID_ARGUMENT", "finite"),
        (lambda: client.infer(MODEL, [too_long], headers=auth), "RESOURCE_EXHAUSTED", "4096"),
        (lambda: client.infer(MODEL, [oversized], headers=auth), "RESOURCE_EXHAUSTED", "larger"),
        (
            lambda: client.infer(MODEL, x, parameters={"threshold": 2.0}, headers=auth),
            "INVALID_ARGUMENT",
            "parameters.threshold",
        ),
        (lambda: client.infer("nope", x, headers=auth), "NOT_FOUND", "model_not_found"),
        (
            lambda: client.infer(MODEL, x, model_version="0", headers=auth),
            "NOT_FOUND",
            "version 0",
        ),
        (
            lambda: client.infer(MODEL, x, sequence_id="never-started", headers=auth),
            "NOT_FOUND",
            "session_not_found: sequence_id 'never-started' is not open",
        ),
    ]
    for call, status, words in cases:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == f"StatusCode.{status}", info.value
        assert words in info.value.message()
    # on a stream a bad request is answered with its error and the next one goes through
    stream = Stream(client)
    try:
        client.async_stream_infer(MODEL, [five], request_id="bad")
        client.async_stream_infer(MODEL, x, request_id="good")
        answers = [stream.next(), stream.next()]
    finally:
        stream.close()
    errors = [e for _, e in answers if e is not None]
    assert len(errors) == 1 and "invalid_input: inputs[0].shape" in errors[0].message()
    assert [r.get_response().id for r, _ in answers if r is not None] == ["good"]


def test_calls_are_counted_in_the_metrics(
    client: triton.InferenceServerClient, chunks: list[np.ndarray], server: LiveServer
) -> None:
    client.infer(MODEL, [chunk_input(chunks[0])], headers=keyed(ALICE))
    text = httpx.get(f"{server.url}/metrics").text
    assert 'sarnn_requests_total{endpoint="GRPC ModelInfer",status="200"}' in text
    assert 'sarnn_requests_total{endpoint="GRPC ModelStreamInfer",status="200"}' in text


def test_every_typed_error_has_a_grpc_status() -> None:
    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for c in cls.__subclasses__() for s in subclasses(c))]

    for cls in subclasses(ServiceError):
        error = cls.__new__(cls)
        assert grpc_status(error) not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN), cls
    assert peer_host("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert peer_host("ipv6:%5B::1%5D:5000") == "::1"
    assert peer_host("unix:/tmp/socket") is None


# the server's life -----------------------------------------------------------------------


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_lifespan_starts_and_stops_grpc_and_a_setting_turns_it_off(models: Path) -> None:
    port = free_port()
    with TestClient(create_app(Settings(model_dir=models, grpc_port=port))):
        assert listening(port)
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as c:
            assert c.is_server_live()
    assert not listening(port)
    with TestClient(create_app(Settings(model_dir=models, grpc_port=port, grpc_enabled=False))):
        assert not listening(port)


def test_a_port_in_use_stops_the_start_with_a_clear_error(models: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(OSError, match=f"gRPC cannot listen on 127.0.0.1:{port}"),
            TestClient(create_app(Settings(model_dir=models, grpc_port=port))),
        ):
            pass


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to make a certificate")
def test_tls_when_a_certificate_is_set(
    models: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_port()
    env = {
        "SARNN_GRPC_PORT": str(port),
        "SARNN_GRPC_TLS_CERT_FILE": str(cert),
        "SARNN_GRPC_TLS_KEY_FILE": str(key),
    }
    live = start_server(models, tmp_path_factory.mktemp("tls"), env)
    try:
        url = f"127.0.0.1:{port}"
        with triton.InferenceServerClient(url, ssl=True, root_certificates=str(cert)) as c:
            assert c.is_server_live()
        with triton.InferenceServerClient(url) as c, pytest.raises(InferenceServerException):
            c.is_server_live(client_timeout=5)  # plaintext is refused
    finally:
        stop_server(live)


def test_generated_modules_are_those_of_the_proto(tmp_path: Path) -> None:
    """`make protos` output is what is checked in."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) generates them")
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts/gen_protos.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)

    for path in gen.generate(tmp_path):
        checked_in = gen.REPO / path.relative_to(tmp_path)
        assert path.read_bytes() == checked_in.read_bytes(), f"{checked_in}: run make protos"
