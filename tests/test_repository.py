"""The model repository (the Open Inference Protocol's repository extension) against real
`sarnn-serve` processes: index, load and unload over HTTP and gRPC, a new version beside the old
one, drains, failed loads that change nothing, admin keys, and the model dir scan.

Two servers: `server` (keys off, no scan, a short drain) and `keys_server` (keys on, the model dir
scanned every 0.3 s). Each serves a copy of tests/data/models (the tiny watch model, v1 of every
model here); tests copy more folders in under names of their own, and a second version is the
shipped watch-gru (hidden 128 against the tiny model's 16) with its card renamed.
"""

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.service_fixtures import (
    FIXTURE_MODELS,
    SHIPPED_MODELS,
    TINY_MODEL,
    LiveServer,
    free_port,
    start_server,
    stop_server,
    watch_steps,
)

pytestmark = pytest.mark.slow  # starts sarnn-serve processes

DRAIN_S = 2.0
POLL_S = 0.3
USER, ADMIN = "user-key", "ops-key"
TINY_HIDDEN = 16
V2_SOURCE = SHIPPED_MODELS / "watch-gru"  # hidden 128


def card_version(folder: Path) -> str:
    return json.loads((folder / "model.json").read_text())["version"]


V1 = card_version(FIXTURE_MODELS / TINY_MODEL)
V2 = card_version(V2_SOURCE)
RECORDING = watch_steps()


