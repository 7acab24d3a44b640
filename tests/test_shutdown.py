"""Shutting the app down while routing still calibrates in the background ends the process
cleanly: a calibration thread left inside onnxruntime when the interpreter exits aborted it
("terminate called without an active exception", exit status 134) about every other time."""

import subprocess
import sys

import pytest

from tests.service_fixtures import FIXTURE_MODELS

pytestmark = pytest.mark.slow  # four interpreters, each loading a model

OPEN_AND_CLOSE = """
import sys
from fastapi.testclient import TestClient
from sarnn_serve.api.app import create_app
from sarnn_serve.settings import Settings

with TestClient(create_app(Settings(model_dir=sys.argv[1]))) as client:
    ready = client.get("/readyz").json()
    assert ready["calibrating"], ready  # closed while calibration runs
"""


@pytest.mark.parametrize("attempt", range(4))
def test_closing_during_calibration_exits_cleanly(attempt: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", OPEN_AND_CLOSE, str(FIXTURE_MODELS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate called" not in done.stderr
