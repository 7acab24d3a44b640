"""The Makefile's venv and clean targets, run by the real `make` in a scratch copy of the
Makefile (with pyproject.toml and empty stand-ins for the other files its rules name).

A venv made with a Python older than pyproject's requires-python, or whose Python is gone, is
made again (seen in `make -n`, which runs nothing); a too old $(PYTHON) stops before anything is
made; `make clean` removes build outputs, caches and the venv's install stamps, and keeps the
venv, runs/ and exported models. The venv Pythons are stand-in scripts that print a version:
no other Python than this one is installed here.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _fake_python(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The Makefile and pyproject.toml, the other prerequisites as old empty files."""
    shutil.copy(ROOT / "Makefile", tmp_path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    kernel = tmp_path / "sarnn_serve" / "csrc" / "step_kernel.c"
    kernel.parent.mkdir(parents=True)
    for path in (tmp_path / "setup.py", kernel, tmp_path / "pyproject.toml"):
        path.touch()
        os.utime(path, (1_000_000_000, 1_000_000_000))
    return tmp_path


def _venv(tree: Path, version: str | None) -> None:
    """A venv whose python reports `version` (None: its python is gone), installed (stamps)."""
    (tree / ".venv").mkdir()
    (tree / ".venv" / "pyvenv.cfg").write_text("home = /nowhere\n")
    if version is not None:
        _fake_python(tree / ".venv" / "bin" / "python", version)
    for stamp in (".serve", ".dev"):
        (tree / ".venv" / stamp).touch()


def make(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(tree), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_venv_of_the_required_python_is_kept(tree: Path) -> None:
    _venv(tree, "3.11")
    run = make(tree, "-n", "serve")
    assert run.returncode == 0, run.stderr
    assert "-m venv" not in run.stdout and "pip install" not in run.stdout
    assert "sarnn-serve serve" in run.stdout


@pytest.mark.parametrize("version", ["3.9", "3.10", None], ids=["3.9", "3.10", "python-gone"])
def test_a_venv_of_an_older_or_missing_python_is_made_again(
    tree: Path, version: str | None
) -> None:
    _venv(tree, version)
    run = make(tree, "-n", "serve")
    assert run.returncode == 0, run.stderr
    assert "rm -rf .venv" in run.stdout
    assert "-m venv .venv" in run.stdout
    assert "pip install --disable-pip-version-check -q -e ." in run.stdout


def test_newer_python_is_fine(tree: Path) -> None:
    _venv(tree, "3.13")
    assert "-m venv" not in make(tree, "-n", "serve").stdout


def test_a_too_old_python_stops_before_making_the_venv(tree: Path) -> None:
    old = _fake_python(tree / "bin" / "python3.9", "3.9")
    run = make(tree, f"PYTHON={old}", ".venv/bin/python")
    assert run.returncode != 0
    assert f"needs Python >= 3.11; {old} is 3.9" in run.stderr
    assert "make PYTHON=python3.11" in run.stderr
    assert not (tree / ".venv").exists()


def test_clean_removes_outputs_and_keeps_work(tree: Path) -> None:
    _venv(tree, "3.11")
    made = [
        "build/lib/x.py",
        "sarnn_serve.egg-info/PKG-INFO",
        "sarnn_serve/__pycache__/cli.cpython-311.pyc",
        "tests/__pycache__/t.pyc",
        ".pytest_cache/v/x",
        ".ruff_cache/x",
        "test-artifacts/page.png",
        "sarnn_serve/_step_kernel.cpython-311-x86_64-linux-gnu.so",
    ]
    kept = [
        "runs/mine/checkpoint.pt",
        "exported/mine/model.json",
        "models/watch-gru/model.json",
        ".venv/lib/python3.11/site-packages/__pycache__/x.pyc",
    ]
    for name in made + kept:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).touch()
    run = make(tree, "clean")
    assert run.returncode == 0, run.stderr
    for name in [*made, ".venv/.serve", ".venv/.dev"]:
        assert not (tree / name).exists(), name
    for name in [*kept, ".venv/bin/python", "sarnn_serve/csrc/step_kernel.c"]:
        assert (tree / name).exists(), name
    # the next target installs again (and so rebuilds the kernel)
    assert "pip install" in make(tree, "-n", "serve").stdout
    assert make(tree, "distclean").returncode == 0
    assert not (tree / ".venv").exists() and (tree / "runs").exists()


def test_train_default_is_the_shipped_default_models_recipe() -> None:
    """`make train-default` trains what `models/watch-gru` was trained with (its card's recipe),
    so that `make train-default export-default` remakes the default model, not another one."""
    card = json.loads((ROOT / "models" / "watch-gru" / "model.json").read_text())
    recipe = card["training"]["recipe"].removeprefix("python -m export train ")
    recipe = recipe.split(" --out ")[0]
    rule = (ROOT / "Makefile").read_text().split("\ntrain-default:")[1].split("\n\n")[0]
    assert f"-m export train {recipe} --out runs/watch-gru" in rule


def test_export_default_records_how_the_recipe_was_chosen(tree: Path) -> None:
    """`make export-default` writes the shipped card's `recipe_chosen_on`, which a single
    retraining cannot know by itself."""
    card = json.loads((ROOT / "models" / "watch-gru" / "model.json").read_text())
    chosen_on = card["training"]["recipe_chosen_on"]
    dry_run = make(tree, "-n", "export-default")
    commands = dry_run.stdout.replace("\\\n", " ").splitlines()
    rule = next(line for line in commands if "-m export onnx" in line)
    assert f'--recipe-chosen-on "{chosen_on}"' in rule
