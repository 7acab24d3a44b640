"""A runtime install in a fresh venv, as a user gets it: the wheel `python -m build` makes (with
the native kernel), installed with `pip --no-index` from a local wheelhouse, with no C compiler
on PATH and no torch. Used by tests/test_runtime_install.py and scripts/runtime_suite.py.

The wheelhouse holds the project's wheel and the wheels of its dependencies (with the extras
asked for), fetched by `pip download` from the package index pip is configured with; the install
after that is offline.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs",
    "test-artifacts", "*.so",
)  # fmt: skip
# What the runtime suite installs beside the runtime: the `test` extra (a test runner and the
# clients the API suites drive), not the training stack.
SUITE_EXTRAS = "redis,test"


def clean_env(path: str | None = None) -> dict[str, str]:
    """This environment without anything that would let a new venv see other packages (and
    with PATH replaced, if given)."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SARNN_")}
    if path is not None:
        env["PATH"] = path
    return env


def run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 1800, cwd=None):
    """A command's completed process (output captured as text)."""
    return subprocess.run(
        [str(a) for a in args],
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def checked(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if done.returncode != 0:
        raise RuntimeError(f"{done.args} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def build_wheelhouse(work: Path, extras: str = "redis") -> tuple[Path, Path]:
    """(wheelhouse, project wheel): the wheel built from a copy of the source (so that build/
    and egg-info land there), then its dependencies with `extras`, as binary wheels only."""
    source = work / "source"
    shutil.copytree(REPO, source, ignore=NOT_COPIED)
    house = work / "wheelhouse"
    checked(
        run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", house, source)
    )
    (wheel,) = house.glob("sarnn_serve-*.whl")
    checked(
        run(
            sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
            "--only-binary", ":all:", "--dest", house, f"{wheel}[{extras}]",
        )
    )  # fmt: skip
    return house, wheel


def make_venv(work: Path, house: Path, extras: str = "redis") -> tuple[Path, dict]:
    """(venv, its environment): sarnn-serve[extras] installed with --no-index from the
    wheelhouse; PATH holds only the venv's bin (no cc, gcc or other compiler)."""
    venv = work / "venv"
    checked(run(sys.executable, "-m", "venv", venv))
    env = clean_env(str(venv / "bin"))
    for compiler in ("cc", "gcc", "clang"):
        assert shutil.which(compiler, path=env["PATH"]) is None, compiler
    python = venv / "bin" / "python"
    checked(
        run(
            python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-index",
            "--find-links", house, f"sarnn-serve[{extras}]", env=env,
        )
    )  # fmt: skip
    return venv, env


def suite_copy(work: Path) -> Path:
    """The repository without its packages (sarnn_serve/ and export/): the tests, models,
    docs and configuration, so that a test run imports the installed sarnn_serve."""
    root = work / "suite"
    skip = shutil.ignore_patterns("sarnn_serve", "export", ".git", ".venv", "build", "dist",
                                  "*.egg-info", "__pycache__", ".*_cache", "runs")  # fmt: skip
    shutil.copytree(REPO, root, ignore=skip)
    return root
