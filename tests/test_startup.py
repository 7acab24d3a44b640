"""Start-up: what would stop the server is found before any model loads (the listening address
first, then the key file); with the shipped models the real command answers /healthz and
/readyz within seconds, serving on the dense graph while routing is calibrated in the
background, then routes by measurement; one start-up line per model says what it runs.

Bounds are loose (measured: /healthz and /readyz about 1 s after spawn, warm; see
benchmarks/bench_startup.py for the figures); they catch calibration back on the start-up path
(17 s before it moved).
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sarnn_serve import native
from sarnn_serve.background_calibration import BackgroundCalibration, CalibrationJob
from sarnn_serve.engine import DENSE, NATIVE, SPARSE
from sarnn_serve.registry import Registry, load_model
from sarnn_serve.routing import Router
from tests.cli_fixtures import assert_one_line_error, run_cli
from tests.service_fixtures import SHIPPED_MODELS as DEFAULT_MODEL_DIR
from tests.service_fixtures import free_port, stop_process

HEALTHZ_WITHIN_S = 5.0
READYZ_WITHIN_S = 15.0
CALIBRATED_WITHIN_S = 120.0
SHIPPED = sorted(p.name for p in DEFAULT_MODEL_DIR.iterdir() if (p / "model.json").is_file())


def test_port_in_use_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # a model dir that does not exist: the port is what is reported, so it came first
        env = {"SARNN_MODEL_DIR": str(tmp_path / "nowhere")}
        result = run_cli("--port", str(port), env=env)
    assert_one_line_error(result, f"127.0.0.1:{port}", "in use", "--port")


def test_grpc_port_in_use_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {"SARNN_MODEL_DIR": str(tmp_path / "nowhere"), "SARNN_GRPC_PORT": str(port)}
        result = run_cli("--port", str(free_port()), env=env)
    assert_one_line_error(result, f"127.0.0.1:{port}", "in use", "SARNN_GRPC_PORT")
    # the same port for both servers
    env = {"SARNN_MODEL_DIR": str(tmp_path / "nowhere"), "SARNN_GRPC_PORT": str(port)}
    result = run_cli("--port", str(port), env=env)
    assert_one_line_error(result, f"SARNN_GRPC_PORT={port}", "HTTP port too")


def test_unknown_host_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    env = {"SARNN_MODEL_DIR": str(tmp_path / "nowhere"), "SARNN_HOST": "no-such-host.invalid"}
    result = run_cli("--port", str(free_port()), env=env)
    assert_one_line_error(result, "no-such-host.invalid", "cannot listen")


@pytest.mark.parametrize(
    ("content", "fragments"),
    [(None, ["No such file"]), ("sha256:abc me\n", ["keys.txt:1", "sha256:<64 hex>"])],
    ids=["missing", "malformed"],
)
def test_bad_key_file_is_one_line_before_any_model_loads(
    tmp_path: Path, content: str | None, fragments: list[str]
) -> None:
    keys = tmp_path / "keys.txt"
    if content is not None:
        keys.write_text(content)
    env = {"SARNN_MODEL_DIR": str(tmp_path / "nowhere"), "SARNN_API_KEYS_FILE": str(keys)}
    result = run_cli("--port", str(free_port()), env=env)
    assert_one_line_error(result, "SARNN_API_KEYS_FILE", *fragments)


def test_native_kernel_status_says_why_not() -> None:
    model = load_model(DEFAULT_MODEL_DIR / "watch-gru", native_kernel=False)
    assert model.native == "off (SARNN_NATIVE_KERNEL=false)"
    assert NATIVE not in model.engine.paths
    if native.available():
        assert load_model(DEFAULT_MODEL_DIR / "watch-gru").native == "loaded"


def test_native_kernel_not_built_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # a mock: this machine has a C compiler, so the library is built; an install without one
    # is what `available()` returning False stands for
    monkeypatch.setattr(native, "available", lambda: False)
    model = load_model(DEFAULT_MODEL_DIR / "watch-gru")
    assert model.native.startswith("not built") and "C compiler" in model.native
    assert NATIVE not in model.engine.paths


def test_background_calibration_stops_within_an_engine_call() -> None:
    """Stopped while calibrating (each model takes seconds), the thread ends at its next
    engine call and hands on no result."""
    registry = Registry.load(DEFAULT_MODEL_DIR)
    jobs = [
        CalibrationJob(name, m.engine, m.card.n_features, m.card.state_size, m.engine.paths[-1])
        for name, m in registry.models.items()
    ]
    done: list[str] = []

    async def run() -> BackgroundCalibration:
        calibrating = BackgroundCalibration(jobs, lambda name, _: done.append(name))
        calibrating.start()
        await asyncio.sleep(0.3)
        calibrating.stop()
        await asyncio.sleep(0.1)  # a result handed over now would run here
        return calibrating

    calibrating = asyncio.run(run())
    assert calibrating.join(timeout=3.0), "still calibrating after stop"
    assert done == [] and calibrating.pending == SHIPPED


def _command() -> list[str]:
    script = Path(sys.executable).parent / "sarnn-serve"
    return [str(script), "serve"] if script.exists() else [sys.executable, "-m", "sarnn_serve.cli"]


def _get(client: httpx.Client, path: str) -> httpx.Response | None:
    try:
        return client.get(path)
    except httpx.TransportError:
        return None


def test_shipped_models_ready_in_seconds_then_calibrated(tmp_path: Path) -> None:
    """The real `sarnn-serve serve` over the shipped models (auto routing, the default)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SARNN_")}
    env |= {"SARNN_MODEL_DIR": str(DEFAULT_MODEL_DIR), "SARNN_PORT": str(port)}
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        started = time.monotonic()
        proc = subprocess.Popen(_command(), env=env, stdout=log, stderr=subprocess.STDOUT)
    times: dict[str, float] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while "readyz" not in times:
                assert proc.poll() is None, log_path.read_text()
                elapsed = time.monotonic() - started
                assert elapsed < READYZ_WITHIN_S, f"not ready after {elapsed:.1f} s: {times}"
                if "healthz" not in times:
                    health = _get(client, "/healthz")
                    if health is not None and health.status_code == 200:
                        times["healthz"] = time.monotonic() - started
                ready = _get(client, "/readyz") if "healthz" in times else None
                if ready is not None and ready.status_code == 200:
                    times["readyz"] = time.monotonic() - started
                    first = ready.json()
                time.sleep(0.05)
            assert times["healthz"] < HEALTHZ_WITHIN_S, times
            assert first["models"] == SHIPPED
            # ready before calibration is over (it takes seconds a model)
            assert first["calibrating"], first

            # served meanwhile, on the dense graph; a request naming no model gets the default
            created = client.post("/v1/sessions", json={})
            assert created.status_code == 201, created.text
            assert created.json()["model"] == "watch-gru"
            sid = created.json()["id"]
            chunk = client.post(
                f"/v1/sessions/{sid}/chunks", json={"seq": 0, "inputs": [[0.1] * 6]}
            )
            assert chunk.status_code == 200, chunk.text

            while client.get("/readyz").json()["calibrating"]:
                assert time.monotonic() - started < CALIBRATED_WITHIN_S, "calibration stalled"
                time.sleep(0.2)
            engine = client.get("/v1/models/watch-gru/stats").json()["engine"]
            assert engine["routing"] == "auto"
            assert engine["calibration"]["path"] in engine["graphs"]
            metrics = client.get("/metrics").text
            assert 'sarnn_sparse_crossover_update_rate{batch="1",model="watch-gru"}' in metrics
    finally:
        stop_process(proc)

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line[:1] == "{"]
    ready = {e["model"]: e for e in lines if e["event"] == "model ready"}
    assert sorted(ready) == SHIPPED, "one start-up line per model"
    for entry in ready.values():
        assert entry["paths"][0] == "dense" and entry["routing"] == "auto", entry
        assert entry["native_kernel"] == "loaded" or NATIVE not in entry["paths"], entry
        assert "in the background" in entry["calibration"], entry
    (started,) = [e for e in lines if e["event"] == "ready"]
    assert started["default_model"] == "watch-gru", started
    assert "SARNN_DEFAULT_MODEL" in started["default_because"]
    calibrated = [e["model"] for e in lines if e["event"] == "routing calibrated"]
    assert sorted(calibrated) == SHIPPED


def test_forced_path_runs_before_calibration() -> None:
    """SARNN_ENGINE_PATH=native (or sparse) holds from the first call; auto runs dense until
    calibrated."""
    assert Router(NATIVE, None).plan([0.5, 0.9]) == [(NATIVE, [0, 1])]
    assert Router(SPARSE, None).plan([0.5]) == [(SPARSE, [0])]
    assert Router("auto", None).plan([0.0]) == [(DENSE, [0])]


def test_default_model_is_the_first_selective_by_name() -> None:
    registry = Registry.load(DEFAULT_MODEL_DIR)
    assert not registry.get("watch-dense-gru73").card.selective  # first by name, a baseline
    name, because = registry.default()
    shipped = len(list(DEFAULT_MODEL_DIR.glob("*/model.onnx")))
    assert name == "watch-gru" and f"first selective model by name of {shipped}" in because
    assert registry.default("watch-gru-1024") == ("watch-gru-1024", "SARNN_DEFAULT_MODEL")
    dense = registry.get("watch-dense-gru73")
    assert Registry({"b": dense, "a": dense}).default()[0] == "a"  # all dense: first by name
    assert Registry({"b": dense}).default() == ("b", "the only model")
