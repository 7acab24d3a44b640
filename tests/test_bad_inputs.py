"""Bad input on every route and transport, against a real `sarnn-serve` with small limits.

Each kind of bad input (the tables in `bad_input_cases.py`) must get a 4xx: an HTTP error body
or a WebSocket error frame {"type": "error", "status", "error": {"code", "message", "field"?}}
naming the bad part, or, for a bad WebSocket URL, an error frame and a close code (never a
socket dropped without a close frame). A bad chunk names the same field on REST, WebSocket JSON
and WebSocket msgpack: the chunk tables go over all three.

And it must change nothing: a session that applied chunk 0 before the bad input has the same
summary after it, the model's totals (live sessions, steps, updates) have not moved, and the
good chunk 1 then gets exactly the answer of a session that never saw bad input.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgpack
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.bad_input_cases import (
    CHUNK_HTTP,
    CHUNKS,
    CREATE,
    FEATURES,
    HISTORY,
    JSON_TEXT,
    JSON_TYPE,
    MAX_BYTES,
    MAX_STEPS,
    MODEL,
    NEXT,
    PATHS,
    PREDICT,
    TABLES,
    WS_CLOSE,
    WS_FRAMES,
    WS_NO_ROUTE,
    WS_QUERY,
    WS_SESSION,
    Case,
    Http,
    WsOpen,
)
from tests.service_fixtures import LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow

TIMEOUT = 30
LIMITS = {
    "SARNN_MAX_CHUNK_STEPS": str(MAX_STEPS),
    "SARNN_MAX_BODY_BYTES": str(MAX_BYTES),
    "SARNN_WS_MAX_MESSAGE_BYTES": str(MAX_BYTES),
}
COUNTED = ("active_sessions", "steps", "updates")  # of GET /v1/models/{name}/stats
ENDPOINTS = ("session", "new")  # /v1/sessions/{id}/stream, /v1/stream

# --- server, references and the session under test --------------------------------------------


@pytest.fixture(scope="module")
def server(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(served_models, tmp_path_factory.mktemp("bad-inputs"), env=LIMITS)
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def rest(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture(scope="module")
def one_shot(server: LiveServer) -> Iterator[httpx.Client]:
    """A client that opens a connection per request, for bad ones: a 500 may close it."""
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT, limits=limits) as client:
        yield client


def create_session(rest: httpx.Client) -> str:
    r = rest.post("/v1/sessions", json={})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def post_chunk(rest: httpx.Client, sid: str, seq: int, inputs: list) -> dict:
    r = rest.post(f"/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": inputs})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def reference(rest: httpx.Client) -> list[dict]:
    """The steps a session that never saw bad input answers to NEXT (seq 1) after HISTORY."""
    sid = create_session(rest)
    post_chunk(rest, sid, 0, HISTORY)
    return post_chunk(rest, sid, 1, NEXT)["steps"]


@pytest.fixture(scope="module")
def deleted_sid(rest: httpx.Client) -> str:
    sid = create_session(rest)
    assert rest.delete(f"/v1/sessions/{sid}").status_code == 200
    return sid


def counters(rest: httpx.Client) -> dict[str, float]:
    """The model's live totals a rejected input must not move."""
    stats = rest.get(f"/v1/models/{MODEL}/stats").json()
    return {name: stats[name] for name in COUNTED}


@dataclass
class Witness:
    """A session that applied HISTORY as chunk 0, its summary and the server's totals then."""

    rest: httpx.Client
    sid: str
    summary: dict
    totals: dict[str, float]

    @classmethod
    def capture(cls, rest: httpx.Client, sid: str) -> "Witness":
        r = rest.get(f"/v1/sessions/{sid}")
        assert r.status_code == 200, r.text
        assert r.json()["next_seq"] == 1
        return cls(rest, sid, r.json(), counters(rest))

    def paths(self, deleted: str) -> dict[str, str]:
        """What a case's path may name: this session, its id in the other case, a deleted one."""
        return {"sid": self.sid, "swapped": self.sid.swapcase(), "deleted": deleted}

    def assert_untouched(self) -> None:
        r = self.rest.get(f"/v1/sessions/{self.sid}")
        assert r.status_code == 200, r.text
        assert r.json() == self.summary, "the bad input changed the session"
        assert counters(self.rest) == self.totals, "the bad input created, deleted or ran something"

    def assert_next(self, answer: dict, reference: list[dict]) -> None:
        """`answer` (to the good chunk 1) is the one a session without bad input gets."""
        assert answer.get("type") == "chunk", answer
        assert (answer["seq"], answer["replayed"]) == (1, False)
        assert answer["steps"] == reference
        assert answer["session"]["next_seq"] == 2


@pytest.fixture
def witness(rest: httpx.Client) -> Witness:
    sid = create_session(rest)
    post_chunk(rest, sid, 0, HISTORY)
    return Witness.capture(rest, sid)


# --- checks of error answers ------------------------------------------------------------------


