"""A session store that loses answered chunks (a Redis failover to a replica that lacked them)
is reported, never silently diverged from, and the Python client follows the retry rule.

The loss is made exactly: the session's Redis key is saved (DUMP) after chunk k and put back
(RESTORE) after later chunks were answered, as a failover to a replica that had replicated up to
chunk k leaves it. Real redis-server, real sarnn-serve over HTTP and WebSocket; the failovers
themselves are tests/test_redis_cluster.py's and tests/test_redis_sentinel.py's.
"""

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from sarnn_serve.client import ApiError, Client, Retry
from tests.service_fixtures import LiveServer, start_server, stop_server, watch_steps

pytestmark = pytest.mark.slow  # starts sarnn-serve

CHUNK = 10


@pytest.fixture(scope="module")
def server(
    served_models: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, str]]:
    prefix = f"rollback-{uuid.uuid4().hex[:8]}"
    env = {"SARNN_STORE": "redis", "SARNN_REDIS_URL": redis_url, "SARNN_REDIS_PREFIX": prefix}
    live = start_server(served_models, tmp_path_factory.mktemp("rollback"), env)
    yield live, prefix
    stop_server(live)


class Snapshot:
    """A session's stored record, saved and later put back (what a failover would leave)."""

    def __init__(self, redis_url: str, prefix: str, session_id: str) -> None:
        self.r = redis.Redis.from_url(redis_url)
        self.key = f"{prefix}:s:{session_id}"
        self.saved = self.r.dump(self.key)

    def restore(self) -> None:
        self.r.restore(self.key, 600_000, self.saved, replace=True)


def _chunks() -> list[np.ndarray]:
    x = watch_steps()[:120]
    return [x[i : i + CHUNK] for i in range(0, len(x), CHUNK)]


def _clean(url: str) -> list[list[int]]:
    with Client(url) as client, client.open() as session:
        return [list(session.send(c).classes) for c in _chunks()]


def test_a_chunk_ahead_of_the_store_is_reported_and_changes_nothing(
    server: tuple[LiveServer, str], redis_url: str
) -> None:
    live, prefix = server
    chunks = [c.tolist() for c in _chunks()]
    with httpx.Client(base_url=live.url, timeout=30) as c:
        sid = c.post("/v1/sessions", json={}).json()["id"]
        for seq in range(3):
            assert c.post(f"/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": chunks[seq]})
        saved = Snapshot(redis_url, prefix, sid)  # the store after chunks 0..2
        for seq in range(3, 6):
            r = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": chunks[seq]})
            assert r.status_code == 200
        saved.restore()  # the failover: chunks 3..5 were answered, the store lost them
        r = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": 6, "inputs": chunks[6]})
        assert r.status_code == 409
        error = r.json()["error"]
        assert error["code"] == "session_rolled_back"
        assert error["expected_seq"] == 3 and error["got_seq"] == 6
        assert "resend from seq 3" in error["message"]
        assert c.get(f"/v1/sessions/{sid}").json()["next_seq"] == 3  # nothing applied
        # the rule: every chunk again from expected_seq
        for seq in range(3, 7):
            r = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": chunks[seq]})
            assert r.status_code == 200 and r.json()["replayed"] is False
        summary = c.get(f"/v1/sessions/{sid}").json()
        assert summary["next_seq"] == 7 and summary["steps"] == 7 * CHUNK


@pytest.mark.parametrize("transport", ["websocket", "rest"])
def test_the_client_resends_the_lost_chunks_and_ends_as_a_clean_run(
    server: tuple[LiveServer, str], redis_url: str, transport: str
) -> None:
    live, prefix = server
    chunks = _chunks()
    encoding = "binary" if transport == "websocket" else "json"
    with Client(live.url) as client, client.open(transport=transport, encoding=encoding) as s:
        classes = [list(s.send(c).classes) for c in chunks[:4]]
        saved = Snapshot(redis_url, prefix, s.id)
        classes += [list(s.send(c).classes) for c in chunks[4:8]]
        saved.restore()  # chunks 4..7 lost
        classes += [list(s.send(c).classes) for c in chunks[8:]]
        assert s.resent == 4
        summary = s.summary()
    assert classes == _clean(live.url)
    assert summary.next_seq == len(chunks) and summary.steps == 120


def test_a_loss_past_the_kept_chunks_is_raised(
    server: tuple[LiveServer, str], redis_url: str
) -> None:
    live, prefix = server
    chunks = _chunks()
    with Client(live.url, retry=Retry(keep_chunks=2)) as client, client.open() as s:
        s.send(chunks[0])
        saved = Snapshot(redis_url, prefix, s.id)
        for c in chunks[1:5]:
            s.send(c)
        saved.restore()  # chunks 1..4 lost; the session keeps only 3 and 4
        with pytest.raises(ApiError) as info:
            s.send(chunks[5])
    assert info.value.code == "session_rolled_back"
    assert info.value.detail["expected_seq"] == 1
