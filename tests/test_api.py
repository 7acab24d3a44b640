"""The REST API over real HTTP: a `sarnn-serve` process on loopback, driven with httpx.

Answers are checked against references that could disagree: a fresh session fed the same history,
the stateless predict route, and the exported graph run offline with onnxruntime from a zero state.
Every rejected request must leave the session exactly as it was: its summary, and the answer the
next valid chunk gets.
"""

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.service_fixtures import TINY_MODEL, LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow  # starts sarnn-serve processes

FEATURES = 6
HIDDEN = 16
N_CLASSES = 7
REPO = Path(__file__).resolve().parent.parent

# --- helpers ----------------------------------------------------------------------------------


def recording(seed: int, steps: int) -> list[list[float]]:
    """Watch-like raw samples (float32 values, so JSON round-trips them exactly)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (steps, FEATURES)) * [0.6, 0.6, 0.6, 1.5, 1.5, 1.5]
    return x.astype(np.float32).tolist()


def split(x: list, sizes: list[int]) -> list[list]:
    out, at = [], 0
    for n in sizes:
        out.append(x[at : at + n])
        at += n
    assert at == len(x)
    return out


def random_chunks(x: list, seed: int, max_size: int) -> list[list]:
    rng = np.random.default_rng(seed)
    sizes, left = [], len(x)
    while left:
        n = min(left, int(rng.integers(1, max_size + 1)))
        sizes.append(n)
        left -= n
    return split(x, sizes)


def error_of(r: httpx.Response, status: int, code: str | None = None) -> dict:
    """The {"error": {...}} body of a response that must have `status` (and `code`)."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def create(client: httpx.Client, **body) -> dict:
    r = client.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def post_chunk(client: httpx.Client, sid: str, seq: int, inputs: list, **extra) -> httpx.Response:
    return client.post(f"/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": inputs, **extra})


def feed(client: httpx.Client, sid: str, chunks: list[list], first_seq: int = 0) -> list[dict]:
    """Post chunks in order; return the concatenated steps."""
    steps = []
    for i, chunk in enumerate(chunks):
        r = post_chunk(client, sid, first_seq + i, chunk)
        assert r.status_code == 200, r.text
        assert r.json()["replayed"] is False
        steps += r.json()["steps"]
    return steps


def fresh_answer(client: httpx.Client, history: list[list], chunk: list) -> list[dict]:
    """The steps a new session answers to `chunk` after being fed `history`."""
    sid = create(client)["id"]
    feed(client, sid, history)
    r = post_chunk(client, sid, len(history), chunk)
    assert r.status_code == 200, r.text
    client.delete(f"/v1/sessions/{sid}")
    return r.json()["steps"]


Offline = Callable[[list[list[float]]], tuple[list[int], list[int], np.ndarray]]


def assert_steps_match(steps: list[dict], ref: tuple, first_index: int = 0) -> None:
    """Per-step answers equal an offline run: class and update count exactly, probabilities
    within 1e-5; indices count on from `first_index`."""
    classes, updates, probs = ref
    assert [s["index"] for s in steps] == list(range(first_index, first_index + len(steps)))
    assert [s["class"] for s in steps] == classes
    assert [s["updates"] for s in steps] == updates
    got = np.asarray([s["probabilities"] for s in steps])
    np.testing.assert_allclose(got, probs, rtol=0, atol=1e-5)


