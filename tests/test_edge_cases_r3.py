"""Edge cases of the third audit: crashes and tracebacks turned into clear refusals.

- A superscript digit in Inference-Header-Content-Length (str.isdigit takes it, int() does
  not) is a JSON 422 like any other bad length, not a text 500.
- A model with more classes (or neurons) than binary WebSocket answers carry (16 bits) is
  refused at load with one line, not after a chunk was applied.
- Crafted model directories (a huge unused initializer, weights the kernel sees at another
  feature count than the graph, a graph that loads but cannot run) give one line or no kernel,
  never a traceback.
- The schema says what the server does: a 405 names every method of the path, `model` is
  required when no model is the default, seq's bound is an exact integer (2**63 - 1).
  (422 before 413 and idle_timeout_s >= 1 s: tests/bad_input_cases.py.)
"""

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest

from sarnn_serve.engine import NATIVE
from sarnn_serve.errors import ModelLoadError
from sarnn_serve.registry import load_model
from tests.crafted_models import crafted_model, replaced, shadowed, unused
from tests.service_fixtures import TINY_MODEL, LiveServer, start_server, stop_server

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(served_models, tmp_path_factory.mktemp("edge-r3"))
    yield live
    stop_server(live)


def _serve_once(model_dir: Path) -> subprocess.CompletedProcess:
    """`sarnn-serve serve` on `model_dir`: it must stop before serving (a bad model)."""
    return subprocess.run(
        [sys.executable, "-m", "sarnn_serve.cli", "serve", "--model-dir", str(model_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_line_error(run: subprocess.CompletedProcess, *words: str) -> None:
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("sarnn-serve: error:")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    for word in words:
        assert word in errors[0], errors[0]


# --- Inference-Header-Content-Length ------------------------------------------------------


@pytest.mark.parametrize("value", [b"\xb9", b"\xb2\xb3", b"1\xb2"])
def test_a_superscript_header_length_is_a_json_422(server: LiveServer, value: bytes) -> None:
    body = b'{"inputs": []}'
    r = httpx.post(
        f"{server.url}/v2/models/{TINY_MODEL}/infer",
        content=body,
        headers={HEADER: value, "content-type": "application/octet-stream"},
        timeout=10,
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"].startswith(f"invalid_input: {HEADER}")


# --- classes and neurons past the binary answer's 16 bits -----------------------------------


def _classes(n: int) -> dict:
    return {"n_classes": n, "class_labels": [f"c{i}" for i in range(n)]}


def test_a_model_with_more_classes_than_binary_answers_carry_is_refused(tmp_path: Path) -> None:
    n = 2**16
    head = (
        replaced("W_out", np.zeros((128, n), np.float32)),
        replaced("b_out", np.zeros(n, np.float32)),
    )
    directory = crafted_model(tmp_path, *head, **_classes(n))
    with pytest.raises(ModelLoadError, match="n_classes 65536 is over 65535"):
        load_model(directory)
    _assert_one_line_error(_serve_once(tmp_path), "n_classes 65536", "binary answers")


def test_the_most_classes_binary_answers_carry_load(tmp_path: Path) -> None:
    n = 2**16 - 1
    head = (
        replaced("W_out", np.zeros((128, n), np.float32)),
        replaced("b_out", np.zeros(n, np.float32)),
    )
    assert load_model(crafted_model(tmp_path, *head, **_classes(n))).card.n_classes == n


# --- crafted graphs -------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [[2**40, 2**40], [2**62, 4]], ids=["2^80", "2^64"])
def test_a_huge_unused_initializer_leaves_the_kernel_out(dims: list[int], tmp_path: Path) -> None:
    model = load_model(crafted_model(tmp_path, unused("junk", dims)))
    assert NATIVE not in model.engine.paths  # onnxruntime serves it; the kernel will not read it


def test_weights_the_kernel_sees_at_another_feature_count_leave_it_out(tmp_path: Path) -> None:
    # the graph reads 6-feature weights under other names; 7-feature ones carry the names the
    # kernel reads, all consistent with each other
    f_weights = ("mean", "std", "W_r", "W_z", "W_n", "W_a")
    model = load_model(crafted_model(tmp_path, shadowed(*f_weights, features=7)))
    assert NATIVE not in model.engine.paths and model.card.n_features == 6


def test_a_graph_that_loads_but_cannot_run_is_one_line(tmp_path: Path) -> None:
    # a Gather index past its data: onnxruntime loads the graph and fails when it runs
    directory = crafted_model(tmp_path, replaced("i1", np.array(99, np.int64)))
    with pytest.raises(ModelLoadError, match="a probe run of its graphs failed"):
        load_model(directory)
    _assert_one_line_error(_serve_once(tmp_path), "a probe run of its graphs failed")


# --- the schema and the methods -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "allowed"),
    [("/v1/sessions", "GET, POST"), ("/v1/sessions/abc", "DELETE, GET")],
)
@pytest.mark.parametrize("method", ["OPTIONS", "PUT"])
def test_a_405_names_every_method_of_the_path(
    server: LiveServer, method: str, path: str, allowed: str
) -> None:
    r = httpx.request(method, f"{server.url}{path}", timeout=10)
    assert r.status_code == 405
    assert r.headers["allow"] == allowed
    assert r.json()["error"]["code"] == "method_not_allowed"


def _openapi(url: str) -> dict:
    # json, not httpx's .json(): the same parser, ints stay ints
    return json.loads(httpx.get(f"{url}/openapi.json", timeout=10).content)


def test_seq_is_bounded_by_an_exact_integer(server: LiveServer) -> None:
    doc = _openapi(server.url)
    seq = doc["components"]["schemas"]["ChunkRequest"]["properties"]["seq"]
    assert seq["maximum"] == 2**63 - 1 and type(seq["maximum"]) is int
    assert "exclusiveMaximum" not in seq
    validator = jsonschema.Draft202012Validator(seq)
    assert validator.is_valid(2**63 - 1) and validator.is_valid(0)
    assert not validator.is_valid(2**63) and not validator.is_valid(2**63 + 1)
    assert not validator.is_valid(-1)


def test_model_is_optional_with_one_model(server: LiveServer) -> None:
    create = _openapi(server.url)["components"]["schemas"]["SessionCreate"]
    assert "model" not in create.get("required", [])
    assert httpx.post(f"{server.url}/v1/sessions", json={}, timeout=10).status_code == 201


def test_model_is_required_exactly_when_a_request_without_it_is_refused(
    served_models: Path, tmp_path: Path
) -> None:
    """Two models and no SARNN_DEFAULT_MODEL: whether the server picks a default or asks for
    `model`, the schema says the same as the answer to POST {}."""
    models = tmp_path / "models"
    shutil.copytree(served_models, models)
    twin = models / "twin"
    shutil.copytree(models / TINY_MODEL, twin)
    card = json.loads((twin / "model.json").read_text())
    (twin / "model.json").write_text(json.dumps({**card, "name": "twin"}))
    live = start_server(models, tmp_path)
    try:
        create = _openapi(live.url)["components"]["schemas"]["SessionCreate"]
        r = httpx.post(f"{live.url}/v1/sessions", json={}, timeout=10)
        assert r.status_code in (201, 422), r.text
        refused = r.status_code == 422
        assert ("model" in create.get("required", [])) == refused
        if refused:
            assert r.json()["error"]["field"] == "model"
        body = {"model": "twin"}
        assert httpx.post(f"{live.url}/v1/sessions", json=body, timeout=10).status_code == 201
    finally:
        stop_server(live)
