"""A real Redis that fails: out of memory, restarted, restarted without its data.

Every store failure reaches the client as a JSON error it can act on (507 store_full, 503
store_unavailable), never a plain-text 500 or a dropped connection; a restart is survived by
retrying stale pooled connections; a session lost with a store that kept no data says so.
"""

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service_fixtures import (
    TINY_MODEL,
    LiveServer,
    _pong,
    free_port,
    start_server,
    stop_process,
    stop_server,
)

pytestmark = pytest.mark.slow
ROW = [0.1, 0.9, -0.2, 0.0, 0.1, 0.0]


def run_redis(workdir: Path, port: int, *extra: str) -> subprocess.Popen:
    """redis-server without persistence on `port`, started and answering PING."""
    proc = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not _pong(port):
        assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.02)
    return proc


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[tuple[int, list[subprocess.Popen]]]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    procs: list[subprocess.Popen] = []
    yield free_port(), procs
    for proc in procs:
        stop_process(proc)


def serve_on(served_models: Path, tmp: Path, port: int) -> LiveServer:
    return start_server(
        served_models,
        tmp,
        {"SARNN_STORE": "redis", "SARNN_REDIS_URL": f"redis://127.0.0.1:{port}/0"},
    )


def test_redis_at_maxmemory_answers_507_json(
    served_models: Path, tmp_path: Path, redis_port: tuple[int, list]
) -> None:
    port, procs = redis_port
    procs.append(
        run_redis(tmp_path, port, "--maxmemory", "3mb", "--maxmemory-policy", "noeviction")
    )
    server = serve_on(served_models, tmp_path, port)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            statuses: dict[int, int] = {}
            created = []
            for _ in range(3000):
                r = c.post("/v1/sessions", json={"model": TINY_MODEL})
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                assert r.headers["content-type"] == "application/json", r.text
                if r.status_code == 201:
                    created.append(r.json()["id"])
                    continue
                assert r.status_code == 507, r.text
                assert r.json()["error"]["code"] == "store_full"
                if statuses[507] >= 5:
                    break
            assert statuses.get(507, 0) >= 5 and created, statuses
            # nothing half-written: with memory to spare again, every created session answers
            subprocess.run(
                [shutil.which("redis-cli"), "-p", str(port), "config", "set", "maxmemory", "0"],
                check=True,
                capture_output=True,
            )
            for sid in created[:: max(1, len(created) // 20)]:
                assert c.get(f"/v1/sessions/{sid}").json()["next_seq"] == 0
    finally:
        stop_server(server)


def test_restart_is_survived_and_a_lost_session_says_so(
    served_models: Path, tmp_path: Path, redis_port: tuple[int, list]
) -> None:
    port, procs = redis_port
    procs.append(run_redis(tmp_path, port))
    server = serve_on(served_models, tmp_path, port)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            sid = c.post("/v1/sessions", json={"model": TINY_MODEL}).json()["id"]
            assert c.post(f"/v1/sessions/{sid}/chunks", json={"seq": 0, "inputs": [ROW]}).is_success

            stop_process(procs.pop())
            down = c.get(f"/v1/sessions/{sid}")
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "store_unavailable"

            procs.append(run_redis(tmp_path, port))
            # the pooled connections are stale: the first request after the restart succeeds
            # (retried), and the session, kept by a store without persistence, is gone
            lost = c.get(f"/v1/sessions/{sid}")
            assert lost.status_code == 404, lost.text
            assert "lost with the session store" in lost.json()["error"]["message"]
            assert c.post("/v1/sessions", json={"model": TINY_MODEL}).status_code == 201
    finally:
        stop_server(server)
