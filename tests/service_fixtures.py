"""Fixtures for the service suites: a small exported watch model and a real uvicorn server.

`served_models` is a models directory holding the tiny GRU SA-RNN checked in under tests/data
(trained on the real watch data and exported with the real exporter by `python -m export
tiny-fixture`); `RECORDING` is the first 300 samples of held-out watch recording 0 as CSV.
`redis_url` is a real redis-server ($SARNN_TEST_REDIS_URL, or one started on a free port).
`live_server` runs `sarnn-serve` as a separate process on a free loopback port and waits until
/readyz answers.
"""

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

TINY_MODEL = "watch-tiny"
DATA = Path(__file__).resolve().parent / "data"
FIXTURE_MODELS = DATA / "models"
RECORDING = DATA / "watch-test-0.csv"
# the repository's models (a wheel ships none: sarnn_serve.settings.DEFAULT_MODEL_DIR is beside
# the installed package)
SHIPPED_MODELS = DATA.parent.parent / "models"
# Suites that are not about quotas open sessions faster than a client should; they lift them.
# They also compare answers of different sessions bit for bit, which holds on one graph: the
# dense and the sparse graph agree to 1e-5, not to the last bit, so routing (which follows the
# load) stays out of them; the routing suites set SARNN_ENGINE_PATH themselves.
UNLIMITED = {
    "SARNN_SESSION_CREATE_RATE": "1000000",
    "SARNN_SESSION_CREATE_BURST": "1000000",
    "SARNN_MAX_SESSIONS_PER_KEY": "1000000",
    "SARNN_ENGINE_PATH": "dense",
}
REDIS_URL_ENV = "SARNN_TEST_REDIS_URL"
# Every server the suites start (in this process or as a child) serves gRPC on a free port of its
# own, never on the default 8001 another server may hold; tests that call gRPC choose the port.
os.environ.setdefault("SARNN_GRPC_PORT", "0")


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Listening ports come from below the ephemeral range, with room for a Redis Cluster bus port
# (port + 10000) below it too: a port the kernel chose (bind to 0) can be taken as the source
# port of an outgoing connection between the check and the server's bind, and CI once failed so.
LISTEN_PORTS = range(10000, max(10100, _ephemeral_low() - 10000))
_ports_handed_out: set[int] = set()
_port_choice = random.Random()


def free_port() -> int:
    """A loopback port nobody listens on, outside the ephemeral range, never handed out twice
    in one process."""
    for _ in range(1000):
        port = _port_choice.choice(LISTEN_PORTS)
        if port in _ports_handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS}")


@pytest.fixture(scope="session")
def served_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding the tiny checked-in watch model (a copy: tests may add to
    it). Regenerate it with `python -m export tiny-fixture`."""
    models = tmp_path_factory.mktemp("served") / "models"
    shutil.copytree(FIXTURE_MODELS, models)
    return models


def watch_steps() -> np.ndarray:
    """x [300, 6] float32 of RECORDING (raw sensor units, the model card's feature order)."""
    from sarnn_serve.client.recordings import read_csv

    return read_csv(RECORDING, features=["ax", "ay", "az", "wx", "wy", "wz"]).x


@dataclass
class LiveServer:
    """A running sarnn-serve process."""

    url: str
    ws_url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


def start_server(
    models: Path, tmp: Path, env: dict[str, str] | None = None, port: int | None = None
) -> LiveServer:
    """Start `sarnn-serve` on `port` (default: a free one) with SARNN_* overrides in `env`; wait
    until ready and its models' routing calibrated."""
    port = port or free_port()
    log_path = tmp / f"server-{port}-{time.monotonic_ns()}.log"
    full_env = {
        **os.environ,
        **UNLIMITED,
        "SARNN_MODEL_DIR": str(models),
        "SARNN_PORT": str(port),
        **(env or {}),
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sarnn_serve.cli", "serve"],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
        try:
            ready = httpx.get(f"{url}/readyz", timeout=1)
            # calibrated too: routing by measurement from the first chunk, as suites expect
            if ready.status_code == 200 and not ready.json()["calibrating"]:
                return LiveServer(url, f"ws://127.0.0.1:{port}", process, log_path)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server not ready after 60 s:\n{log_path.read_text()}")


def stop_server(server: LiveServer) -> None:
    stop_process(server.process)


@pytest.fixture(scope="module")
def live_server(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A real uvicorn serving the tiny watch model with the in-memory store."""
    server = start_server(served_models, tmp_path_factory.mktemp("live"))
    yield server
    stop_server(server)


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis: $SARNN_TEST_REDIS_URL, or a redis-server started for this session."""
    pytest.importorskip("redis", reason="redis-py is not installed (pip install .[redis])")
    if url := os.environ.get(REDIS_URL_ENV):
        yield url
        return
    if shutil.which("redis-server") is None:
        pytest.skip(f"no Redis: redis-server is not on PATH and {REDIS_URL_ENV} is not set")
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop_process(proc)


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    """A redis-server without persistence on a free loopback port; its process and URL."""
    exe = shutil.which("redis-server")
    for _ in range(3):  # the free port may be taken between probing and binding
        port = free_port()
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline and not _pong(port):
            time.sleep(0.02)
        if proc.poll() is None and _pong(port):
            return proc, f"redis://127.0.0.1:{port}/0"
        stop_process(proc)
    raise RuntimeError(f"redis-server did not start; see {workdir / 'redis.log'}")


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
