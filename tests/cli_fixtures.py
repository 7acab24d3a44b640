"""Helpers of the suites that run the `sarnn-serve` command (test_cli, test_startup): run it
as a subprocess with a clean SARNN_ environment, and check that it stopped with one line.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m sarnn_serve.cli ARGS` with no SARNN_ variables but those in `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SARNN_")}
    return subprocess.run(
        [sys.executable, "-m", "sarnn_serve.cli", *args],
        env={**clean, "SARNN_GRPC_PORT": "0", **(env or {})},  # any free gRPC port
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,  # a check that lets a bad case through starts a server: fail, don't hang
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """The command stopped with status 2 and one line on stderr naming each of `fragments`."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sarnn-serve: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
