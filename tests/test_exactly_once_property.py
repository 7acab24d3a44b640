"""Exactly-once chunks, property-based, over both session stores (memory and Redis).

One fixed recording is cut at random points into chunks and sent as chunk k with seq k, over
REST and WebSocket mixed within one session (the socket continues the session REST created).
Between chunks, noise: the last chunk again (a retry or a duplicate delivery: replayed, same
answer), a later chunk sent early (reordered: 409 session_rolled_back), an old chunk sent late
(409 seq_conflict) and the last seq with other inputs (409 retry_mismatch). None of the noise may
change the session. The property: the per-step answers of the accepted chunks equal those of one
clean run that sends the whole recording as one chunk (class, label and update count exactly,
probabilities within 1e-5), and so do the session's totals.
"""

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from tests.service_fixtures import LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow  # starts sarnn-serve processes

FEATURES = 6
STEPS = 60
TIMEOUT = 10
Transport = Literal["rest", "ws"]
Noise = Literal["retry", "early", "late", "mismatch"]


def recording() -> list[list[float]]:
    """STEPS watch-like samples (float32 values, so JSON round-trips them exactly)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, (STEPS, FEATURES)) * [0.6, 0.6, 0.6, 1.5, 1.5, 1.5]
    return x.astype(np.float32).tolist()


RECORDING = recording()


@dataclass(frozen=True)
class Send:
    """One message of the client script: `noise` of this kind, or (None) the next chunk."""

    transport: Transport
    noise: Noise | None = None
    offset: int = 0  # how far ahead an early seq is, how far back a late one


@dataclass
class Session:
    """One session, reachable over REST and over a socket on /v1/sessions/{id}/stream."""

    http: httpx.Client
    ws: ClientConnection
    id: str

    def send(self, transport: Transport, seq: int, inputs: list) -> tuple[int, dict]:
        """Post a chunk; the HTTP status (or the error frame's) and the answer body."""
        body = {"seq": seq, "inputs": inputs}
        if transport == "rest":
            r = self.http.post(f"/v1/sessions/{self.id}/chunks", json=body)
            return r.status_code, r.json()
        self.ws.send(json.dumps(body))
        answer = json.loads(self.ws.recv(timeout=TIMEOUT))
        if answer["type"] == "error":
            return answer["status"], {"error": answer["error"]}
        return 200, answer

    def totals(self) -> tuple[int, int, int]:
        """steps, updates, next_seq."""
        r = self.http.get(f"/v1/sessions/{self.id}")
        assert r.status_code == 200, r.text
        s = r.json()
        return s["steps"], s["updates"], s["next_seq"]


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(
    request: pytest.FixtureRequest,
    served_models: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    """sarnn-serve with the default (memory) store, then with a Redis store."""
    env = {}
    if request.param == "redis":
        env = {
            "SARNN_STORE": "redis",
            "SARNN_REDIS_URL": request.getfixturevalue("redis_url"),
            "SARNN_REDIS_PREFIX": f"exactly-once-{uuid.uuid4().hex[:8]}",
        }
    server = start_server(served_models, tmp_path_factory.mktemp(request.param), env)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture(scope="module")
def reference(http: httpx.Client) -> list[dict]:
    """The per-step answers of one clean run: the whole recording as chunk 0."""
    sid = http.post("/v1/sessions", json={}).json()["id"]
    r = http.post(f"/v1/sessions/{sid}/chunks", json={"seq": 0, "inputs": RECORDING})
    assert r.status_code == 200, r.text
    http.delete(f"/v1/sessions/{sid}")
    return r.json()["steps"]


@st.composite
def scripts(draw: st.DrawFn) -> tuple[list[list], list[list[Send]]]:
    """Chunks of RECORDING (cut at random points), and per chunk the messages that deliver it:
    noise first, then the chunk itself (the last); after the last chunk, more noise."""
    cuts = draw(st.lists(st.integers(1, STEPS - 1), unique=True, max_size=10))
    chunks = [RECORDING[a:b] for a, b in pairwise([0, *sorted(cuts), STEPS])]
    transport = st.sampled_from(["rest", "ws"])
    plan = []
    for k in range(len(chunks) + 1):
        kinds: list[Noise] = ["early"]
        if k >= 1:
            kinds += ["retry", "mismatch"]
        if k >= 2:
            kinds.append("late")
        offset = st.integers(1, len(chunks))
        sends = draw(
            st.lists(st.builds(Send, transport, st.sampled_from(kinds), offset), max_size=3)
        )
        if k < len(chunks):
            sends.append(Send(draw(transport)))
        plan.append(sends)
    return chunks, plan


def assert_same_steps(got: list[dict], want: list[dict]) -> None:
    """Per-step answers agree: index, label, class and updates exactly, probabilities within
    1e-5."""
    exact = [(s["index"], s["label"], s["class"], s["updates"]) for s in got]
    assert exact == [(s["index"], s["label"], s["class"], s["updates"]) for s in want]
    np.testing.assert_allclose(
        [s["probabilities"] for s in got], [s["probabilities"] for s in want], rtol=0, atol=1e-5
    )


def conflicting(send: Send, chunks: list[list], expected: int) -> tuple[int, list, str]:
    """The seq, inputs and the 409 error code of a noise message other than a retry."""
    if send.noise == "early":  # a later chunk, or one past the end, arriving too soon
        seq = expected + send.offset
        return seq, chunks[min(seq, len(chunks) - 1)], "session_rolled_back"
    if send.noise == "late":  # an old chunk arriving again
        seq = max(0, expected - 1 - send.offset)
        return seq, chunks[seq], "seq_conflict"
    return expected - 1, [[0.0] * FEATURES], "retry_mismatch"  # the last seq, other inputs


def deliver_noise(session: Session, send: Send, chunks: list[list], accepted: list[dict]) -> None:
    """Send one noise message while seq len(accepted) is expected; it must change nothing."""
    expected = len(accepted)
    before = session.totals()
    if send.noise == "retry":
        status, body = session.send(send.transport, expected - 1, chunks[expected - 1])
        assert status == 200, body
        assert body["replayed"] is True and body["seq"] == expected - 1
        assert body["steps"] == accepted[-1]["steps"] and body["chunk"] == accepted[-1]["chunk"]
        assert body["session"]["next_seq"] == expected
    else:
        seq, inputs, code = conflicting(send, chunks, expected)
        status, body = session.send(send.transport, seq, inputs)
        assert status == 409, body
        assert body["error"]["code"] == code and body["error"]["expected_seq"] == expected, body
    assert session.totals() == before


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(script=scripts())
def test_chunking_retries_and_reorders_change_nothing(
    server: LiveServer,
    http: httpx.Client,
    reference: list[dict],
    script: tuple[list[list], list[list[Send]]],
) -> None:
    """Any chunking, delivered with noise over both transports, answers as one clean run."""
    chunks, plan = script
    sid = http.post("/v1/sessions", json={}).json()["id"]
    with connect(f"{server.ws_url}/v1/sessions/{sid}/stream", compression=None) as ws:
        assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "session"
        session = Session(http, ws, sid)
        accepted: list[dict] = []
        for sends in plan:
            for send in sends:
                if send.noise is not None:
                    deliver_noise(session, send, chunks, accepted)
                    continue
                seq = len(accepted)
                status, body = session.send(send.transport, seq, chunks[seq])
                assert status == 200, body
                assert body["replayed"] is False and body["seq"] == seq
                accepted.append(body)
    assert_same_steps([step for answer in accepted for step in answer["steps"]], reference)
    totals = (STEPS, sum(s["updates"] for s in reference), len(chunks))
    assert session.totals() == totals
    http.delete(f"/v1/sessions/{sid}")