def check_error(error: dict, case: Case) -> None:
    """The error object of a case: its code, a message, the field it names (or none)."""
    assert error["code"] == case.code, error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    if case.status == 409:
        assert error["expected_seq"] == 1, error
    assert error.get("field") == case.field, error


def check_http_error(r: httpx.Response, case: Case) -> None:
    assert r.status_code == case.status, f"{r.status_code}: {r.text[:300]}"
    body = r.json()
    assert set(body) == {"error"}, body
    check_error(body["error"], case)


def check_error_frame(frame: dict | None, case: Case) -> None:
    assert frame is not None
    assert frame.get("type") == "error", frame
    assert set(frame) == {"type", "status", "error"}, frame
    assert frame["status"] == case.status, frame
    check_error(frame["error"], case)


# --- REST -------------------------------------------------------------------------------------


def send(client: httpx.Client, case: Http, path: str) -> httpx.Response:
    """The request of `case` (streamed without Content-Length if it says chunked)."""
    content = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    headers = dict(case.headers)
    if case.content_type is not None:
        headers["content-type"] = case.content_type
    if case.chunked:
        return client.request(
            case.method,
            path,
            content=iter([content[i : i + 4096] for i in range(0, len(content), 4096)]),
            headers=headers,
        )
    return client.request(case.method, path, content=content, headers=headers)


REST_CHUNKS = [
    *(pytest.param(json.dumps(c.body).encode(), c, id=f"value-{k}") for k, c in CHUNKS.items()),
    *(pytest.param(c.body.encode(), c, id=f"text-{k}") for k, c in JSON_TEXT.items()),
]


@pytest.mark.parametrize(("content", "case"), REST_CHUNKS)
def test_rest_chunk(
    one_shot: httpx.Client,
    rest: httpx.Client,
    witness: Witness,
    reference: list[dict],
    content: bytes,
    case: Case,
) -> None:
    """POST /v1/sessions/{id}/chunks: the same values as the WebSocket frames."""
    r = one_shot.post(
        f"/v1/sessions/{witness.sid}/chunks", content=content, headers={"content-type": JSON_TYPE}
    )
    witness.assert_untouched()
    witness.assert_next(post_chunk(rest, witness.sid, 1, NEXT), reference)
    check_http_error(r, case)


REST_REQUESTS = [
    pytest.param(c, id=f"{table}-{k}")
    for table, cases in (
        ("chunk", CHUNK_HTTP),
        ("create", CREATE),
        ("predict", PREDICT),
        ("path", PATHS),
    )
    for k, c in cases.items()
]


@pytest.mark.parametrize("case", REST_REQUESTS)
def test_rest_request(
    one_shot: httpx.Client,
    rest: httpx.Client,
    witness: Witness,
    reference: list[dict],
    deleted_sid: str,
    case: Http,
) -> None:
    """Bodies, encodings, content types, methods, paths and ids of the REST routes."""
    r = send(one_shot, case, case.path.format(**witness.paths(deleted_sid)))
    witness.assert_untouched()
    witness.assert_next(post_chunk(rest, witness.sid, 1, NEXT), reference)
    check_http_error(r, case)


# --- WebSocket frames -------------------------------------------------------------------------


def ws_connect(url: str) -> ClientConnection:
    return connect(url, compression=None, max_size=None, open_timeout=TIMEOUT)


def recv_json(ws: ClientConnection) -> dict:
    frame = ws.recv(timeout=TIMEOUT)
    assert isinstance(frame, str), "server frames are JSON text"
    return json.loads(frame)


def send_json(ws: ClientConnection, body: object) -> dict:
    ws.send(json.dumps(body))
    return recv_json(ws)


@contextmanager
def streaming(
    server: LiveServer, rest: httpx.Client, endpoint: str
) -> Iterator[tuple[ClientConnection, Witness]]:
    """A socket on /v1/sessions/{id}/stream ("session") or /v1/stream ("new") whose session
    applied chunk 0 over it."""
    url = f"{server.ws_url}/v1/stream"
    if endpoint == "session":
        url = f"{server.ws_url}/v1/sessions/{create_session(rest)}/stream"
    with ws_connect(url) as ws:
        first = recv_json(ws)
        assert first["type"] == "session", first
        sid = first["session"]["id"]
        assert send_json(ws, {"seq": 0, "inputs": HISTORY})["type"] == "chunk"
        yield ws, Witness.capture(rest, sid)


WS_FRAME_PARAMS = [
    *(pytest.param(json.dumps(c.body), c, id=f"json-{k}") for k, c in CHUNKS.items()),
    *(pytest.param(msgpack.packb(c.body), c, id=f"msgpack-{k}") for k, c in CHUNKS.items()),
    *(pytest.param(c.body, c, id=f"text-{k}") for k, c in JSON_TEXT.items()),
    *(pytest.param(c.body, c, id=f"frame-{k}") for k, c in WS_FRAMES.items()),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("frame", "case"), WS_FRAME_PARAMS)
