"""benchmarks/load_http.py against a real sarnn-serve: a short closed-loop run on the REST
sessions is clean, and its counts agree with the server's."""

import json
from pathlib import Path

import httpx
import pytest

from benchmarks import load_http
from tests.service_fixtures import TINY_MODEL, LiveServer

# starts a sarnn-serve process; the load generator streams the watch data (`train`)
pytestmark = [pytest.mark.slow, pytest.mark.train]

CLIENTS, CHUNK = 4, 4


def test_sarnn_target_runs_clean(live_server: LiveServer, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    argv = ["--target", "sarnn", "--url", live_server.url, "--model", TINY_MODEL,
            "--clients", str(CLIENTS), "--chunk", str(CHUNK), "--duration", "2",
            "--warmup", "0.5", "--json", str(out)]  # fmt: skip
    assert load_http.main(argv) == 0
    figures = json.loads(out.read_text())
    assert figures["errors"] == 0, figures["error_kinds"]
    assert figures["sessions_open"] == CLIENTS
    assert figures["messages_per_s"] > 0
    assert figures["latency_samples"] > 0
    # each DELETE reported as many steps as its client had answered, and together they are all
    # the steps this server ran (the module's server serves only this test)
    assert figures["sessions_verified"] == CLIENTS
    assert figures["steps_answered"] == CHUNK * figures["messages_answered"]
    stats = httpx.get(f"{live_server.url}/v1/models/{TINY_MODEL}/stats", timeout=10).json()
    assert stats["steps"] == figures["steps_answered"]
