"""The `sarnn-serve` command line, run as a real subprocess.

A bad option, a malformed SARNN_ variable, a bad model dir, a model that cannot load or a
missing redis package each stop the command before uvicorn starts, with one line on stderr
naming the problem and exit status 2. Every command's --help documents each option with its
default and SARNN_ variable, taken from the Settings fields; --version prints the version.
"""

import argparse
import json
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

from sarnn_serve.cli import SERVE_OPTIONS, build_parser, env_var, option
from sarnn_serve.settings import Settings
from tests.cli_fixtures import REPO, assert_one_line_error, run_cli
from tests.service_fixtures import free_port

MODELS = REPO / "models"
SHIPPED = MODELS / "watch-gru"


def flat(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return " ".join(text.split())


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        pytest.param(["--port", "83641"], {}, ["--port 83641", "65535"], id="port-too-big"),
        pytest.param(["--port", "0"], {}, ["--port 0", "greater than or equal to 1"], id="port-0"),
        pytest.param(["--workers", "0"], {}, ["--workers 0"], id="workers-0"),
        pytest.param([], {"SARNN_PORT": "83641"}, ["SARNN_PORT=83641", "65535"], id="env-port"),
        pytest.param([], {"SARNN_PORT": "abc"}, ["SARNN_PORT=abc", "integer"], id="env-port-abc"),
        pytest.param(
            [], {"SARNN_STORE": "foo"}, ["SARNN_STORE=foo", "'memory' or 'redis'"], id="env-store"
        ),
        pytest.param(["--bogus"], {}, ["--bogus"], id="unknown-option"),
    ],
)
def test_bad_setting_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    env = {"SARNN_MODEL_DIR": str(MODELS), "SARNN_PORT": str(free_port()), **env}
    assert_one_line_error(run_cli(*args, env=env), *fragments)


def _missing(tmp: Path) -> Path:
    return tmp / "nowhere"


def _one_models_folder(tmp: Path) -> Path:
    return SHIPPED


def _empty(tmp: Path) -> Path:
    return tmp


def _bad_card(tmp: Path) -> Path:
    (tmp / "broken").mkdir()
    (tmp / "broken" / "model.json").write_text('{"name": "broken"}')
    return tmp


def _bad_graph(tmp: Path) -> Path:
    (tmp / "broken").mkdir()
    shutil.copy(SHIPPED / "model.json", tmp / "broken" / "model.json")
    (tmp / "broken" / "model.onnx").write_bytes(b"not an onnx graph")
    return tmp


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (_missing, ["nowhere", "does not exist"]),
        (_one_models_folder, ["one model's folder", f"at its parent, {MODELS}"]),
        (_empty, ["no model directories"]),
        (_bad_card, ["broken/model.json", "invalid model card", "version: Field required"]),
        (_bad_graph, ["broken/model.onnx", "onnxruntime cannot load it"]),
    ],
    ids=["missing", "one-models-folder", "empty", "bad-card", "bad-graph"],
)
def test_bad_model_dir_is_one_line_and_exit_2(
    tmp_path: Path, make: Callable[[Path], Path], fragments: list[str]
) -> None:
    model_dir = make(tmp_path)
    result = run_cli("--model-dir", str(model_dir), "--port", str(free_port()))
    assert_one_line_error(result, *fragments)
    # the same through the environment
    env = {"SARNN_MODEL_DIR": str(model_dir), "SARNN_PORT": str(free_port())}
    assert_one_line_error(run_cli("serve", env=env), *fragments)


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        (
            {"SARNN_ENGINE_PATH": "native", "SARNN_NATIVE_KERNEL": "false"},
            ["SARNN_ENGINE_PATH=native", "native kernel", "off (SARNN_NATIVE_KERNEL=false)"],
        ),
        ({"SARNN_ENGINE_PATH": "sparse"}, ["SARNN_ENGINE_PATH=sparse", "no sparse graph"]),
    ],
    ids=["native-off", "sparse-missing"],
)
def test_a_forced_engine_path_a_model_lacks_is_one_line_and_exit_2(
    tmp_path: Path, env: dict[str, str], fragments: list[str]
) -> None:
    """Refused before uvicorn starts (it was a lifespan traceback of 54 lines)."""
    model_dir = tmp_path / "models"
    (model_dir / "watch-gru").mkdir(parents=True)
    for name in ("model.json", "model.onnx"):  # the dense graph only: no sparse twin
        shutil.copy(MODELS / "watch-gru" / name, model_dir / "watch-gru" / name)
    card = json.loads((model_dir / "watch-gru" / "model.json").read_text())
    (model_dir / "watch-gru" / "model.json").write_text(json.dumps({**card, "sparse_graph": None}))
    full = {**env, "SARNN_MODEL_DIR": str(model_dir), "SARNN_PORT": str(free_port())}
    assert_one_line_error(run_cli(env=full), *fragments)


def test_redis_store_without_redis_package_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # The test venv has redis-py installed (dev extra). A `redis` package earlier on
    # PYTHONPATH whose import raises ImportError makes the child process behave like a
    # runtime-only install, where `import redis` fails.
    fake = tmp_path / "redis"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'redis'\")\n")
    env = {
        "PYTHONPATH": str(tmp_path),
        "SARNN_STORE": "redis",
        "SARNN_MODEL_DIR": str(MODELS),
        "SARNN_PORT": str(free_port()),
    }
    result = run_cli(env=env)
    assert_one_line_error(result, "SARNN_STORE=redis", "[redis] extra", "sarnn-serve[redis]")


def test_serve_help_documents_each_option_with_default_and_variable() -> None:
    # wide enough that argparse wraps no line: it breaks long words at hyphens, which `flat`
    # cannot undo (a default model dir under /tmp/sarnn-runtime-... in the runtime suite)
    result = run_cli("serve", "--help", env={"COLUMNS": "100000"})
    assert result.returncode == 0, result.stderr
    text = flat(result.stdout)
    assert "SARNN_PORT" in text and "(default: 8000; env SARNN_PORT)" in text
    for field in SERVE_OPTIONS:
        info = Settings.model_fields[field]
        assert option(field) in text
        assert f"{info.description} (default: {info.default}; env {env_var(field)})" in text
    for field in Settings.model_fields:  # the rest: environment variables only
        assert env_var(field) in text


def test_top_level_help_names_commands_version_and_settings() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    text = flat(result.stdout)
    for word in ("serve", "replay", "--version", "SARNN_PORT (default: 8000)"):
        assert word in text


def test_replay_help_shows_defaults() -> None:
    result = run_cli("replay", "--help")
    assert result.returncode == 0, result.stderr
    text = flat(result.stdout)
    assert "--csv" in text and "(default: ws://127.0.0.1:8000)" in text


def test_every_option_of_every_command_has_help() -> None:
    def check(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    check(sub)
            else:
                assert action.help, f"{parser.prog} {action.option_strings} has no help"

    check(build_parser())


def test_every_setting_has_a_description() -> None:
    undocumented = [name for name, f in Settings.model_fields.items() if not f.description]
    assert undocumented == []


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"sarnn-serve {metadata.version('sarnn-serve')}\n"
