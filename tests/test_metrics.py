"""/metrics and /v1/models/{name}/stats against the sums the responses themselves reported.

A fresh `sarnn-serve` process (so every series starts at zero) gets a real watch recording through
REST chunks, the WebSocket stream and the stateless predict route, plus a retry, 409s, 422s and a
404. The counters must move by exactly what the answers said, the live stats must agree with them,
and every chunk's multiply-adds must follow the cost formula from the model card's shape.
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from tests.service_fixtures import TINY_MODEL, LiveServer, start_server, stop_server, watch_steps

pytestmark = pytest.mark.slow  # starts sarnn-serve processes

GATES = {"gru": 3, "lstm": 4, "rnn": 1}
CHUNKS = "POST /v1/sessions/{session_id}/chunks"
WS = "WS /v1/sessions/{session_id}/stream"
REST_SIZES = (16, 40, 7, 64, 1)
WS_SIZES = (10, 33, 5, 50)
WS_DELETE_SIZES = (12, 12)
PREDICT_LENGTHS = (30, 45)

Samples = dict[tuple[str, frozenset], float]


def scrape(server: LiveServer) -> Samples:
    """Every sample of /metrics keyed by (sample name, labels)."""
    text = httpx.get(f"{server.url}/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Sums:
    """What the answers reported, added up."""

    steps: int = 0
    updates: int = 0
    macs_dense: int = 0
    macs_selective: int = 0
    chunks: list[dict] = field(default_factory=list)  # every applied chunk's (or predict) usage

    def add(self, used: dict) -> None:
        self.steps += used["steps"]
        self.updates += used["updates"]
        self.macs_dense += used["macs_dense"]
        self.macs_selective += used["macs_selective"]
        self.chunks.append(used)


@dataclass
class Traffic:
    card: dict
    before: Samples
    after: Samples
    stats: dict
    total: Sums
    rest: Sums
    ws: Sums
    rest_deleted: dict  # the DELETE answer of the REST session
    ws_session: dict  # GET of the WebSocket session that stays open
    step_updates: int  # updates summed over every per-step entry of the chunk answers


def pieces(x: np.ndarray, sizes: tuple[int, ...], start: int) -> tuple[list[list], int]:
    out = []
    for n in sizes:
        out.append(x[start : start + n].tolist())
        start += n
    return out, start


def wait_for(server: LiveServer, name: str, labels: dict, value: float) -> None:
    deadline = time.monotonic() + 10
    while get(scrape(server), name, **labels) != value:
        assert time.monotonic() < deadline, f"{name}{labels} never reached {value}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A fresh server of this module alone: its counters start at zero."""
    server = start_server(served_models, tmp_path_factory.mktemp("metrics"))
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def traffic(server: LiveServer) -> Traffic:
    x = np.tile(watch_steps(), (2, 1))  # a real recording, twice (raw sensor units)
    c = httpx.Client(base_url=server.url, timeout=30)
    card = c.get(f"/v1/models/{TINY_MODEL}").json()
    before = scrape(server)
    total, rest, ws_sums = Sums(), Sums(), Sums()
    step_updates = 0

    def applied(answer: dict, into: Sums) -> None:
        nonlocal step_updates
        assert answer["type"] == "chunk" and not answer["replayed"]
        step_updates += sum(s["updates"] for s in answer["steps"])
        assert answer["chunk"]["steps"] == len(answer["steps"])
        into.add(answer["chunk"])
        total.add(answer["chunk"])

    # REST: a session, its chunks, a retry of the last one, then a 409, two 422s and a 404
    created = c.post("/v1/sessions", json={"model": TINY_MODEL})
    assert created.status_code == 201
    sid = created.json()["id"]
    chunks, at = pieces(x, REST_SIZES, 0)
    for seq, part in enumerate(chunks):
        r = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": part})
        assert r.status_code == 200, r.text
        applied(r.json(), rest)
    last = len(chunks) - 1
    retry = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": last, "inputs": chunks[last]})
    assert retry.status_code == 200 and retry.json()["replayed"] is True
    conflict = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": last + 5, "inputs": chunks[0]})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "session_rolled_back"
    bad_type = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": "6", "inputs": chunks[0]})
    assert bad_type.status_code == 422
    short_rows = [row[:4] for row in chunks[0]]
    bad_shape = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": last + 1, "inputs": short_rows})
    assert bad_shape.status_code == 422
    assert c.get("/v1/sessions/no-such-session").status_code == 404

    # stateless predict: two sequences from a zero state
    seqs, at = pieces(x, PREDICT_LENGTHS, at)
    r = c.post(f"/v1/models/{TINY_MODEL}/predict", json={"inputs": seqs})
    assert r.status_code == 200, r.text
    predicted = r.json()
    assert sum(s["usage"]["steps"] for s in predicted["sequences"]) == sum(PREDICT_LENGTHS)
    total.add(predicted["usage"])

    # WebSocket: a session that stays open (with a bad message and a stale seq in between) ...
    with connect(f"{server.ws_url}/v1/stream?model={TINY_MODEL}", compression=None) as ws:
        ws_id = json.loads(ws.recv())["session"]["id"]
        chunks, at = pieces(x, WS_SIZES, at)
        for i, part in enumerate(chunks):
            ws.send(json.dumps({"seq": i, "inputs": part}))
            applied(json.loads(ws.recv()), ws_sums)
            if i == 1:
                ws.send(json.dumps({"inputs": [[1.0, 2.0]]}))
                bad = json.loads(ws.recv())
                assert bad["type"] == "error" and bad["status"] == 422
                ws.send(json.dumps({"seq": 0, "inputs": part}))
                stale = json.loads(ws.recv())
                assert stale["type"] == "error" and stale["status"] == 409
    # ... and one deleted when its socket closes
    url = f"{server.ws_url}/v1/stream?model={TINY_MODEL}&delete_on_close=true"
    with connect(url, compression=None) as ws:
        json.loads(ws.recv())
        chunks, at = pieces(x, WS_DELETE_SIZES, at)
        for seq, part in enumerate(chunks):
            ws.send(json.dumps({"seq": seq, "inputs": part}))
            applied(json.loads(ws.recv()), ws_sums)
    wait_for(server, "sarnn_sessions_deleted_total", {"model": TINY_MODEL}, 1)

    deleted = c.delete(f"/v1/sessions/{sid}")
    assert deleted.status_code == 200
    ws_session = c.get(f"/v1/sessions/{ws_id}").json()
    after = scrape(server)
    stats = c.get(f"/v1/models/{TINY_MODEL}/stats").json()
    c.close()
    return Traffic(
        card, before, after, stats, total, rest, ws_sums, deleted.json(), ws_session, step_updates
    )


