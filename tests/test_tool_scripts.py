"""Every benchmark and script under benchmarks/ and scripts/ still starts: `--help` runs its
imports and argument parser. (Two benchmarks once crashed at import after a refactor renamed a
function they used.) The quick benchmarks also run at a small size."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = {"ws_raw.py"}  # imported by the load generators, no command of its own
SCRIPTS = sorted(
    p
    for folder in ("benchmarks", "scripts")
    for p in (ROOT / folder).glob("*.py")
    if p.name not in LIBRARIES
)

pytestmark = [pytest.mark.train, pytest.mark.slow]  # several import export (the training side)


def test_the_scripts_are_found():
    names = {p.name for p in SCRIPTS}
    assert {"bench_memory.py", "bench_store.py", "dashboard_screenshot.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_starts(script: Path):
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:"), done.stdout[:200]


SMALL_RUNS = {
    "bench_store": (["--sessions", "50"], "sweep of 50 sessions"),
    "bench_memory": (
        ["--models", "models/watch-gru", "--sessions", "4", "--flood", "20", "--budget-mib", "8"],
        "| 4 |\nflood: 20 sessions of watch-gru into a 8 MiB budget: 20 held",
    ),
}


@pytest.mark.parametrize("name", sorted(SMALL_RUNS))
def test_benchmark_runs_small(name: str):
    """The run path, not only the parser: the benchmark at a size of seconds prints its table.
    (bench_store once crashed when its sweep finished before the ticker woke; bench_memory
    once counted its warm-up sessions among those held.)"""
    args, printed = SMALL_RUNS[name]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert printed in done.stdout