def put_model(models: Path, name: str, source: Path = FIXTURE_MODELS / TINY_MODEL) -> Path:
    """Folder `models/name`: a copy of model folder `source` whose card names model `name`
    (replacing what the folder held). Written beside the model dir and renamed in, so a scan
    never sees half a copy."""
    staging = models.parent / f"staging-{name}-{time.monotonic_ns()}"
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("*.pt", "*.png"))
    card = json.loads((staging / "model.json").read_text())
    card["name"] = name
    (staging / "model.json").write_text(json.dumps(card))
    target = models / name
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo-open") / "models"
    shutil.copytree(FIXTURE_MODELS, root)
    return root


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(
    models: Path, grpc_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Keys off, no scan, versions released after DRAIN_S unused."""
    env = {
        "SARNN_MODEL_DRAIN_S": str(DRAIN_S),
        "SARNN_SWEEP_INTERVAL_S": "0.2",
        "SARNN_GRPC_PORT": str(grpc_port),
    }
    live = start_server(models, tmp_path_factory.mktemp("repo-open"), env)
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def keyed_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo-keys") / "models"
    shutil.copytree(FIXTURE_MODELS, root)
    return root


@pytest.fixture(scope="module")
def keys_grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def keys_server(
    keyed_models: Path, keys_grpc_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Keys on (USER, and ADMIN with the admin role), the model dir scanned every POLL_S."""
    env = {
        "SARNN_API_KEYS": f"{USER},{ADMIN}:admin",
        "SARNN_MODEL_POLL_S": str(POLL_S),
        "SARNN_MODEL_DRAIN_S": str(DRAIN_S),
        "SARNN_SWEEP_INTERVAL_S": "0.2",
        "SARNN_GRPC_PORT": str(keys_grpc_port),
    }
    live = start_server(keyed_models, tmp_path_factory.mktemp("repo-keys"), env)
    yield live
    stop_server(live)


# --- helpers ---------------------------------------------------------------------------------


def headers(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def post(server: LiveServer, path: str, key: str | None = None, **kw) -> httpx.Response:
    sent = {**headers(key), **kw.pop("headers", {})}
    return httpx.post(f"{server.url}{path}", headers=sent, timeout=60, **kw)


def load(server: LiveServer, name: str, key: str | None = None) -> httpx.Response:
    return post(server, f"/v2/repository/models/{name}/load", key)


def unload(server: LiveServer, name: str, key: str | None = None) -> httpx.Response:
    return post(server, f"/v2/repository/models/{name}/unload", key)


def index(server: LiveServer, key: str | None = None, **body) -> list[dict]:
    r = post(server, "/v2/repository/index", key, json=body or None)
    assert r.status_code == 200, r.text
    return r.json()


def entries(server: LiveServer, name: str, key: str | None = None) -> list[tuple[str, str, str]]:
    """The index entries of model `name`, as (version, state, reason)."""
    return [
        (e["version"], e["state"], e["reason"]) for e in index(server, key) if e["name"] == name
    ]


def error_code(r: httpx.Response) -> str:
    """The error code of a /v1 ({"error": {"code": ...}}) or /v2 ("code: message") answer."""
    error = r.json()["error"]
    return error["code"] if isinstance(error, dict) else error.split(":", 1)[0]


def open_session(server: LiveServer, name: str, key: str | None = None) -> httpx.Response:
    return post(server, "/v1/sessions", key, json={"model": name})


def send(server: LiveServer, sid: str, seq: int, key: str | None = None) -> httpx.Response:
    """Chunk `seq` of the recording (20 steps each) into session `sid`."""
    x = RECORDING[20 * seq : 20 * (seq + 1)]
    return post(server, f"/v1/sessions/{sid}/chunks", key, json={"seq": seq, "inputs": x.tolist()})


def steps(r: httpx.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    return r.json()["steps"]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {timeout_s} s"
        time.sleep(0.1)


# --- index and load --------------------------------------------------------------------------


def test_index_lists_served_and_unloaded_folders_and_load_serves(
    server: LiveServer, models: Path
) -> None:
    assert entries(server, TINY_MODEL) == [(V1, "READY", "")]
    put_model(models, "added-a")
    assert entries(server, "added-a") == [(V1, "UNAVAILABLE", "not loaded")]
    ready = index(server, ready=True)
    assert {e["state"] for e in ready} == {"READY"} and "added-a" not in {e["name"] for e in ready}
    # as curl -d sends it (a form's Content-Type), and with none (as tritonclient sends it)
    for content_type in ("application/x-www-form-urlencoded", None):
        r = post(
            server,
            "/v2/repository/index",
            content=b'{"ready": true}',
            headers={"content-type": content_type} if content_type else {},
        )
        assert r.json() == ready, r.text
    bad = post(server, "/v2/repository/index", content=b"{ready")
    assert bad.status_code == 422 and bad.json()["error"].startswith("invalid_json: ")
    assert error_code(open_session(server, "added-a")) == "model_not_found"

    r = load(server, "added-a")
    assert (r.status_code, r.content) == (200, b"")
    assert entries(server, "added-a") == [(V1, "READY", "")]
    session = open_session(server, "added-a").json()
    assert session["model_version"] == V1
    assert len(steps(send(server, session["id"], 0))) == 20


def test_a_new_version_serves_new_sessions_while_old_ones_finish(
    server: LiveServer, models: Path
) -> None:
    name = "swap-b"
    put_model(models, name)
    assert load(server, name).status_code == 200
    a, b = (open_session(server, name).json()["id"] for _ in range(2))
    a_steps = [steps(send(server, a, 0)), steps(send(server, a, 1))]
    assert steps(send(server, b, 0)) == a_steps[0]

    put_model(models, name, V2_SOURCE)
    assert load(server, name).status_code == 200
    assert steps(send(server, b, 1)) == a_steps[1]  # still v1, bit for bit
    new = open_session(server, name).json()
    assert new["model_version"] == V2
    assert max(s["updates"] for s in steps(send(server, new["id"], 0))) > TINY_HIDDEN
    assert httpx.get(f"{server.url}/v1/models/{name}").json()["hidden"] == 128
    draining = entries(server, name)
    assert [(v, s) for v, s, _ in draining] == [(V2, "READY"), (V1, "UNAVAILABLE")]
    assert draining[1][2].startswith("draining")

    assert load(server, name).status_code == 200  # the same version again: nothing changes
    assert [(v, s) for v, s, _ in entries(server, name)] == [(V2, "READY"), (V1, "UNAVAILABLE")]

    # unused for DRAIN_S, v1 is released (a chunk would count as use: only the index is asked)
    wait_for(lambda: len(entries(server, name)) == 1, "released", DRAIN_S + 10)
    gone = send(server, b, 2)
    assert (gone.status_code, error_code(gone)) == (410, "model_unavailable")
    assert len(steps(send(server, new["id"], 1))) == 20


def test_unload_refuses_new_sessions_and_drains_old_ones(server: LiveServer, models: Path) -> None:
    name = "unload-c"
    put_model(models, name)
    assert load(server, name).status_code == 200
    sid = open_session(server, name).json()["id"]
    steps(send(server, sid, 0))

    r = unload(server, name)
    assert (r.status_code, r.content) == (200, b"")
    refused = open_session(server, name)
    assert (refused.status_code, error_code(refused)) == (404, "model_not_found")
    assert httpx.get(f"{server.url}/v2/models/{name}/ready").status_code == 404
    for seq in (1, 2):  # the session it started still advances
        assert len(steps(send(server, sid, seq))) == 20
    ((version, state, reason),) = entries(server, name)
    assert (version, state) == (V1, "UNAVAILABLE") and reason.startswith("draining")
    assert error_code(unload(server, name)) == "model_not_found"

    wait_for(lambda: entries(server, name) == [(V1, "UNAVAILABLE", "unloaded")], "released")
    gone = send(server, sid, 3)
    assert (gone.status_code, error_code(gone)) == (410, "model_unavailable")
    assert load(server, name).status_code == 200
    assert entries(server, name) == [(V1, "READY", "")]


def test_a_load_that_fails_changes_nothing(server: LiveServer, models: Path) -> None:
    name = "bad-d"
    put_model(models, name)
    assert load(server, name).status_code == 200
    first = open_session(server, name).json()["id"]
    before = steps(send(server, first, 0))
    later = open_session(server, name).json()["id"]

    folder = put_model(models, name, V2_SOURCE)  # a new version whose graph is cut short
    graph = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(graph[: len(graph) // 2])
    r = load(server, name)
    assert (r.status_code, error_code(r)) == (400, "model_load_failed")
    assert "model.onnx" in r.json()["error"]
    (folder / "model.json").write_text('{"name": "bad-d", "version": ')
    r = load(server, name)
    assert (r.status_code, error_code(r)) == (400, "model_load_failed")
    assert "model.json" in r.json()["error"]

    assert [(v, s) for v, s, _ in entries(server, name) if s == "READY"] == [(V1, "READY")]
    assert steps(send(server, later, 0)) == before
    assert open_session(server, name).json()["model_version"] == V1
    shutil.rmtree(folder)
    r = load(server, "no-such-model")
    assert (r.status_code, error_code(r)) == (404, "model_not_found")


# --- Triton's clients ------------------------------------------------------------------------


def test_tritonclient_grpc_lists_loads_and_unloads(
    server: LiveServer, models: Path, grpc_port: int
) -> None:
    name = "grpc-g"
    put_model(models, name)
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        listed = client.get_model_repository_index(as_json=True)["models"]
        assert {"name": name, "version": V1, "state": "UNAVAILABLE", "reason": "not loaded"} in (
            listed
        )
        client.load_model(name)
        assert client.is_model_ready(name)
        client.unload_model(name)
        assert not client.is_model_ready(name)

        (models / "broken-g").mkdir()
        (models / "broken-g" / "model.json").write_text("{")
        with pytest.raises(InferenceServerException) as failed:
            client.load_model("broken-g")
        assert failed.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "model_load_failed" in failed.value.message()
        shutil.rmtree(models / "broken-g")
        with pytest.raises(InferenceServerException) as unknown:
            client.load_model("no-such-model")
        assert unknown.value.status() == "StatusCode.NOT_FOUND"


def test_tritonclient_http_lists_loads_and_unloads(server: LiveServer, models: Path) -> None:
    name = "http-g"
    put_model(models, name)
    with triton_http.InferenceServerClient(server.url.removeprefix("http://")) as client:
        listed = client.get_model_repository_index()
        assert {"name": name, "version": V1, "state": "UNAVAILABLE", "reason": "not loaded"} in (
            listed
        )
        client.load_model(name)
        assert client.is_model_ready(name)
        client.unload_model(name)
        assert not client.is_model_ready(name)
        with pytest.raises(InferenceServerException) as unknown:
            client.unload_model("no-such-model")
        assert unknown.value.status() == "404"


# --- keys and the scan -----------------------------------------------------------------------


def test_with_keys_only_an_admin_loads_and_unloads(
    keys_server: LiveServer, keys_grpc_port: int
) -> None:
    assert post(keys_server, "/v2/repository/index").status_code == 401
    assert entries(keys_server, TINY_MODEL, USER) == [(V1, "READY", "")]
    for call in (load, unload):
        r = call(keys_server, TINY_MODEL, USER)
        assert (r.status_code, error_code(r)) == (403, "forbidden"), r.text
    assert entries(keys_server, TINY_MODEL, USER) == [(V1, "READY", "")]
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{keys_grpc_port}") as client:
        with pytest.raises(InferenceServerException) as refused:
            client.unload_model(TINY_MODEL, headers=headers(USER))
        assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
        client.load_model(TINY_MODEL, headers=headers(ADMIN))

    assert load(keys_server, TINY_MODEL, ADMIN).status_code == 200
    assert unload(keys_server, TINY_MODEL, ADMIN).status_code == 200
    time.sleep(4 * POLL_S)  # the scan does not load again what was unloaded on request
    assert error_code(open_session(keys_server, TINY_MODEL, USER)) == "model_not_found"
    assert load(keys_server, TINY_MODEL, ADMIN).status_code == 200
    assert open_session(keys_server, TINY_MODEL, USER).status_code == 201


def test_the_scan_loads_folders_copied_in_and_unloads_removed_ones(
    keys_server: LiveServer, keyed_models: Path
) -> None:
    name = "polled-f"
    put_model(keyed_models, name)
    wait_for(lambda: entries(keys_server, name, USER) == [(V1, "READY", "")], "loaded")
    session = open_session(keys_server, name, USER).json()
    assert len(steps(send(keys_server, session["id"], 0, USER))) == 20

    put_model(keyed_models, name, V2_SOURCE)
    wait_for(lambda: (V2, "READY", "") in entries(keys_server, name, USER), "v2 loaded")
    assert len(steps(send(keys_server, session["id"], 1, USER))) == 20  # still on v1
    assert open_session(keys_server, name, USER).json()["model_version"] == V2

    shutil.rmtree(keyed_models / name)
    wait_for(lambda: (V2, "READY", "") not in entries(keys_server, name, USER), "unloaded")
    assert error_code(open_session(keys_server, name, USER)) == "model_not_found"


def test_the_scan_keeps_a_model_whose_card_is_being_rewritten(
    keys_server: LiveServer, keyed_models: Path
) -> None:
    """A folder whose card cannot be read (half written, say) has not gone: its model stays."""
    name = "rewritten-f"
    folder = put_model(keyed_models, name)
    wait_for(lambda: entries(keys_server, name, USER) == [(V1, "READY", "")], "loaded")
    card = (folder / "model.json").read_text()
    (folder / "model.json").write_text(card[: len(card) // 2])
    time.sleep(5 * POLL_S)
    assert (V1, "READY", "") in entries(keys_server, name, USER)
    assert open_session(keys_server, name, USER).status_code == 201
    (folder / "model.json").write_text(card)


def test_with_every_model_unloaded_requests_say_so(server: LiveServer, models: Path) -> None:
    """Nothing served: the model list is empty and a session naming no model is refused."""
    served = [e["name"] for e in index(server, ready=True)]
    for name in served:
        assert unload(server, name).status_code == 200
    try:
        assert httpx.get(f"{server.url}/v1/models").json() == []
        r = post(server, "/v1/sessions", json={})
        assert (r.status_code, error_code(r)) == (422, "invalid_input"), r.text
    finally:
        for name in served:
            if (models / name).exists():
                assert load(server, name).status_code == 200
    assert open_session(server, TINY_MODEL).status_code == 201


def test_the_scan_tries_again_a_folder_that_changed_after_failing(
    keys_server: LiveServer, keyed_models: Path
) -> None:
    """A folder caught half copied (its card first) fails to load, then loads once complete."""
    name = "late-f"
    source = put_model(keyed_models.parent, name)  # complete, outside the model dir
    (keyed_models / name).mkdir()
    shutil.copy2(source / "model.json", keyed_models / name)
    wait_for(lambda: "graph missing" in str(entries(keys_server, name, USER)), "failed")
    time.sleep(3 * POLL_S)  # failed as it is, it is not tried at every scan
    failures = [line for line in keys_server.log().splitlines() if "model load failed" in line]
    assert len([line for line in failures if name in line]) == 1
    for graph in ("model.onnx", "model.sparse.onnx"):
        shutil.copy2(source / graph, keyed_models / name)
    wait_for(lambda: entries(keys_server, name, USER) == [(V1, "READY", "")], "loaded")
