"""The runtime wheel: `python -m build` makes it with the native kernel and without training code;
installed with `pip --no-index` in a fresh venv with no C compiler on PATH (tests/runtime_venv),
it has no torch, loads the kernel, serves the shipped models, and its client and `sarnn-serve
replay` stream a recording into the server.
"""

import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.runtime_venv import REPO, build_wheelhouse, make_venv, run
from tests.service_fixtures import RECORDING, free_port, stop_process

pytestmark = [
    pytest.mark.slow,  # builds a wheel and a venv (a minute or two)
    pytest.mark.skipif(
        not (REPO / "sarnn_serve").is_dir() or not (REPO / "export").is_dir(),
        reason="needs the source checkout (this is a copy of the tests beside an install)",
    ),
]

ROWS = 300  # of the recording
STREAM = """
import sys
from sarnn_serve.client import Client
with Client(sys.argv[1]) as client, client.open("watch-gru") as session:
    answers = list(session.stream_csv(sys.argv[2], size=16))
    print(answers[-1].session_steps, sum(a.replayed for a in answers), session.summary().steps)
"""


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_wheelhouse(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def runtime(
    wheelhouse: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict]:
    return make_venv(tmp_path_factory.mktemp("runtime"), wheelhouse[0])


@pytest.fixture
def served(runtime: tuple[Path, dict], tmp_path: Path) -> Iterator[str]:
    """`sarnn-serve` of the venv serving the shipped models; its URL."""
    venv, env = runtime
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [venv / "bin" / "sarnn-serve", "serve", "--port", str(port),
             "--model-dir", str(REPO / "models")],
            env={**env, "SARNN_DEFAULT_MODEL": "watch-gru", "SARNN_GRPC_PORT": "0"},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"the server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not ready after 120 s:\n{log.read_text()}"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        yield url
    finally:
        stop_process(server)


def test_wheel_holds_the_runtime_and_kernel_and_no_training_code(
    wheelhouse: tuple[Path, Path],
) -> None:
    names = zipfile.ZipFile(wheelhouse[1]).namelist()
    assert not [n for n in names if n.startswith(("export/", "tests/"))], names
    assert any(re.fullmatch(r"sarnn_serve/_step_kernel\..*\.so", n) for n in names), names
    for module in ("sarnn_serve/client/__init__.py", "sarnn_serve/client/recordings.py"):
        assert module in names
    assert any(n.startswith("sarnn_serve/static/") for n in names)


def test_fresh_venv_has_the_kernel_and_no_torch_or_training_code(
    runtime: tuple[Path, dict], tmp_path: Path
) -> None:
    venv, env = runtime
    python, cli = venv / "bin" / "python", venv / "bin" / "sarnn-serve"
    version = run(cli, "--version", env=env)
    assert re.fullmatch(r"sarnn-serve \S+\n", version.stdout), version.stdout + version.stderr
    kernel = run(python, "-c", "from sarnn_serve import native; print(native.available())", env=env)
    assert kernel.stdout.strip() == "True", kernel.stderr
    for module in ("torch", "export"):  # from a directory outside the checkout
        missing = run(python, "-c", f"import {module}", env=env, cwd=tmp_path)
        assert f"No module named '{module}'" in missing.stderr


def test_fresh_venv_serves_and_its_client_and_replay_stream(
    runtime: tuple[Path, dict], served: str, tmp_path: Path
) -> None:
    venv, env = runtime
    streamed = run(venv / "bin" / "python", "-c", STREAM, served, RECORDING, env=env, cwd=tmp_path)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.split() == [str(ROWS), "0", str(ROWS)]
    ws = served.replace("http://", "ws://")
    replay = run(venv / "bin" / "sarnn-serve", "replay", "--url", ws, "--csv", RECORDING,
                 "--max-speed", "--no-progress", "--chunk", "8", env=env)  # fmt: skip
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert re.search(rf"^steps\s+{ROWS}$", replay.stdout, re.MULTILINE), replay.stdout
    assert re.search(r"^true label\s+FEL$", replay.stdout, re.MULTILINE), replay.stdout


def test_python_m_export_runs_from_the_checkout() -> None:
    """export/ is not installed: the offline commands run from the repository's root."""
    done = subprocess.run(
        [sys.executable, "-m", "export", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "tiny-fixture" in done.stdout and "train" in done.stdout