def delta(t: Traffic, name: str, **labels: str) -> float:
    return get(t.after, name, **labels) - get(t.before, name, **labels)


def test_series_start_at_zero(traffic: Traffic) -> None:
    for name in ("sarnn_steps_total", "sarnn_neuron_updates_total", "sarnn_macs_dense_total"):
        assert get(traffic.before, name, model=TINY_MODEL) == 0


def test_compute_counters_moved_by_the_reported_sums(traffic: Traffic) -> None:
    t, hidden = traffic.total, traffic.card["hidden"]
    expected_steps = sum(REST_SIZES) + sum(WS_SIZES) + sum(WS_DELETE_SIZES) + sum(PREDICT_LENGTHS)
    assert t.steps == expected_steps
    assert 0 < t.updates < t.steps * hidden
    assert traffic.step_updates == traffic.rest.updates + traffic.ws.updates
    assert delta(traffic, "sarnn_steps_total", model=TINY_MODEL) == t.steps
    assert delta(traffic, "sarnn_neuron_updates_total", model=TINY_MODEL) == t.updates
    assert delta(traffic, "sarnn_neuron_slots_total", model=TINY_MODEL) == t.steps * hidden
    assert delta(traffic, "sarnn_macs_dense_total", model=TINY_MODEL) == t.macs_dense
    assert delta(traffic, "sarnn_macs_selective_total", model=TINY_MODEL) == t.macs_selective


def test_every_answer_follows_the_cost_formula(traffic: Traffic) -> None:
    card = traffic.card
    f, h = card["n_features"], card["hidden"]
    per_neuron = GATES[card["cell"]] * (f + h)
    assert card["cost_per_step"]["dense_macs"] == h * per_neuron
    for used in traffic.total.chunks:
        assert used["macs_dense"] == used["steps"] * h * per_neuron
        assert used["macs_selective"] == used["steps"] * h * (f + 1) + used["updates"] * per_neuron
        assert used["macs_saved"] == used["macs_dense"] - used["macs_selective"]
        assert used["update_rate"] == used["updates"] / (used["steps"] * h)


def test_session_totals_are_the_sums_of_their_chunks(traffic: Traffic) -> None:
    rest, ws = traffic.rest_deleted, traffic.ws_session
    assert rest["steps"] == sum(REST_SIZES) == traffic.rest.steps
    assert rest["updates"] == traffic.rest.updates
    assert rest["macs_dense"] == traffic.rest.macs_dense
    assert rest["macs_selective"] == traffic.rest.macs_selective
    kept = traffic.ws.chunks[: len(WS_SIZES)]
    assert ws["steps"] == sum(WS_SIZES) == sum(u["steps"] for u in kept)
    assert ws["updates"] == sum(u["updates"] for u in kept)
    assert ws["macs_saved"] == sum(u["macs_saved"] for u in kept)
    assert ws["next_seq"] == len(WS_SIZES)


