"""The lean chunk path against a real `sarnn-serve`: the columns answer (REST and WebSocket),
the raw binary WebSocket protocol, and sessions kept per worker with --workers 2.

Each lean answer is compared with the full per-step answer of another session fed the same
inputs (values exact in float32, so JSON and binary carry the same numbers): the modes render
one result, so they must agree.
"""

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from sarnn_serve import frames
from tests.service_fixtures import LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow  # starts sarnn-serve processes

FEATURES = 6
TIMEOUT = 10


def steps_of(seed: int, steps: int) -> np.ndarray:
    """Inputs whose values are exact in float32 (multiples of 1/64)."""
    rng = np.random.default_rng(seed)
    return (np.round(rng.normal(0.0, 1.0, (steps, FEATURES)) * 64) / 64).astype(np.float32)


CHUNKS = [steps_of(1, 5), steps_of(2, 1), steps_of(3, 12)]


async def steps_answers(url: str, chunks: list[np.ndarray]) -> list[dict]:
    """The per-step (answer=steps) answers of a new REST session fed `chunks`, with masks."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        sid = (await c.post("/v1/sessions", json={})).json()["id"]
        out = []
        for seq, x in enumerate(chunks):
            body = {"seq": seq, "inputs": x.tolist(), "include_mask": True}
            r = await c.post(f"/v1/sessions/{sid}/chunks", json=body)
            assert r.status_code == 200, r.text
            out.append(r.json())
    return out


def assert_same(lean: dict, full: dict, probabilities: bool, masks: bool) -> None:
    """A columns answer (JSON, or a decoded binary one) agrees with the per-step answer."""
    steps = full["steps"]
    assert lean["seq"] == full["seq"] and lean["replayed"] == full["replayed"]
    assert lean["first_index"] == steps[0]["index"]
    assert list(lean["classes"]) == [s["class"] for s in steps]
    assert list(lean["updates"]) == [s["updates"] for s in steps]
    assert lean["session_steps"] == full["session"]["steps"]
    assert lean["session_updates"] == full["session"]["updates"]
    if probabilities:
        np.testing.assert_array_equal(
            np.asarray(lean["probabilities"], np.float32),
            np.asarray([s["probabilities"] for s in steps], np.float32),
        )
    else:
        assert "probabilities" not in lean
    if masks:
        np.testing.assert_array_equal(np.asarray(lean["masks"]), [s["mask"] for s in steps])
    else:
        assert "masks" not in lean


@pytest.fixture(scope="module")
def reference(live_server: LiveServer) -> list[dict]:
    return asyncio.run(steps_answers(live_server.url, CHUNKS))


async def test_rest_columns_answer_agrees_with_the_steps_answer(
    live_server: LiveServer, reference: list[dict]
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as c:
        sid = (await c.post("/v1/sessions", json={})).json()["id"]
        for seq, x in enumerate(CHUNKS):
            extra = {"include_probabilities": True, "include_mask": True} if seq == 1 else {}
            body = {"seq": seq, "inputs": x.tolist(), "answer": "columns", **extra}
            r = await c.post(f"/v1/sessions/{sid}/chunks", json=body)
            assert r.status_code == 200, r.text
            assert_same(r.json(), reference[seq], probabilities=bool(extra), masks=bool(extra))
        r = await c.post(f"/v1/sessions/{sid}/chunks", json={**body, "answer": "steps"})
        assert r.json()["replayed"] is True and r.json()["steps"][0]["index"] == 6


@pytest.fixture
async def columns_socket(live_server: LiveServer) -> AsyncIterator[ClientConnection]:
    """A socket on /v1/stream whose frames answer in columns unless they say otherwise."""
    async with connect(f"{live_server.ws_url}/v1/stream?answer=columns", compression=None) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert first["type"] == "session"
        yield ws


async def exchange(ws: ClientConnection, frame: str | bytes) -> dict:
    """Send a frame; its answer (a binary answer decoded, a JSON frame parsed)."""
    await ws.send(frame)
    answer = await asyncio.wait_for(ws.recv(), TIMEOUT)
    if isinstance(answer, bytes):
        return frames.decode_answer(answer)
    return json.loads(answer)


async def test_socket_answer_modes_and_binary_frames_agree_with_the_steps_answer(
    columns_socket: ClientConnection, reference: list[dict]
) -> None:
    ws = columns_socket
    lean = await exchange(ws, json.dumps({"seq": 0, "inputs": CHUNKS[0].tolist()}))
    assert_same(lean, reference[0], probabilities=False, masks=False)
    binary = frames.encode_chunk(1, CHUNKS[1], include_mask=True, include_probabilities=True)
    assert_same(await exchange(ws, binary), reference[1], probabilities=True, masks=True)
    full = await exchange(
        ws, json.dumps({"seq": 2, "inputs": CHUNKS[2].tolist(), "answer": "steps"})
    )
    assert full["steps"] == [
        {k: v for k, v in step.items() if k != "mask"} for step in reference[2]["steps"]
    ]


async def test_a_binary_retry_replays_the_answer_and_a_changed_one_is_refused(
    columns_socket: ClientConnection,
) -> None:
    ws = columns_socket
    await exchange(ws, json.dumps({"seq": 0, "inputs": CHUNKS[0].tolist()}))
    first = await exchange(ws, frames.encode_chunk(1, CHUNKS[1]))
    again = await exchange(ws, frames.encode_chunk(1, CHUNKS[1]))  # a retry, same bytes
    assert again["replayed"] and not first["replayed"]
    assert list(again["classes"]) == list(first["classes"])
    assert again["session_steps"] == first["session_steps"] == 6
    as_json = await exchange(ws, json.dumps({"seq": 1, "inputs": CHUNKS[1].tolist()}))
    assert as_json["replayed"]  # the same float32 values: the same chunk, whatever the format
    changed = await exchange(ws, frames.encode_chunk(1, CHUNKS[1] + 1))
    assert changed["error"]["code"] == "retry_mismatch"


def _header(version: int = 1, flags: int = 0, seq: int = 1, steps: int = 1) -> bytes:
    return frames.REQUEST.pack(frames.MAGIC, version, flags, seq, steps)


ROW = CHUNKS[1].tobytes()
BAD_FRAMES = {
    "short header": (b"SR\x01", "body"),
    "unknown version": (_header(version=2) + ROW, "version"),
    "unknown flags": (_header(flags=8) + ROW, "flags"),
    "seq past 2**63": (_header(seq=2**63) + ROW, "seq"),
    "no steps": (_header(steps=0), "inputs"),
    "ragged payload": (_header(steps=2) + ROW + b"\x00" * 4, "inputs"),
    "five features": (_header(steps=1) + ROW[:20], "inputs"),
    "seven features": (_header(steps=1) + ROW + ROW[:4], "inputs"),
    "NaN": (_header() + ROW[:4] + struct.pack("<f", float("nan")) + ROW[8:], "inputs[0][1]"),
    "too large": (_header() + struct.pack("<f", 3e9) + ROW[4:], "inputs[0][0]"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
async def test_a_bad_binary_frame_is_named_and_changes_nothing(
    columns_socket: ClientConnection, case: str
) -> None:
    ws = columns_socket
    await exchange(ws, frames.encode_chunk(0, CHUNKS[0]))
    frame, field = BAD_FRAMES[case]
    error = await exchange(ws, frame)
    assert error["type"] == "error" and error["status"] in (413, 422), error
    assert error["error"]["field"] == field, error
    after = await exchange(ws, frames.encode_chunk(1, CHUNKS[1]))
    assert (after["seq"], after["session_steps"], after["replayed"]) == (1, 6, False)


@pytest.fixture(scope="module")
def two_workers(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    server = start_server(served_models, tmp_path_factory.mktemp("workers"), {"SARNN_WORKERS": "2"})
    yield server
    stop_server(server)


async def test_with_two_workers_and_the_memory_store_sockets_keep_their_sessions(
    two_workers: LiveServer,
) -> None:
    async def stream() -> tuple[str, list[int]]:
        async with connect(f"{two_workers.ws_url}/v1/stream", compression=None) as ws:
            sid = json.loads(await ws.recv())["session"]["id"]
            totals = []
            for seq, x in enumerate(CHUNKS):
                answer = await exchange(ws, frames.encode_chunk(seq, x))
                totals.append(answer["session_steps"])
            return sid, totals

    results = await asyncio.gather(*(stream() for _ in range(8)))
    for sid, totals in results:
        assert sid.startswith("w") and "." in sid  # the worker's tag
        assert totals == [5, 6, 18]
    async with httpx.AsyncClient(base_url=two_workers.url, timeout=30) as c:
        other = await c.get("/v1/sessions/w1.AAAAAAAAAAAAAAAAAAAAAA")  # pid 1 serves nothing
        assert other.status_code == 421 and other.json()["error"]["code"] == "other_worker"
        unknown = await c.get("/v1/sessions/AAAAAAAAAAAAAAAAAAAAAA")
        assert unknown.status_code == 404


def _same_but_session(a: dict, b: dict) -> None:
    volatile = {"session_id", "id", "created", "last_seen"}
    assert {k: v for k, v in a.items() if k not in volatile | {"session"}} == {
        k: v for k, v in b.items() if k not in volatile | {"session"}
    }
    assert {k: v for k, v in a["session"].items() if k not in volatile} == {
        k: v for k, v in b["session"].items() if k not in volatile
    }


async def test_the_fast_chunk_path_answers_as_the_fastapi_route_does(
    live_server: LiveServer,
) -> None:
    """A body of stated length takes the fast path; a streamed one (no Content-Length) the
    FastAPI route: answers, errors and the request count agree."""

    async def streamed(body: bytes) -> AsyncIterator[bytes]:
        yield body

    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as c:
        before = (await c.get("/metrics")).text
        fast_id, route_id = [(await c.post("/v1/sessions", json={})).json()["id"] for _ in "ab"]
        for seq, x in enumerate(CHUNKS):
            body = json.dumps({"seq": seq, "inputs": x.tolist()}).encode()
            headers = {"content-type": "application/json"}
            fast = await c.post(f"/v1/sessions/{fast_id}/chunks", content=body, headers=headers)
            route = await c.post(
                f"/v1/sessions/{route_id}/chunks", content=streamed(body), headers=headers
            )
            assert fast.status_code == route.status_code == 200
            _same_but_session(fast.json(), route.json())
        body = json.dumps({"seq": 0, "inputs": CHUNKS[0].tolist()}).encode()
        errors = [
            await c.post("/v1/sessions/nope/chunks", content=body, headers=headers),
            await c.post("/v1/sessions/nope/chunks", content=streamed(body), headers=headers),
            await c.post(f"/v1/sessions/{fast_id}/chunks", content=body, headers=headers),
            await c.post(
                f"/v1/sessions/{route_id}/chunks", content=streamed(body), headers=headers
            ),
        ]
        assert [e.status_code for e in errors] == [404, 404, 409, 409]
        assert errors[0].json() == errors[1].json() and errors[2].json() == errors[3].json()
        after = (await c.get("/metrics")).text

    def count(text: str, status: str) -> float:
        endpoint = "POST /v1/sessions/{session_id}/chunks"
        label = f'endpoint="{endpoint}",status="{status}"'
        lines = [ln for ln in text.splitlines() if ln.startswith(f"sarnn_requests_total{{{label}")]
        return float(lines[0].split()[-1]) if lines else 0.0

    assert count(after, "200") - count(before, "200") == 2 * len(CHUNKS)
    assert count(after, "404") - count(before, "404") == 2
