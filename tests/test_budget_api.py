"""Compute budgets over real HTTP and WebSocket clients against a real server: sessions opened
with target_update_rate (REST, WebSocket, Open Inference Protocol sequences), the threshold each
answer reports, a retry after the controller moved the threshold, and bad budgets refused."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.service_fixtures import TINY_MODEL, LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow


def _steps(n: int, seed: int) -> list[list[float]]:
    return np.random.default_rng(seed).normal(0, 1, (n, 6)).round(4).tolist()


def _chunk(server: LiveServer, sid: str, seq: int, steps: list) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": steps}, timeout=30
    )


def test_rest_session_with_a_target_rate(live_server: LiveServer):
    card = httpx.get(f"{live_server.url}/v1/models/{TINY_MODEL}").json()
    taus = [p["threshold"] for p in card["threshold_curve"]]
    r = httpx.post(f"{live_server.url}/v1/sessions", json={"target_update_rate": 0.4})
    assert r.status_code == 201, r.text
    session = r.json()
    assert session["target_update_rate"] == 0.4 and session["degrade"] is False
    assert min(taus) <= session["threshold"] <= max(taus)
    sid, planned = session["id"], session["threshold"]
    seen = []
    for seq in range(8):
        answer = _chunk(live_server, sid, seq, _steps(20, seq)).json()
        assert answer["threshold"] == pytest.approx(planned)  # the one announced before it
        assert 0 <= answer["expected_accuracy"] <= 1
        planned = answer["session"]["threshold"]
        seen.append(answer["threshold"])
    assert len(set(seen)) > 1
    # a retry of the last chunk after the threshold moved: the same answer, its own threshold
    last = _chunk(live_server, sid, 7, _steps(20, 7)).json()
    assert last["replayed"] and last["threshold"] == seen[-1]
    lean = httpx.post(
        f"{live_server.url}/v1/sessions/{sid}/chunks",
        json={"seq": 8, "inputs": _steps(3, 8), "answer": "columns"},
    ).json()
    assert lean["threshold"] == pytest.approx(planned)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"target_update_rate": 0.3, "threshold": 0.5}, "not both"),
        ({"target_update_rate": 0}, "greater than 0"),
        ({"target_update_rate": 1.5}, "less than or equal to 1"),
        ({"target_update_rate": "0.3"}, "valid number"),
        ({"degrade": "yes"}, "valid boolean"),
    ],
)
def test_bad_budgets_are_refused(live_server: LiveServer, body: dict, message: str):
    r = httpx.post(f"{live_server.url}/v1/sessions", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] in ("target_update_rate", "degrade") and message in error["message"]


def test_websocket_session_with_a_budget(live_server: LiveServer):
    url = f"{live_server.ws_url}/v1/stream?target_update_rate=0.45&degrade=true&answer=columns"
    with connect(url) as ws:
        opened = json.loads(ws.recv())
        assert opened["type"] == "session", opened
        assert opened["session"]["target_update_rate"] == 0.45
        assert opened["session"]["degrade"] is True
        thresholds = []
        for seq in range(5):
            ws.send(json.dumps({"seq": seq, "inputs": _steps(10, seq)}))
            answer = json.loads(ws.recv())
            assert answer["type"] == "chunk", answer
            thresholds.append(answer["threshold"])
    assert thresholds[0] == opened["session"]["threshold"] and len(set(thresholds)) > 1


@pytest.fixture(scope="module")
def degrading_server(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A server with degradation on: its sockets read ahead of their answers."""
    server = start_server(
        served_models, tmp_path_factory.mktemp("degrading"), {"SARNN_DEGRADE_QUEUE_MS": "20"}
    )
    yield server
    stop_server(server)


def _stream_ahead(server: LiveServer, chunks: int) -> list[dict]:
    """Send every chunk before reading any answer; the answers, in the order they came."""
    with connect(f"{server.ws_url}/v1/stream?answer=columns") as ws:
        assert json.loads(ws.recv())["type"] == "session"
        for seq in range(chunks):
            ws.send(json.dumps({"seq": seq, "inputs": _steps(4, seq)}))
        return [json.loads(ws.recv()) for _ in range(chunks)]


def test_a_socket_that_reads_ahead_answers_as_one_that_does_not(
    degrading_server: LiveServer, live_server: LiveServer
):
    ahead = _stream_ahead(degrading_server, 12)
    assert [a["seq"] for a in ahead] == list(range(12))
    on_demand = _stream_ahead(live_server, 12)
    for got, want in zip(ahead, on_demand, strict=True):
        assert (got["classes"], got["updates"]) == (want["classes"], want["updates"])


def test_sequence_with_a_budget(live_server: LiveServer):
    def infer(seq_id: int, start: bool, steps: int, **extra) -> httpx.Response:
        body = {
            "parameters": {"sequence_id": seq_id, "sequence_start": start, **extra},
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, steps, 6],
                    "datatype": "FP32",
                    "data": [v for step in _steps(steps, seq_id) for v in step],
                }
            ],
        }
        return httpx.post(f"{live_server.url}/v2/models/{TINY_MODEL}/infer", json=body)

    opened = infer(77, True, 10, target_update_rate=0.35)
    assert opened.status_code == 200, opened.text
    assert infer(77, False, 10).status_code == 200
    refused = infer(77, False, 10, target_update_rate=0.2)
    assert refused.status_code == 422, refused.text
    assert "target_update_rate" in refused.json()["error"]
