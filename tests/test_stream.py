"""The WebSocket transport over a real socket (the `websockets` client) against `sarnn-serve`.

Every answer is compared with the REST answer for the same data on another session: the two
transports share one data plane, so they must agree step for step.
"""

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.fixtures import rest_answers
from tests.service_fixtures import TINY_MODEL, LiveServer

pytestmark = pytest.mark.slow  # starts sarnn-serve processes

FEATURES = 6
HIDDEN = 16
TIMEOUT = 10


def recording(seed: int, steps: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (steps, FEATURES)) * [0.6, 0.6, 0.6, 1.5, 1.5, 1.5]
    return x.astype(np.float32).tolist()


CHUNKS = [recording(1, 7), recording(2, 1), recording(3, 20), recording(4, 3)]


async def recv(ws: ClientConnection) -> dict:
    frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(frame, str), "server frames are JSON text"
    return json.loads(frame)


async def send(ws: ClientConnection, body: object, binary: bool = False) -> dict:
    await ws.send(msgpack.packb(body) if binary else json.dumps(body))
    return await recv(ws)


def chunk_ok(answer: dict, seq: int) -> dict:
    assert answer["type"] == "chunk", answer
    assert answer["seq"] == seq and answer["replayed"] is False
    return answer


def same_answer(got: dict, want: dict) -> None:
    """Two chunk answers (of different sessions) agree on everything but the session."""
    assert got["steps"] == want["steps"]
    assert got["chunk"] == want["chunk"]
    for key in ("steps", "updates", "next_seq", "macs_dense", "macs_selective"):
        assert got["session"][key] == want["session"][key]