def metric(server: LiveServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    m = re.search(rf'^{name}\{{model="{TINY_MODEL}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def limited(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A second server with small limits: 3 sessions, 50 steps a chunk, 20000-byte bodies, and
    a sweep every 0.2 s."""
    server = start_server(
        served_models,
        tmp_path_factory.mktemp("limited"),
        env={
            "SARNN_MAX_SESSIONS": "3",
            "SARNN_SWEEP_INTERVAL_S": "0.2",
            "SARNN_MAX_CHUNK_STEPS": "50",
            "SARNN_MAX_BODY_BYTES": "20000",
        },
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def limited_client(limited: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def offline(served_models: Path) -> Offline:
    """Run the exported graph over a whole sequence from a zero state, as the server reports it
    (softmax in float64 rounded to float32, argmax of that)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        str(served_models / TINY_MODEL / "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )

    def run(x: list[list[float]]) -> tuple[list[int], list[int], np.ndarray]:
        feed = {"x": np.asarray(x, np.float32)[None], "state": np.zeros((1, HIDDEN), np.float32)}
        logits, updates, _ = sess.run(None, feed)
        z = logits[0].astype(np.float64)
        e = np.exp(z - z.max(-1, keepdims=True))
        probs = (e / e.sum(-1, keepdims=True)).astype(np.float32)
        return probs.argmax(-1).tolist(), updates[0].sum(-1).astype(int).tolist(), probs

    return run


HISTORY = recording(1, 12)  # chunk seq 0 of the state-preservation tests
NEXT = recording(2, 9)  # chunk seq 1


@pytest.fixture(scope="module")
def reference_next(client: httpx.Client) -> list[dict]:
    """What a fresh session answers to NEXT after HISTORY."""
    return fresh_answer(client, [HISTORY], NEXT)


# --- sessions ---------------------------------------------------------------------------------


def test_session_lifecycle(client: httpx.Client) -> None:
    created = create(client, threshold=0.4, idle_timeout_s=60)
    sid = created["id"]
    assert created["model"] == TINY_MODEL
    assert created["threshold"] == 0.4
    assert created["idle_timeout_s"] == 60
    assert (created["next_seq"], created["steps"], created["updates"]) == (0, 0, 0)
    assert client.get(f"/v1/sessions/{sid}").json() == created

    r = post_chunk(client, sid, 0, HISTORY)
    assert r.status_code == 200, r.text
    chunk = r.json()
    assert chunk["type"] == "chunk" and chunk["session_id"] == sid and chunk["seq"] == 0
    assert chunk["replayed"] is False
    assert len(chunk["steps"]) == len(HISTORY)
    step_updates = sum(s["updates"] for s in chunk["steps"])
    assert chunk["chunk"]["steps"] == len(HISTORY)
    assert chunk["chunk"]["updates"] == step_updates
    assert chunk["chunk"]["update_rate"] == pytest.approx(step_updates / (len(HISTORY) * HIDDEN))
    assert chunk["chunk"]["macs_saved"] == (
        chunk["chunk"]["macs_dense"] - chunk["chunk"]["macs_selective"]
    )
    for s in chunk["steps"]:
        assert len(s["probabilities"]) == N_CLASSES
        assert sum(s["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert 0 <= s["updates"] <= HIDDEN
        assert "mask" not in s

    summary = client.get(f"/v1/sessions/{sid}").json()
    assert summary == chunk["session"]
    assert (summary["next_seq"], summary["steps"], summary["updates"]) == (
        1,
        len(HISTORY),
        step_updates,
    )

    r = client.delete(f"/v1/sessions/{sid}")
    assert r.status_code == 200, r.text
    assert r.json() == summary  # the final summary
    err = error_of(client.get(f"/v1/sessions/{sid}"), 404, "session_deleted")
    assert sid in err["message"] and "deleted" in err["message"]
    error_of(post_chunk(client, sid, 1, NEXT), 404, "session_deleted")
    error_of(client.delete(f"/v1/sessions/{sid}"), 404, "session_deleted")


def test_unknown_session(client: httpx.Client) -> None:
    error_of(client.get("/v1/sessions/no-such-session"), 404, "session_not_found")
    error_of(post_chunk(client, "no-such-session", 0, NEXT), 404, "session_not_found")
    error_of(client.delete("/v1/sessions/no-such-session"), 404, "session_not_found")


def test_session_ids_are_unguessable(client: httpx.Client) -> None:
    ids = [create(client)["id"] for _ in range(100)]
    assert len(set(ids)) == 100
    for sid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{20,}", sid), sid
    for sid in ids:
        client.delete(f"/v1/sessions/{sid}")


def test_include_mask(client: httpx.Client) -> None:
    sid = create(client)["id"]
    r = post_chunk(client, sid, 0, HISTORY, include_mask=True)
    assert r.status_code == 200, r.text
    for s in r.json()["steps"]:
        assert len(s["mask"]) == HIDDEN and set(s["mask"]) <= {0, 1}
        assert sum(s["mask"]) == s["updates"]


def test_idle_session_expires(limited: LiveServer, limited_client: httpx.Client) -> None:
    c = limited_client
    expired_before = metric(limited, "sarnn_sessions_expired_total")
    keep = create(c)["id"]
    sid = create(c, idle_timeout_s=1.0)["id"]
    assert post_chunk(c, sid, 0, HISTORY).status_code == 200
    touched = time.monotonic()
    time.sleep(1.5)
    # the sweeper (every 0.2 s) drops it without anyone asking (a little slack for busy cores)
    while metric(limited, "sarnn_sessions_expired_total") < expired_before + 1:
        assert time.monotonic() - touched < 5, "the idle session was not swept"
        time.sleep(0.1)
    assert metric(limited, "sarnn_sessions_expired_total") == expired_before + 1
    for r in (c.get(f"/v1/sessions/{sid}"), post_chunk(c, sid, 1, NEXT)):
        err = error_of(r, 404, "session_expired")
        assert "expired" in err["message"]
    assert c.get(f"/v1/sessions/{keep}").status_code == 200  # the default timeout is long
    c.delete(f"/v1/sessions/{keep}")


def test_least_recently_used_session_is_evicted(limited_client: httpx.Client) -> None:
    c = limited_client
    a, b, d = (create(c)["id"] for _ in range(3))
    assert c.get(f"/v1/sessions/{a}").status_code == 200  # a is now used more recently than b
    e = create(c)["id"]  # max 3: evicts b, the least recently used
    err = error_of(c.get(f"/v1/sessions/{b}"), 404, "session_evicted")
    assert "evicted" in err["message"]
    error_of(post_chunk(c, b, 0, HISTORY), 404, "session_evicted")
    for sid in (a, d, e):
        assert c.get(f"/v1/sessions/{sid}").status_code == 200
    for sid in (a, d, e):
        c.delete(f"/v1/sessions/{sid}")


# --- the seq rule -----------------------------------------------------------------------------


def test_retry_of_last_seq_replays_without_advancing(
    client: httpx.Client, reference_next: list[dict]
) -> None:
    sid = create(client)["id"]
    first = post_chunk(client, sid, 0, HISTORY).json()
    before = client.get(f"/v1/sessions/{sid}").json()

    for _ in range(2):
        r = post_chunk(client, sid, 0, HISTORY)
        assert r.status_code == 200, r.text
        again = r.json()
        assert again["replayed"] is True
        assert again["steps"] == first["steps"]
        assert again["chunk"] == first["chunk"]
        assert again["session"] == first["session"]  # totals unchanged
        assert client.get(f"/v1/sessions/{sid}").json() == before

    # a retry that asks for masks the applied chunk did not keep is refused, not answered short
    err = error_of(post_chunk(client, sid, 0, HISTORY, include_mask=True), 409, "retry_mismatch")
    assert err["expected_seq"] == 1
    assert client.get(f"/v1/sessions/{sid}").json() == before

    r = post_chunk(client, sid, 1, NEXT)
    assert r.status_code == 200 and r.json()["replayed"] is False
    assert r.json()["steps"] == reference_next
    assert r.json()["session"]["next_seq"] == 2


@pytest.mark.parametrize(
    ("seq", "inputs", "code", "what"),
    [
        (0, NEXT, "retry_mismatch", "retry of the last seq with other inputs"),
        (0, HISTORY[:-1], "retry_mismatch", "retry of the last seq with fewer steps"),
        (2, NEXT, "session_rolled_back", "gap"),
        (7, NEXT, "session_rolled_back", "far gap"),
    ],
)
def test_seq_conflict_leaves_session_untouched(
    client: httpx.Client,
    reference_next: list[dict],
    seq: int,
    inputs: list,
    code: str,
    what: str,
) -> None:
    sid = create(client)["id"]
    post_chunk(client, sid, 0, HISTORY)
    before = client.get(f"/v1/sessions/{sid}").json()
    err = error_of(post_chunk(client, sid, seq, inputs), 409, code)
    assert err["expected_seq"] == 1, what
    assert client.get(f"/v1/sessions/{sid}").json() == before
    r = post_chunk(client, sid, 1, NEXT)
    assert r.status_code == 200, r.text
    assert r.json()["steps"] == reference_next
    client.delete(f"/v1/sessions/{sid}")


def test_stale_seq_conflicts(client: httpx.Client) -> None:
    sid = create(client)["id"]
    feed(client, sid, [HISTORY, NEXT, HISTORY])
    err = error_of(post_chunk(client, sid, 0, HISTORY), 409, "seq_conflict")
    assert err["expected_seq"] == 3
    assert client.get(f"/v1/sessions/{sid}").json()["next_seq"] == 3


# --- bad input --------------------------------------------------------------------------------


def _raw(inputs: str, seq: str = "1", extra: str = "") -> bytes:
    return f'{{"seq": {seq}, "inputs": {inputs}{extra}}}'.encode()


ROW = "[0.1, -0.2, 0.3, 1.0, -1.5, 0.25]"
BAD_CHUNKS = {
    # id: (raw body, status, code, field)
    "five features": (_raw("[[1, 2, 3, 4, 5]]"), 422, "invalid_input", "inputs[0]"),
    "seven features": (_raw("[[1, 2, 3, 4, 5, 6, 7]]"), 422, "invalid_input", "inputs[0]"),
    "ragged rows": (_raw(f"[{ROW}, [1, 2, 3]]"), 422, "invalid_input", "inputs[1]"),
    "NaN": (_raw(f"[{ROW}, [1, 2, 3, 4, 5, NaN]]"), 422, "invalid_input", "inputs[1][5]"),
    "Infinity": (_raw("[[1, 2, Infinity, 4, 5, 6]]"), 422, "invalid_input", "inputs[0][2]"),
    "-Infinity": (_raw("[[-Infinity, 2, 3, 4, 5, 6]]"), 422, "invalid_input", "inputs[0][0]"),
    "overflowing number": (_raw("[[1e999, 2, 3, 4, 5, 6]]"), 422, "invalid_input", "inputs[0][0]"),
    "string number": (_raw('[[1, 2, "3", 4, 5, 6]]'), 422, "invalid_input", "inputs[0][2]"),
    "null number": (_raw("[[1, 2, 3, null, 5, 6]]"), 422, "invalid_input", "inputs[0][3]"),
    "boolean number": (_raw("[[1, 2, 3, 4, true, 6]]"), 422, "invalid_input", "inputs[0][4]"),
    "step not a list": (_raw("[1, 2, 3, 4, 5, 6]"), 422, "invalid_input", "inputs[0]"),
    "empty chunk": (_raw("[]"), 422, "invalid_input", "inputs"),
    "inputs a string": (_raw('"abc"'), 422, "invalid_input", "inputs"),
    "inputs missing": (b'{"seq": 1}', 422, "invalid_input", "inputs"),
    "seq missing": (f'{{"inputs": [{ROW}]}}'.encode(), 422, "invalid_input", "seq"),
    "seq negative": (_raw(f"[{ROW}]", seq="-1"), 422, "invalid_input", "seq"),
    "seq a string": (_raw(f"[{ROW}]", seq='"one"'), 422, "invalid_input", "seq"),
    "seq fractional": (_raw(f"[{ROW}]", seq="1.5"), 422, "invalid_input", "seq"),
    "unknown field": (_raw(f"[{ROW}]", extra=', "foo": 1'), 422, "invalid_input", "foo"),
    "include_mask not bool": (
        _raw(f"[{ROW}]", extra=', "include_mask": "maybe"'),
        422,
        "invalid_input",
        "include_mask",
    ),
    "malformed JSON": (_raw(f"[{ROW}"), 422, "invalid_json", "body"),
    "JSON not an object": (b"[1, 2]", 422, "invalid_input", "body"),
    "empty body": (b"", 422, None, "body"),
}


@pytest.mark.parametrize("case", list(BAD_CHUNKS))
def test_bad_chunk_is_rejected_and_changes_nothing(
    client: httpx.Client, reference_next: list[dict], case: str
) -> None:
    body, status, code, field = BAD_CHUNKS[case]
    sid = create(client)["id"]
    feed(client, sid, [HISTORY])
    before = client.get(f"/v1/sessions/{sid}").json()
    r = client.post(
        f"/v1/sessions/{sid}/chunks", content=body, headers={"content-type": "application/json"}
    )
    err = error_of(r, status, code)
    assert err.get("field") == field, err
    assert client.get(f"/v1/sessions/{sid}").json() == before
    r = post_chunk(client, sid, 1, NEXT)
    assert r.status_code == 200, r.text
    assert r.json()["steps"] == reference_next
    client.delete(f"/v1/sessions/{sid}")


def _streamed(body: bytes) -> Iterator[bytes]:
    for i in range(0, len(body), 4096):
        yield body[i : i + 4096]


def test_chunk_and_body_limits(limited_client: httpx.Client) -> None:
    c = limited_client
    reference = fresh_answer(c, [HISTORY], NEXT)
    sid = create(c)["id"]
    feed(c, sid, [HISTORY])
    before = c.get(f"/v1/sessions/{sid}").json()
    url = f"/v1/sessions/{sid}/chunks"

    # 51 steps: a small body (about 2 kB) but over SARNN_MAX_CHUNK_STEPS=50
    r = post_chunk(c, sid, 1, recording(3, 51))
    err = error_of(r, 413, "payload_too_large")
    assert err["field"] == "inputs" and "50" in err["message"]

    # over SARNN_MAX_BODY_BYTES=20000, announced by Content-Length, then streamed without it
    big = json.dumps({"seq": 1, "inputs": recording(4, 40)}).encode() + b" " * 20000
    assert len(big) > 20000 and json.loads(big)["seq"] == 1
    for content in (big, _streamed(big)):
        r = c.post(url, content=content, headers={"content-type": "application/json"})
        err = error_of(r, 413, "payload_too_large")
        assert err["field"] == "body"
    assert c.get(f"/v1/sessions/{sid}").json() == before

    # 50 steps pass; the state was untouched by the rejected ones
    r = post_chunk(c, sid, 1, NEXT)
    assert r.status_code == 200, r.text
    assert r.json()["steps"] == reference
    assert post_chunk(c, sid, 2, recording(5, 50)).status_code == 200
    c.delete(f"/v1/sessions/{sid}")


@pytest.mark.parametrize("threshold", [0, 1, -1, 1.5, "x"])
def test_bad_threshold(client: httpx.Client, threshold: object) -> None:
    err = error_of(client.post("/v1/sessions", json={"threshold": threshold}), 422)
    assert err["field"] == "threshold"
    r = client.post(
        f"/v1/models/{TINY_MODEL}/predict", json={"inputs": [NEXT], "threshold": threshold}
    )
    assert error_of(r, 422)["field"] == "threshold"


def test_bad_session_create(client: httpx.Client) -> None:
    assert error_of(client.post("/v1/sessions", json={"idle_timeout_s": 0}), 422)["field"] == (
        "idle_timeout_s"
    )
    assert error_of(client.post("/v1/sessions", json={"bogus": 1}), 422)["field"] == "bogus"
    r = client.post("/v1/sessions", content=b"{", headers={"content-type": "application/json"})
    assert error_of(r, 422, "invalid_json")["field"] == "body"


def test_unknown_model(client: httpx.Client) -> None:
    err = error_of(client.post("/v1/sessions", json={"model": "nope"}), 404, "model_not_found")
    assert "nope" in err["message"] and TINY_MODEL in err["message"]
    r = client.post("/v1/models/nope/predict", json={"inputs": [NEXT]})
    error_of(r, 404, "model_not_found")


def test_threshold_changes_the_gate(client: httpx.Client, offline: Offline) -> None:
    """A higher threshold never updates more neurons at the first step (same zero state)."""
    x = recording(6, 30)
    counts = {}
    for tau in (0.2, 0.5, 0.8):
        sid = create(client, threshold=tau)["id"]
        counts[tau] = [s["updates"] for s in feed(client, sid, [x])]
        client.delete(f"/v1/sessions/{sid}")
    assert counts[0.5] == offline(x)[1]  # the card's default is 0.5
    assert counts[0.2][0] >= counts[0.5][0] >= counts[0.8][0]
    assert sum(counts[0.2]) > sum(counts[0.8])


# --- predict ----------------------------------------------------------------------------------


def test_predict_matches_separate_runs_and_sessions(client: httpx.Client, offline: Offline) -> None:
    a, b = recording(10, 23), recording(11, 70)
    url = f"/v1/models/{TINY_MODEL}/predict"
    r = client.post(url, json={"inputs": [a, b]})
    assert r.status_code == 200, r.text
    both = r.json()
    assert both["model"] == TINY_MODEL
    assert [s["length"] for s in both["sequences"]] == [23, 70]
    assert both["usage"]["steps"] == 93

    for x, seq in zip((a, b), both["sequences"], strict=True):
        ref = offline(x)
        assert_steps_match(seq["steps"], ref)
        assert seq["final"] == seq["steps"][-1]
        assert seq["final"]["class"] == ref[0][-1]
        assert seq["usage"]["updates"] == sum(ref[1])

        alone = client.post(url, json={"inputs": [x]}).json()["sequences"][0]
        assert alone == seq

        sid = create(client)["id"]
        steps = feed(client, sid, random_chunks(x, len(x), 9))
        assert [s["class"] for s in steps] == [s["class"] for s in seq["steps"]]
        assert [s["updates"] for s in steps] == [s["updates"] for s in seq["steps"]]
        assert [s["label"] for s in steps] == [s["label"] for s in seq["steps"]]
        np.testing.assert_allclose(
            [s["probabilities"] for s in steps],
            [s["probabilities"] for s in seq["steps"]],
            rtol=0,
            atol=1e-6,
        )
        client.delete(f"/v1/sessions/{sid}")

    brief = client.post(url, json={"inputs": [a, b], "include_steps": False}).json()
    assert [s["steps"] for s in brief["sequences"]] == [None, None]
    assert [s["final"] for s in brief["sequences"]] == [s["final"] for s in both["sequences"]]
    masked = client.post(url, json={"inputs": [a], "include_mask": True}).json()
    for s in masked["sequences"][0]["steps"]:
        assert len(s["mask"]) == HIDDEN and sum(s["mask"]) == s["updates"]


def test_predict_bad_inputs(client: httpx.Client) -> None:
    url = f"/v1/models/{TINY_MODEL}/predict"
    assert error_of(client.post(url, json={"inputs": []}), 422)["field"] == "inputs"
    r = client.post(url, json={"inputs": [NEXT, [[1, 2, 3]]]})
    assert error_of(r, 422)["field"] == "inputs[1][0]"
    r = client.post(url, json={"inputs": [NEXT, []]})
    assert error_of(r, 422)["field"] == "inputs[1]"


# --- models, docs, operations -----------------------------------------------------------------


def test_models(client: httpx.Client) -> None:
    models = client.get("/v1/models").json()
    card = next(m for m in models if m["name"] == TINY_MODEL)
    assert card["hidden"] == HIDDEN and card["cell"] == "gru"
    assert card["n_features"] == FEATURES
    assert card["feature_names"] == ["ax", "ay", "az", "wx", "wy", "wz"]
    assert len(card["class_labels"]) == N_CLASSES == card["n_classes"]
    assert card["state_size"] == HIDDEN
    assert card["cost_per_step"]["dense_macs"] == 3 * HIDDEN * (FEATURES + HIDDEN)  # GRU
    assert card["cost_per_step"]["selective_macs"] > 0
    assert client.get(f"/v1/models/{TINY_MODEL}").json() == card
    error_of(client.get("/v1/models/nope"), 404, "model_not_found")
    error_of(client.get("/v1/models/nope/stats"), 404, "model_not_found")
    stats = client.get(f"/v1/models/{TINY_MODEL}/stats").json()
    assert stats["model"] == TINY_MODEL and stats["hidden"] == HIDDEN


def test_docs_and_openapi(client: httpx.Client) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "swagger" in r.text.lower()
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("ChunkRequest", "SessionCreate", "PredictRequest", "ErrorBody"):
        assert name in schemas
    assert set(schemas["ChunkRequest"]["properties"]) == {
        "seq",
        "inputs",
        "include_mask",
        "answer",
        "include_probabilities",
    }
    assert "ChunkColumns" in schemas and "ChunkResponse" in schemas
    paths = spec["paths"]

    def body_ref(path: str) -> str:
        content = paths[path]["post"]["requestBody"]["content"]["application/json"]
        return content["schema"]["$ref"]

    assert body_ref("/v1/sessions/{session_id}/chunks").endswith("/ChunkRequest")
    assert body_ref("/v1/sessions").endswith("/SessionCreate")
    assert body_ref("/v1/models/{name}/predict").endswith("/PredictRequest")
    responses = paths["/v1/sessions/{session_id}/chunks"]["post"]["responses"]
    for status in ("200", "404", "409", "413", "422"):
        assert status in responses
    for status in ("404", "409", "413", "422"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/ErrorBody")


def test_health_and_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and TINY_MODEL in ready.json()["models"]
    sid = create(client)["id"]
    feed(client, sid, [HISTORY])
    text = client.get("/metrics").text
    assert f'sarnn_steps_total{{model="{TINY_MODEL}"}}' in text
    assert "sarnn_request_duration_seconds_bucket" in text


NO_TORCH = """
import sys
from fastapi.testclient import TestClient
from sarnn_serve.api.app import create_app
from sarnn_serve.settings import Settings

app = create_app(Settings(model_dir=sys.argv[1]))
with TestClient(app) as client:
    sid = client.post("/v1/sessions", json={}).json()["id"]
    r = client.post(f"/v1/sessions/{sid}/chunks", json={"seq": 0, "inputs": [[0.5] * 6] * 4})
    assert r.status_code == 200, r.text
    assert len(r.json()["steps"]) == 4
    r = client.post(f"/v1/models/{sys.argv[2]}/predict", json={"inputs": [[[0.5] * 6] * 3]})
    assert r.status_code == 200, r.text
print("TORCH_MODULES", sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_runtime_never_imports_torch(served_models: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(served_models), TINY_MODEL],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "TORCH_MODULES []" in out.stdout, out.stdout


# --- concurrency ------------------------------------------------------------------------------

CLIENTS = 50


async def test_concurrent_sessions_do_not_mix_state(
    live_server: LiveServer, offline: Offline
) -> None:
    """50 clients, each its own connection and session, stream different recordings in random
    chunks at once; every per-step answer equals the offline run of its own recording."""
    data = [recording(100 + i, 40 + (i * 7) % 50) for i in range(CLIENTS)]

    async def one(i: int) -> tuple[list[dict], dict]:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as c:
            r = await c.post("/v1/sessions", json={})
            sid = r.json()["id"]
            steps = []
            for seq, chunk in enumerate(random_chunks(data[i], 1000 + i, 16)):
                await asyncio.sleep(0)
                r = await c.post(f"/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": chunk})
                assert r.status_code == 200, r.text
                steps += r.json()["steps"]
            summary = (await c.delete(f"/v1/sessions/{sid}")).json()
            return steps, summary

    results = await asyncio.gather(*(one(i) for i in range(CLIENTS)))
    for x, (steps, summary) in zip(data, results, strict=True):
        ref = offline(x)
        assert_steps_match(steps, ref)
        assert summary["steps"] == len(x)
        assert summary["updates"] == sum(ref[1])


async def test_same_seq_from_many_clients_advances_once(
    live_server: LiveServer, offline: Offline
) -> None:
    async with httpx.AsyncClient(
        base_url=live_server.url, timeout=60, limits=httpx.Limits(max_connections=64)
    ) as c:
        sid = (await c.post("/v1/sessions", json={})).json()["id"]
        url = f"/v1/sessions/{sid}/chunks"
        x0 = recording(200, 8)

        # the same retry-safe request, 40 times at once: one applies, the rest replay it
        rs = await asyncio.gather(*(c.post(url, json={"seq": 0, "inputs": x0}) for _ in range(40)))
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
        bodies = [r.json() for r in rs]
        fresh = [b for b in bodies if not b["replayed"]]
        assert len(fresh) == 1
        for b in bodies:
            assert {**b, "replayed": False} == fresh[0]

        # seq 1 with 40 different inputs at once: one applies, the other 39 conflict
        x1s = [recording(300 + i, 5) for i in range(40)]
        rs = await asyncio.gather(*(c.post(url, json={"seq": 1, "inputs": x}) for x in x1s))
        ok = [i for i, r in enumerate(rs) if r.status_code == 200]
        assert len(ok) == 1, [r.text for r in rs]
        for r in rs:
            if r.status_code != 200:
                assert r.status_code == 409 and r.json()["error"]["expected_seq"] == 2
        winner = rs[ok[0]].json()
        assert winner["replayed"] is False

        summary = (await c.get(f"/v1/sessions/{sid}")).json()
        assert summary["next_seq"] == 2
        assert summary["steps"] == len(x0) + 5
        ref = offline(x0 + x1s[ok[0]])
        assert summary["updates"] == sum(ref[1])
        assert_steps_match(fresh[0]["steps"] + winner["steps"], ref)
        await c.delete(f"/v1/sessions/{sid}")
