"""A runtime-only install (`pip install .`, no extras) in a fresh venv serves and replays.

The project is copied to a temporary directory first, so that building the wheel writes its
build/ and egg-info there instead of into the working tree. That venv has no torch: the server
it runs serves the shipped model, and its `sarnn-serve replay` streams a CSV into it.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest

from sarnn_serve.api.grpc_predict_v2_pb2 import ServerLiveRequest
from sarnn_serve.api.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from tests.service_fixtures import free_port, stop_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "runs", "test-artifacts"
)
ROWS = 40


def _env() -> dict[str, str]:
    """This environment without anything that would let the new venv see other packages."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SARNN_")}


def _run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the server was not ready after {timeout:g} s:\n{log.read_text()}")


def _write_csv(path: Path) -> None:
    """ROWS samples of the shipped model's features, seeded noise around a resting pose."""
    features = orjson.loads((MODELS / "watch-gru" / "model.json").read_bytes())["feature_names"]
    rng = np.random.default_rng(0)
    rows = rng.normal(0.0, 0.3, (ROWS, len(features)))
    lines = [",".join(features), *(",".join(f"{v:.4f}" for v in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n")


def test_runtime_install_serves_and_replays_without_torch(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=NOT_COPIED)
    venv = tmp_path / "venv"
    created = _run(sys.executable, "-m", "venv", venv)
    assert created.returncode == 0, created.stderr
    python, cli = venv / "bin" / "python", venv / "bin" / "sarnn-serve"
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", source]
    installed = _run(*pip, timeout=1800)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    assert _run(cli, "--help").returncode == 0
    version = _run(cli, "--version")
    assert version.returncode == 0, version.stderr
    assert re.fullmatch(r"sarnn-serve \S+\n", version.stdout), version.stdout
    no_torch = _run(python, "-c", "import torch")
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr

    port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [cli, "serve", "--port", str(port), "--model-dir", str(MODELS)],
            # as `make serve` does; gRPC on a free port (8001 may be another server's)
            env={**_env(), "SARNN_DEFAULT_MODEL": "watch-gru", "SARNN_GRPC_PORT": str(grpc_port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(url, server, log)
        recording = tmp_path / "recording.csv"
        _write_csv(recording)
        replay = _run(
            cli,
            "replay",
            "--url",
            f"ws://127.0.0.1:{port}",
            "--csv",
            recording,
            "--max-speed",
            "--no-progress",
        )
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert re.search(rf"^steps\s+{ROWS}$", replay.stdout, re.MULTILINE), replay.stdout
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:  # grpcio is a runtime dep
            live = GRPCInferenceServiceStub(channel).ServerLive(ServerLiveRequest(), timeout=10)
        assert live.live
    finally:
        stop_process(server)