async def get_session(url: str, sid: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        return await c.get(f"/v1/sessions/{sid}")


@pytest.fixture(scope="module")
def reference(live_server: LiveServer) -> list[dict]:
    return asyncio.run(rest_answers(live_server.url, CHUNKS))


@pytest.fixture
async def stream(live_server: LiveServer) -> AsyncIterator[tuple[ClientConnection, dict]]:
    """A socket on /v1/stream and its session summary (the first frame)."""
    async with connect(f"{live_server.ws_url}/v1/stream", compression=None) as ws:
        first = await recv(ws)
        assert first["type"] == "session"
        yield ws, first["session"]


async def test_new_session_stream_matches_rest(
    live_server: LiveServer, stream: tuple[ClientConnection, dict], reference: list[dict]
) -> None:
    ws, session = stream
    assert session["model"] == TINY_MODEL
    assert (session["next_seq"], session["steps"]) == (0, 0)
    assert len(session["id"]) >= 20
    for seq, chunk in enumerate(CHUNKS):
        body = {"seq": seq, "inputs": chunk}
        answer = chunk_ok(await send(ws, body), seq)
        assert answer["session_id"] == session["id"]
        same_answer(answer, reference[seq])
    summary = (await get_session(live_server.url, session["id"])).json()
    assert summary["steps"] == sum(map(len, CHUNKS)) and summary["next_seq"] == len(CHUNKS)


async def test_retry_over_the_socket_replays(stream: tuple[ClientConnection, dict]) -> None:
    ws, _ = stream
    first = chunk_ok(await send(ws, {"seq": 0, "inputs": CHUNKS[0]}), 0)
    again = await send(ws, {"seq": 0, "inputs": CHUNKS[0]})
    assert again["replayed"] is True and again["steps"] == first["steps"]
    chunk_ok(await send(ws, {"seq": 1, "inputs": CHUNKS[1]}), 1)


BAD_FRAMES = {
    # id: (frame, binary, status, field)
    "not JSON": ("inputs: [[1, 2]]", False, 422, "body"),
    "JSON not an object": ("[[1, 2, 3, 4, 5, 6]]", False, 422, "body"),
    "JSON null": ("null", False, 422, "body"),
    "unknown field": ({"seq": 1, "inputs": CHUNKS[1], "foo": 1}, False, 422, "foo"),
    "seq a string": ({"seq": "1", "inputs": CHUNKS[1]}, False, 422, "seq"),
    "seq negative": ({"seq": -1, "inputs": CHUNKS[1]}, False, 422, "seq"),
    "seq a bool": ({"seq": True, "inputs": CHUNKS[1]}, False, 422, "seq"),
    "seq fractional": ({"seq": 1.0, "inputs": CHUNKS[1]}, False, 422, "seq"),
    "include_mask not bool": (
        {"seq": 1, "inputs": CHUNKS[1], "include_mask": 1},
        False,
        422,
        "include_mask",
    ),
    "seq missing": ({"inputs": CHUNKS[1]}, False, 422, "seq"),
    "mixed bytes and str keys": ({b"a": 0, "b": 0}, True, 422, "body"),
    "inputs missing": ({"seq": 1}, False, 422, "inputs"),
    "empty chunk": ({"seq": 1, "inputs": []}, False, 422, "inputs"),
    "five features": ({"seq": 1, "inputs": [[1, 2, 3, 4, 5]]}, False, 422, "inputs[0]"),
    "ragged rows": ({"seq": 1, "inputs": [[1, 2, 3, 4, 5, 6], [1]]}, False, 422, "inputs[1]"),
    "string number": ({"seq": 1, "inputs": [[1, 2, "x", 4, 5, 6]]}, False, 422, "inputs[0][2]"),
    "null number": ({"seq": 1, "inputs": [[1, 2, 3, 4, None, 6]]}, False, 422, "inputs[0][4]"),
    "NaN in JSON": ("""{"seq": 1, "inputs": [[1, 2, 3, 4, 5, NaN]]}""", False, 422, "inputs[0][5]"),
    "NaN in msgpack": (
        {"seq": 1, "inputs": [[1.0, 2, 3, 4, 5, float("nan")]]},
        True,
        422,
        "inputs[0][5]",
    ),
    "inf in msgpack": (
        {"seq": 1, "inputs": [[1.0, 2, 3, 4, 5, 6], [float("-inf"), 0, 0, 0, 0, 0]]},
        True,
        422,
        "inputs[1][0]",
    ),
    "msgpack garbage": (b"\xc1\x00\xff", True, 422, "body"),
    "msgpack not a map": ([[1.0] * 6], True, 422, "body"),
    "seq gap": ({"seq": 3, "inputs": CHUNKS[1]}, False, 409, None),
    "retry with other inputs": ({"seq": 0, "inputs": CHUNKS[2]}, False, 409, None),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
async def test_bad_frame_gets_error_and_changes_nothing(
    live_server: LiveServer,
    stream: tuple[ClientConnection, dict],
    reference: list[dict],
    case: str,
) -> None:
    frame, binary, status, field = BAD_FRAMES[case]
    ws, session = stream
    same_answer(chunk_ok(await send(ws, {"seq": 0, "inputs": CHUNKS[0]}), 0), reference[0])
    before = (await get_session(live_server.url, session["id"])).json()

    if isinstance(frame, str | bytes):
        await ws.send(frame)
        answer = await recv(ws)
    else:
        answer = await send(ws, frame, binary)
    assert answer["type"] == "error", answer
    assert answer["status"] == status
    assert answer["error"]["message"]
    if status == 409:
        want = "retry_mismatch" if case == "retry with other inputs" else "session_rolled_back"
        assert answer["error"]["code"] == want
        assert answer["error"]["expected_seq"] == 1
    else:
        assert answer["error"]["field"] == field, answer

    assert (await get_session(live_server.url, session["id"])).json() == before
    # the socket is still open and the bad frame never happened
    same_answer(chunk_ok(await send(ws, {"seq": 1, "inputs": CHUNKS[1]}), 1), reference[1])
    same_answer(chunk_ok(await send(ws, {"seq": 2, "inputs": CHUNKS[2]}), 2), reference[2])


async def test_several_bad_frames_in_a_row(
    stream: tuple[ClientConnection, dict], reference: list[dict]
) -> None:
    ws, _ = stream
    for frame in ("{", "[]", json.dumps({"inputs": [[0] * 5]})):
        await ws.send(frame)
        assert (await recv(ws))["type"] == "error"
    for seq, chunk in enumerate(CHUNKS):
        same_answer(chunk_ok(await send(ws, {"seq": seq, "inputs": chunk}), seq), reference[seq])


async def test_msgpack_frames(
    live_server: LiveServer, stream: tuple[ClientConnection, dict]
) -> None:
    ws, _ = stream
    want = await rest_answers(live_server.url, CHUNKS, include_mask=True)
    for seq, chunk in enumerate(CHUNKS):
        body = {"seq": seq, "inputs": chunk, "include_mask": True}
        answer = chunk_ok(await send(ws, body, binary=True), seq)
        same_answer(answer, want[seq])
        for step in answer["steps"]:
            assert len(step["mask"]) == HIDDEN and sum(step["mask"]) == step["updates"]
    # a retry of the last seq in msgpack is recognised as the same inputs and options
    last = {"seq": len(CHUNKS) - 1, "inputs": CHUNKS[-1], "include_mask": True}
    again = await send(ws, last, binary=True)
    assert again["replayed"] is True


async def test_reconnect_continues_at_next_seq(
    live_server: LiveServer, reference: list[dict]
) -> None:
    async with connect(f"{live_server.ws_url}/v1/stream", compression=None) as ws:
        sid = (await recv(ws))["session"]["id"]
        for seq in (0, 1):
            chunk_ok(await send(ws, {"seq": seq, "inputs": CHUNKS[seq]}), seq)
    summary = (await get_session(live_server.url, sid)).json()  # closing did not delete it
    assert summary["next_seq"] == 2

    url = f"{live_server.ws_url}/v1/sessions/{sid}/stream"
    async with connect(url, compression=None) as ws:
        first = await recv(ws)
        assert first["type"] == "session"
        assert first["session"]["id"] == sid and first["session"]["next_seq"] == 2
        assert first["session"]["steps"] == len(CHUNKS[0]) + len(CHUNKS[1])
        answer = chunk_ok(await send(ws, {"seq": 2, "inputs": CHUNKS[2]}), 2)
        same_answer(answer, reference[2])
        assert answer["steps"][0]["index"] == len(CHUNKS[0]) + len(CHUNKS[1])
        chunk_ok(await send(ws, {"seq": 3, "inputs": CHUNKS[3]}), 3)
    assert (await get_session(live_server.url, sid)).json()["next_seq"] == 4


async def wait_deleted(url: str, sid: str) -> dict:
    """The error body once the session is gone (the server deletes it after the close)."""
    for _ in range(100):
        r = await get_session(url, sid)
        if r.status_code == 404:
            return r.json()["error"]
        await asyncio.sleep(0.02)
    raise AssertionError(f"session {sid} still exists")


async def test_delete_on_close(live_server: LiveServer) -> None:
    async with connect(
        f"{live_server.ws_url}/v1/stream?delete_on_close=true", compression=None
    ) as ws:
        sid = (await recv(ws))["session"]["id"]
        chunk_ok(await send(ws, {"seq": 0, "inputs": CHUNKS[0]}), 0)
    err = await wait_deleted(live_server.url, sid)
    assert err["code"] == "session_deleted"

    # the same on the existing-session stream
    async with httpx.AsyncClient(base_url=live_server.url) as c:
        sid = (await c.post("/v1/sessions", json={})).json()["id"]
    url = f"{live_server.ws_url}/v1/sessions/{sid}/stream?delete_on_close=true"
    async with connect(url, compression=None) as ws:
        assert (await recv(ws))["type"] == "session"
        chunk_ok(await send(ws, {"seq": 0, "inputs": CHUNKS[0]}), 0)
    assert (await wait_deleted(live_server.url, sid))["code"] == "session_deleted"


async def test_stream_query_parameters(live_server: LiveServer) -> None:
    url = f"{live_server.ws_url}/v1/stream?model={TINY_MODEL}&threshold=0.3&idle_timeout_s=60"
    async with connect(url, compression=None) as ws:
        session = (await recv(ws))["session"]
        assert session["threshold"] == 0.3 and session["idle_timeout_s"] == 60


@pytest.mark.parametrize(
    ("query", "status", "code", "field"),
    [
        ("model=nope", 404, "model_not_found", None),
        ("threshold=1.5", 422, "invalid_input", "threshold"),
        ("threshold=0", 422, "invalid_input", "threshold"),
        ("idle_timeout_s=-1", 422, "invalid_input", "idle_timeout_s"),
    ],
)
async def test_new_stream_with_bad_query(
    live_server: LiveServer, query: str, status: int, code: str, field: str | None
) -> None:
    async with connect(f"{live_server.ws_url}/v1/stream?{query}", compression=None) as ws:
        answer = await recv(ws)
        assert answer["type"] == "error" and answer["status"] == status
        assert answer["error"]["code"] == code
        assert answer["error"].get("field") == field
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 4400


async def test_unknown_session_stream(live_server: LiveServer) -> None:
    url = f"{live_server.ws_url}/v1/sessions/no-such-session/stream"
    async with connect(url, compression=None) as ws:
        answer = await recv(ws)
        assert answer["type"] == "error" and answer["status"] == 404
        assert answer["error"]["code"] == "session_not_found"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 4404


async def test_session_deleted_while_streaming(live_server: LiveServer) -> None:
    """A session deleted over REST mid-stream: the next frame gets a 404 error, then 4404."""
    async with connect(f"{live_server.ws_url}/v1/stream", compression=None) as ws:
        sid = (await recv(ws))["session"]["id"]
        chunk_ok(await send(ws, {"seq": 0, "inputs": CHUNKS[0]}), 0)
        async with httpx.AsyncClient(base_url=live_server.url) as c:
            assert (await c.delete(f"/v1/sessions/{sid}")).status_code == 200
        answer = await send(ws, {"seq": 1, "inputs": CHUNKS[1]})
        assert answer["type"] == "error" and answer["status"] == 404
        assert answer["error"]["code"] == "session_deleted"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 4404
