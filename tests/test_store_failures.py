"""A real Redis that fails: out of memory, stalled, restarted, restarted without its data,
unreachable or refusing the password at start-up.

Every store failure reaches the client as a JSON error it can act on (507 store_full, 503
store_unavailable), never a plain-text 500 or a dropped connection; at maxmemory sessions can
still be read, deleted and swept; a stalled Redis never makes a chunk sent once look replayed;
a restart is survived by retrying stale pooled connections; a session lost with a store that
kept no data says so; a server whose store does not answer at start-up starts, says so in one
line and is not ready until the store answers.
"""

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from sarnn_serve.metrics import Monitor, PromMetrics
from sarnn_serve.registry import LoadedModel, Registry
from sarnn_serve.schemas import ChunkRequest, SessionCreate
from sarnn_serve.service import DataPlane
from sarnn_serve.settings import Settings
from tests.fixtures import CARD, MODEL, FakeEngine, anonymous
from tests.service_fixtures import (
    TINY_MODEL,
    UNLIMITED,
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


def redis_cli(port: int, *args: str) -> str:
    done = subprocess.run(
        [shutil.which("redis-cli"), "-p", str(port), *args], check=True, capture_output=True
    )
    return done.stdout.decode()


def test_at_maxmemory_sessions_are_read_deleted_and_swept(
    served_models: Path, tmp_path: Path, redis_port: tuple[int, list]
) -> None:
    port, procs = redis_port
    procs.append(
        run_redis(tmp_path, port, "--maxmemory", "3mb", "--maxmemory-policy", "noeviction")
    )
    server = start_server(
        served_models,
        tmp_path,
        {
            "SARNN_STORE": "redis",
            "SARNN_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "SARNN_SWEEP_INTERVAL_S": "0.3",
        },
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            brief = c.post("/v1/sessions", json={"model": TINY_MODEL, "idle_timeout_s": 1.0})
            assert brief.status_code == 201, brief.text
            created = []
            while (r := c.post("/v1/sessions", json={"model": TINY_MODEL})).status_code == 201:
                created.append(r.json()["id"])
            assert r.status_code == 507 and created, r.text
            for sid in created[:3]:
                got = c.get(f"/v1/sessions/{sid}")
                assert got.status_code == 200, got.text
                gone = c.delete(f"/v1/sessions/{sid}")
                assert gone.status_code == 200, gone.text
            # the idle session expires and is swept while Redis is still full
            deadline = time.monotonic() + 10
            while "sarnn_sessions_expired_total" not in expired_lines(server):
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.2)
            assert "session sweep failed" not in server.log()
    finally:
        stop_server(server)


def expired_lines(server: LiveServer) -> str:
    """The sessions_expired_total samples of /metrics that count one or more sessions."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return "\n".join(
        line
        for line in text.splitlines()
        if line.startswith("sarnn_sessions_expired_total{") and float(line.split()[-1]) >= 1
    )


class StallingLink:
    """A TCP relay to Redis on a free port that can hold Redis's replies for a while (`stall`):
    commands still reach Redis and run, their answers arrive late, as over a stalled link."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.port = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stall(self, seconds: float) -> None:
        self._open.clear()
        await asyncio.sleep(seconds)
        self._open.set()

    async def close(self) -> None:
        self._server.close()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if held:
                        await self._open.wait()
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(client_r, redis_w, False), pump(redis_r, client_w, True))


async def test_a_stalled_redis_never_replays_a_chunk_sent_once(
    tmp_path: Path, redis_port: tuple[int, list]
) -> None:
    """Redis's reply to a chunk's compare-and-set comes late: the client times out and resends
    it, after Redis ran the first copy. The chunk is applied, answered and counted once."""
    from sarnn_serve.store.redis import RedisStore

    port, procs = redis_port
    procs.append(run_redis(tmp_path, port))
    link = StallingLink(port)
    await link.start()
    engine = FakeEngine()
    executor = ThreadPoolExecutor(1)
    monitor = Monitor(PromMetrics(), {MODEL: CARD.hidden})
    url = f"redis://127.0.0.1:{link.port}/0"
    store = RedisStore(url, f"stall-{uuid.uuid4().hex}", 100, socket_timeout=0.3)
    plane = DataPlane(
        Settings(batch_inline_steps=0),  # the engine runs on its thread
        Registry({MODEL: LoadedModel(CARD, engine)}),
        store,
        monitor,
        executor,
    )
    await plane.start()
    try:
        me = anonymous()
        sid = (await plane.create_session(me, SessionCreate()))["id"]
        x = np.full((5, CARD.n_features), 0.125, np.float32).tolist()
        await plane.advance(me, sid, ChunkRequest(seq=0, inputs=x))  # Redis knows every script
        engine.entered.clear()
        engine.gate.clear()
        chunk = asyncio.create_task(plane.advance(me, sid, ChunkRequest(seq=1, inputs=x)))
        assert await asyncio.to_thread(engine.entered.wait, 10)
        stall = asyncio.create_task(link.stall(0.5))
        await asyncio.sleep(0)
        engine.gate.set()  # the compare-and-set goes out now, into the stall
        result = await chunk
        await stall
        assert result.replayed is False
        assert result.session_steps == 10
        prom = monitor.prom.registry.get_sample_value
        assert prom("sarnn_steps_total", {"model": MODEL}) == 10
        summary = await plane.get_session(me, sid)
        assert summary["next_seq"] == 2 and summary["steps"] == 10
        assert (await store.load(sid)).version == 3
    finally:
        await plane.stop()
        executor.shutdown()
        await link.close()


def start_unready(models: Path, tmp: Path, env: dict[str, str]) -> LiveServer:
    """A server that is up (/healthz answers) whether or not it is ready."""
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    full_env = {
        **os.environ,
        **UNLIMITED,
        "SARNN_MODEL_DIR": str(models),
        "SARNN_PORT": str(port),
        **env,
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sarnn_serve.cli", "serve"],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"server exited:\n{server.log()}"
        assert time.monotonic() < deadline, f"server not up after 60 s:\n{server.log()}"
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)


@pytest.mark.parametrize("fault", ["unreachable", "wrong password"])
def test_a_store_that_does_not_answer_at_start_up(
    served_models: Path, tmp_path: Path, redis_port: tuple[int, list], fault: str
) -> None:
    port, procs = redis_port
    if fault == "wrong password":
        procs.append(run_redis(tmp_path, port))
        redis_cli(port, "config", "set", "requirepass", "right")
        url = f"redis://:wrong@127.0.0.1:{port}/0"
    else:
        url = f"redis://127.0.0.1:{port}/0"
    server = start_unready(
        served_models, tmp_path, {"SARNN_STORE": "redis", "SARNN_REDIS_URL": url}
    )
    try:
        for _ in range(3):
            r = httpx.get(f"{server.url}/readyz", timeout=30)
            assert r.status_code == 503 and r.json()["status"] == "unavailable", r.text
        log = server.log()
        assert "Traceback" not in log, log
        assert log.count("session store not answering") == 1, log
        if fault == "wrong password":
            redis_cli(
                port, "-a", "right", "--no-auth-warning", "config", "set", "requirepass", "wrong"
            )
        else:
            procs.append(run_redis(tmp_path, port))
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/readyz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        r = httpx.post(f"{server.url}/v1/sessions", json={"model": TINY_MODEL}, timeout=30)
        assert r.status_code == 201, r.text
    finally:
        stop_server(server)