def test_ws_frame(
    server: LiveServer,
    rest: httpx.Client,
    reference: list[dict],
    endpoint: str,
    frame: str | bytes,
    case: Case,
) -> None:
    """A bad frame gets an error frame, and the same socket then carries on."""
    with streaming(server, rest, endpoint) as (ws, witness):
        ws.send(frame)
        answer = recv_json(ws)
        witness.assert_untouched()
        witness.assert_next(send_json(ws, {"seq": 1, "inputs": NEXT}), reference)
    check_error_frame(answer, case)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("kind", list(WS_CLOSE))
def test_ws_frame_closing_the_socket(
    server: LiveServer, rest: httpx.Client, reference: list[dict], endpoint: str, kind: str
) -> None:
    """Frames the WebSocket layer refuses (over uvicorn's limit of twice ours, text that is not
    UTF-8) close the socket with a close frame; the session is intact on reconnection."""
    frame, as_text, code = WS_CLOSE[kind]
    with streaming(server, rest, endpoint) as (ws, witness), pytest.raises(ConnectionClosed) as ex:
        ws.send(frame, text=as_text)
        ws.recv(timeout=TIMEOUT)
    witness.assert_untouched()
    with ws_connect(f"{server.ws_url}/v1/sessions/{witness.sid}/stream") as ws:
        assert recv_json(ws)["session"] == witness.summary
        witness.assert_next(send_json(ws, {"seq": 1, "inputs": NEXT}), reference)
    assert ex.value.rcvd is not None, "the socket was dropped without a close frame"
    assert ex.value.rcvd.code == code


# --- WebSocket URLs ---------------------------------------------------------------------------


@dataclass
class Refusal:
    """How the server refused a WebSocket: in the handshake (HTTP status), or with a first
    frame and then a close frame (its code)."""

    http_status: int | None = None
    frame: dict | None = None
    close_code: int | None = None


def refusal(url: str) -> Refusal:
    try:
        ws = ws_connect(url)
    except InvalidStatus as exc:
        return Refusal(http_status=exc.response.status_code)
    with ws:
        frame = recv_json(ws)
        try:
            extra = ws.recv(timeout=TIMEOUT)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "the socket was dropped without a close frame"
            return Refusal(frame=frame, close_code=exc.rcvd.code)
    raise AssertionError(f"the socket stayed open after {frame} and sent {extra!r}")


WS_OPEN_PARAMS = [
    pytest.param(c, id=f"{table}-{k}")
    for table, cases in (("query", WS_QUERY), ("session", WS_SESSION))
    for k, c in cases.items()
]


@pytest.mark.parametrize("case", WS_OPEN_PARAMS)
def test_ws_url(
    server: LiveServer,
    rest: httpx.Client,
    witness: Witness,
    reference: list[dict],
    deleted_sid: str,
    case: WsOpen,
) -> None:
    """Query parameters of /v1/stream and ids of /v1/sessions/{id}/stream: an error frame, then
    the close code (4400 for any bad query parameter, an unknown model included)."""
    got = refusal(server.ws_url + case.body.format(**witness.paths(deleted_sid)))
    witness.assert_untouched()
    witness.assert_next(post_chunk(rest, witness.sid, 1, NEXT), reference)
    assert got.frame is not None, f"refused in the handshake with HTTP {got.http_status}"
    check_error_frame(got.frame, case)
    assert got.close_code == case.close


@pytest.mark.parametrize("path", list(WS_NO_ROUTE.values()), ids=list(WS_NO_ROUTE))
def test_ws_without_a_route(
    server: LiveServer,
    rest: httpx.Client,
    witness: Witness,
    reference: list[dict],
    path: str,
) -> None:
    got = refusal(server.ws_url + path.format(**witness.paths("")))
    witness.assert_untouched()
    witness.assert_next(post_chunk(rest, witness.sid, 1, NEXT), reference)
    assert got.http_status is not None and 400 <= got.http_status < 500, got


# --- the suite itself -------------------------------------------------------------------------


def test_tables_fit_the_served_model(rest: httpx.Client, reference: list[dict]) -> None:
    """The tables are written for F = 6 features; the reference answer is a real one."""
    card = rest.get(f"/v1/models/{MODEL}").json()
    assert card["n_features"] == FEATURES == len(HISTORY[0])
    for step in reference:
        assert step["label"] == card["class_labels"][step["class"]]
        assert len(step["probabilities"]) == card["n_classes"]
        assert 0 <= step["updates"] <= card["hidden"]


def _payload(case: object) -> str:
    """What a case sends (not what it expects), to tell cases apart."""
    if isinstance(case, Http):
        return repr(
            (case.method, case.path, case.body, case.content_type, case.headers, case.chunked)
        )
    return repr(case.body if isinstance(case, Case) else case)


KINDS = sum(len(table) for table in TABLES.values())


@pytest.mark.parametrize("kinds", [KINDS], ids=[f"{KINDS} kinds"])
def test_at_least_150_kinds_of_bad_input(kinds: int) -> None:
    assert kinds >= 150
    for name, table in TABLES.items():
        sent = [_payload(case) for case in table.values()]
        assert len(set(sent)) == len(sent), f"{name}: two cases send the same thing"