def test_session_counters_and_active_gauge(traffic: Traffic) -> None:
    assert delta(traffic, "sarnn_sessions_created_total", model=TINY_MODEL) == 3
    assert delta(traffic, "sarnn_sessions_deleted_total", model=TINY_MODEL) == 2
    assert delta(traffic, "sarnn_sessions_expired_total", model=TINY_MODEL) == 0
    assert delta(traffic, "sarnn_sessions_evicted_total", model=TINY_MODEL) == 0
    assert get(traffic.after, "sarnn_active_sessions", model=TINY_MODEL) == 1
    assert traffic.stats["active_sessions"] == 1


def test_requests_by_endpoint_and_status(traffic: Traffic) -> None:
    def requests(endpoint: str, status: int) -> float:
        return delta(traffic, "sarnn_requests_total", endpoint=endpoint, status=str(status))

    assert requests("POST /v1/sessions", 201) == 1
    assert requests(CHUNKS, 200) == len(REST_SIZES) + 1  # the retry is a 200 too
    assert requests(CHUNKS, 409) == 1
    assert requests(CHUNKS, 422) == 2
    assert requests("GET /v1/sessions/{session_id}", 404) == 1
    assert requests("DELETE /v1/sessions/{session_id}", 200) == 1
    assert requests("POST /v1/models/{name}/predict", 200) == 1
    assert requests(WS, 200) == len(WS_SIZES) + len(WS_DELETE_SIZES)
    assert requests(WS, 422) == 1
    assert requests(WS, 409) == 1


def test_errors_by_reason(traffic: Traffic) -> None:
    assert delta(traffic, "sarnn_errors_total", reason="seq_conflict") == 1
    assert delta(traffic, "sarnn_errors_total", reason="session_rolled_back") == 1
    assert delta(traffic, "sarnn_errors_total", reason="invalid_input") == 3
    assert delta(traffic, "sarnn_errors_total", reason="session_not_found") == 1
    reasons = {
        dict(labels)["reason"]
        for (name, labels), v in traffic.after.items()
        if name == "sarnn_errors_total" and v
    }
    assert reasons == {"seq_conflict", "session_rolled_back", "invalid_input", "session_not_found"}


def test_latency_histograms(traffic: Traffic) -> None:
    for endpoint in (CHUNKS, WS):
        count = delta(traffic, "sarnn_request_duration_seconds_count", endpoint=endpoint)
        handled = sum(
            v
            for (name, labels), v in traffic.after.items()
            if name == "sarnn_requests_total" and dict(labels)["endpoint"] == endpoint
        )
        assert count == handled > 0  # one observation per request, whatever its status
        assert delta(traffic, "sarnn_request_duration_seconds_sum", endpoint=endpoint) > 0
        inf = get(
            traffic.after, "sarnn_request_duration_seconds_bucket", endpoint=endpoint, le="+Inf"
        )
        assert inf == count
    calls = delta(traffic, "sarnn_inference_duration_seconds_count", model=TINY_MODEL)
    applied = len(traffic.rest.chunks) + len(traffic.ws.chunks) + len(PREDICT_LENGTHS)
    assert 0 < calls <= applied  # the micro-batcher may join chunks into one call
    assert delta(traffic, "sarnn_inference_duration_seconds_sum", model=TINY_MODEL) > 0


def test_model_stats_agree_with_the_counters(traffic: Traffic) -> None:
    s, t, hidden = traffic.stats, traffic.total, traffic.card["hidden"]
    assert s["model"] == TINY_MODEL and s["hidden"] == hidden
    assert s["steps"] == t.steps
    assert s["updates"] == t.updates
    assert s["update_rate"] == t.updates / (t.steps * hidden)
    assert s["macs_dense"] == t.macs_dense
    assert s["macs_selective"] == t.macs_selective
    assert s["macs_saved"] == t.macs_dense - t.macs_selective
    assert s["saving"] == pytest.approx(1 - t.macs_selective / t.macs_dense, abs=1e-12)
    # everything happened within the last minute
    assert s["last_minute"]["steps"] == t.steps
    assert s["last_minute"]["update_rate"] == s["update_rate"]
    assert s["last_minute"]["saving"] == s["saving"]
    assert s["last_minute"]["steps_per_s"] > 0
    # and the Prometheus view of the same numbers
    updates = get(traffic.after, "sarnn_neuron_updates_total", model=TINY_MODEL)
    slots = get(traffic.after, "sarnn_neuron_slots_total", model=TINY_MODEL)
    assert updates / slots == pytest.approx(s["update_rate"], rel=1e-12)
