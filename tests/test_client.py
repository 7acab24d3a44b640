"""The Python client (sarnn_serve.client) against a real sarnn-serve: typed answers equal to the
raw protocol's on every transport, seq kept across a resume, a chunk whose answer was lost
answered once, API keys, and errors that say what happened."""

import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from sarnn_serve.client import (
    ApiError,
    AsyncClient,
    Client,
    RetriesExhausted,
    Retry,
    SessionLost,
    array_chunks,
    csv_chunks,
)
from tests.service_fixtures import TINY_MODEL, LiveServer, free_port, start_server, stop_server

pytestmark = pytest.mark.slow  # starts sarnn-serve processes

FEATURES = ["ax", "ay", "az", "wx", "wy", "wz"]
LINKS = [("websocket", "binary"), ("websocket", "json"), ("websocket", "msgpack"), ("rest", "json")]


def steps(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(0.0, 1.0, (n, 6)) * [0.6, 0.6, 0.6, 1.5, 1.5, 1.5]).astype(np.float32)


def raw_rest_answers(url: str, x: np.ndarray, size: int) -> list[dict]:
    """Per-step answers of a new session fed x in chunks of `size` with plain HTTP requests."""
    with httpx.Client(base_url=url, timeout=30) as c:
        sid = c.post("/v1/sessions", json={"model": TINY_MODEL}).json()["id"]
        out = []
        for seq, rows in enumerate(array_chunks(x, size)):
            r = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": rows.tolist()})
            assert r.status_code == 200, r.text
            out += r.json()["steps"]
        c.delete(f"/v1/sessions/{sid}")
    return out


@pytest.mark.parametrize(("transport", "encoding"), LINKS)
def test_every_link_answers_as_the_raw_protocol(
    live_server: LiveServer, transport: str, encoding: str
) -> None:
    x = steps(40)
    want = raw_rest_answers(live_server.url, x, 7)
    with (
        Client(live_server.url) as client,
        client.open(
            TINY_MODEL, transport=transport, encoding=encoding, include_probabilities=True
        ) as session,
    ):
        answers = list(session.stream_array(x, 7))
        totals = session.summary()
    assert [a.seq for a in answers] == list(range(6))
    assert [a.first_index for a in answers] == list(range(0, 40, 7))
    assert not any(a.replayed for a in answers)
    got_labels = [label for a in answers for label in a.labels]
    assert got_labels == [s["label"] for s in want]
    assert np.concatenate([a.classes for a in answers]).tolist() == [s["class"] for s in want]
    assert np.concatenate([a.updates for a in answers]).tolist() == [s["updates"] for s in want]
    probabilities = np.concatenate([a.probabilities for a in answers])
    np.testing.assert_allclose(probabilities, [s["probabilities"] for s in want], atol=1e-6)
    assert answers[-1].session_steps == totals.steps == 40 and totals.next_seq == 6
    assert answers[-1].session_updates == totals.updates == sum(s["updates"] for s in want)


def test_resume_continues_at_the_next_seq(live_server: LiveServer) -> None:
    x = steps(12, seed=1)
    with Client(live_server.ws_url) as client:
        first = client.open(TINY_MODEL)
        first.send(x[:4])
        first.send(x[4:8])
        first.detach()
        again = client.resume(first.id, transport="rest", encoding="json")
        assert again.next_seq == 2
        answer = again.send(x[8:])
        assert (answer.seq, answer.first_index, answer.session_steps) == (2, 8, 12)
        assert again.delete().steps == 12


def test_a_chunk_whose_answer_was_lost_is_answered_once(live_server: LiveServer) -> None:
    """The server applied seq 0 but its answer never came back (here: someone else's request
    carried it); the client sends seq 0 again and gets the stored answer, not a second step."""
    x = steps(5, seed=2)
    with Client(live_server.url) as client, client.open(TINY_MODEL, encoding="json") as session:
        applied = httpx.post(
            f"{live_server.url}/v1/sessions/{session.id}/chunks",
            json={"seq": 0, "inputs": x.tolist(), "answer": "columns"},
            timeout=30,
        ).json()
        answer = session.send(x)
        assert answer.replayed and answer.seq == 0 and session.next_seq == 1
        assert answer.classes.tolist() == applied["classes"]
        assert answer.updates.tolist() == applied["updates"]
        assert session.summary().steps == 5
        assert session.send(x).seq == 1 and session.summary().steps == 10


def test_a_deleted_session_is_lost_not_retried(live_server: LiveServer) -> None:
    with Client(live_server.url) as client:
        session = client.open(TINY_MODEL)
        session.send(steps(2))
        httpx.delete(f"{live_server.url}/v1/sessions/{session.id}", timeout=30)
        started = time.monotonic()
        with pytest.raises(SessionLost) as lost:
            session.send(steps(2))
        assert lost.value.code == "session_deleted" and time.monotonic() - started < 5
        session.close()  # already gone: nothing to do


def test_bad_input_is_refused_before_or_by_the_server(live_server: LiveServer) -> None:
    with Client(live_server.url) as client, client.open(TINY_MODEL) as session:
        with pytest.raises(ValueError, match="6 features"):
            session.send(np.zeros((2, 5)))
        with pytest.raises(ApiError) as refused:
            session.send(np.full((1, 6), 1e12))  # out of range: the server's 422
        assert refused.value.status == 422 and not refused.value.retryable
        assert session.next_seq == 0 and session.send(steps(1)).seq == 0
        with pytest.raises(ApiError) as unknown:
            client.open("no-such-model")
        assert (unknown.value.status, unknown.value.code) == (404, "model_not_found")


def test_an_unreachable_server_is_retried_then_given_up() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with Client(url, retry=Retry(timeout_s=0.5)) as client, pytest.raises(RetriesExhausted):
        client.models()
    assert 0.25 < time.monotonic() - started < 5  # retried, then gave up within the 0.5 s


async def test_async_client_streams_a_csv(live_server: LiveServer, tmp_path: Path) -> None:
    x = steps(9, seed=3)
    path = tmp_path / "rec.csv"
    rows = [",".join(["t", *reversed(FEATURES)])]
    rows += [",".join([str(i), *(repr(float(v)) for v in row[::-1])]) for i, row in enumerate(x)]
    path.write_text("\n".join(rows) + "\n")
    async with AsyncClient(live_server.url) as client:
        session = await client.open(TINY_MODEL, encoding="json")
        async with session:
            got = [a async for a in session.stream_csv(path, size=4)]
    assert [a.steps for a in got] == [4, 4, 1]
    want = raw_rest_answers(live_server.url, x, 4)
    assert [c for a in got for c in a.classes] == [s["class"] for s in want]


def test_chunk_iterators(tmp_path: Path) -> None:
    x = np.arange(14, dtype=np.float32).reshape(7, 2)
    assert [len(c) for c in array_chunks(x, 3)] == [3, 3, 1]
    assert np.concatenate(list(array_chunks(x, 3))).tolist() == x.tolist()
    with pytest.raises(ValueError, match="at least one step"):
        next(array_chunks(x, 0))
    path = tmp_path / "r.csv"
    path.write_text("b,a,label\n1,2,X\n3,4,X\n5,6,Y\n")
    assert [c.tolist() for c in csv_chunks(path, ["a", "b"], 2)] == [[[2, 1], [4, 3]], [[6, 5]]]
    with pytest.raises(ValueError, match="lacks column 'c'"):
        next(csv_chunks(path, ["a", "c"]))


@pytest.fixture(scope="module")
def keyed_server(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    server = start_server(
        served_models, tmp_path_factory.mktemp("keyed"), {"SARNN_API_KEYS": "k-alice"}
    )
    yield server
    stop_server(server)


def test_api_key(keyed_server: LiveServer, tmp_path: Path) -> None:
    with Client(keyed_server.url) as anonymous, pytest.raises(ApiError) as refused:
        anonymous.open(TINY_MODEL)
    assert refused.value.status == 401
    for transport, encoding in (("websocket", "binary"), ("rest", "json")):
        with Client(keyed_server.url, api_key="k-alice") as client:
            session = client.open(TINY_MODEL, transport=transport, encoding=encoding)
            assert session.send(steps(3)).session_steps == 3
            assert session.delete().steps == 3
    path = tmp_path / "rec.csv"
    path.write_text(",".join(FEATURES) + "\n" + "0.1,0.2,0.3,0.4,0.5,0.6\n" * 5)
    replay = [sys.executable, "-m", "sarnn_serve.cli", "replay", "--url", keyed_server.ws_url,
              "--csv", str(path), "--max-speed", "--no-progress"]  # fmt: skip
    denied = subprocess.run(replay, capture_output=True, text=True, timeout=120)
    assert denied.returncode == 1 and "401" in denied.stderr
    done = subprocess.run([*replay, "--api-key", "k-alice"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "steps            5" in done.stdout


def test_the_client_never_imports_torch() -> None:
    code = "import sys, sarnn_serve.client, sarnn_serve.replay\nassert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
