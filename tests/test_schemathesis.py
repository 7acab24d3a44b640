"""Schemathesis over the live server's OpenAPI schema (/openapi.json of a real uvicorn process).

Each documented operation gets generated requests, valid and invalid (positive and negative
modes), and every answer must pass three checks: no 5xx, a status code the schema documents,
and a body that conforms to the schema of that status. Generated ids name nothing, so in half
of the cases the path parameters are replaced by real ones (a freshly created session, the
served model) and the chunk and predict bodies by ones guided to the model's row length; every
operation must then succeed (2xx) some of the time.

This uses Schemathesis' Python API (`APIOperation.as_strategy`, `Case.call_and_validate`) under
a plain Hypothesis `@given`: its pytest loader (`schemathesis.pytest.from_fixture`) sets
`Node._nodeid`, which pytest 9.2 no longer has.
"""

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from sarnn_serve.schemas import MAX_ABS_INPUT
from tests.service_fixtures import TINY_MODEL, LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow  # starts a sarnn-serve process

FEATURES = 6
MAX_CHUNK_STEPS = 64
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
CHUNKS = "/v1/sessions/{session_id}/chunks"
PREDICT = "/v1/models/{name}/predict"
OPERATIONS = [
    ("GET", "/v1/sessions"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions/{session_id}"),
    ("DELETE", "/v1/sessions/{session_id}"),
    ("POST", CHUNKS),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{name}"),
    ("GET", "/v1/models/{name}/stats"),
    ("POST", PREDICT),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]
BOUND = MAX_ABS_INPUT
LARGE = 1e8
# Far beyond any IMU reading; values near the float32 limit are test_extreme_inputs_conform's.
PLAUSIBLE = st.floats(-1e6, 1e6, width=32)
NEAR_LIMIT = st.floats(LARGE, BOUND) | st.floats(-BOUND, -LARGE)


def bounded(max_examples: int) -> settings:
    """Reproducible, bounded Hypothesis settings (no example database)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module")
def server(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The tiny model behind small limits (64 steps a chunk, 64 KiB bodies), listing on."""
    server = start_server(
        served_models,
        tmp_path_factory.mktemp("schemathesis"),
        env={
            "SARNN_MAX_CHUNK_STEPS": str(MAX_CHUNK_STEPS),
            "SARNN_MAX_BODY_BYTES": "65536",
            "SARNN_LIST_SESSIONS": "true",
        },
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def api_schema(server: LiveServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def steps(values: st.SearchStrategy[float], max_steps: int) -> st.SearchStrategy[list]:
    """1..max_steps rows of FEATURES values."""
    row = st.lists(values, min_size=FEATURES, max_size=FEATURES)
    return st.lists(row, min_size=1, max_size=max_steps)


def chunk_bodies(values: st.SearchStrategy[float]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid first chunks: seq 0 and up to the server's steps per chunk."""
    return st.fixed_dictionaries(
        {"seq": st.just(0), "inputs": steps(values, MAX_CHUNK_STEPS)},
        optional={"include_mask": st.booleans()},
    )


def predict_bodies(values: st.SearchStrategy[float]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid predict requests: 1..4 sequences of up to 16 steps."""
    return st.fixed_dictionaries(
        {"inputs": st.lists(steps(values, 16), min_size=1, max_size=4)},
        optional={
            "threshold": st.floats(0.01, 0.99),
            "include_steps": st.booleans(),
            "include_mask": st.booleans(),
        },
    )


GUIDED_BODIES = {CHUNKS: chunk_bodies, PREDICT: predict_bodies}


def use_real_resources(
    case: schemathesis.Case,
    server: LiveServer,
    data: st.DataObject,
    values: st.SearchStrategy[float],
) -> None:
    """Point `case` at a fresh session and the served model; for chunks and predictions, draw a
    guided body of `values` (or keep the generated one, a chunk's seq set to 0)."""
    params = dict(case.path_parameters or {})
    if "session_id" in params:
        created = httpx.post(f"{server.url}/v1/sessions", json={}, timeout=10)
        assert created.status_code == 201, created.text
        params["session_id"] = created.json()["id"]
    if "name" in params:
        params["name"] = TINY_MODEL
    case.path_parameters = params
    path = case.operation.path
    guided = GUIDED_BODIES.get(path)
    body = data.draw(st.none() | guided(values)) if guided else None
    if body is not None:
        case.body = body
    elif path == CHUNKS and isinstance(case.body, dict) and "seq" in case.body:
        case.body["seq"] = 0


def test_every_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    """OPERATIONS is exactly what the schema documents (a new route must be added there)."""
    documented = {
        (result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()
    }
    assert documented == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_operation_conforms(
    api_schema: schemathesis.BaseSchema, server: LiveServer, method: str, path: str
) -> None:
    """Generated requests (real ids and guided bodies of plausible values in half of them) pass
    CHECKS, and some are accepted."""
    operation = api_schema[path][method]
    cases = st.one_of([operation.as_strategy(generation_mode=mode) for mode in GenerationMode])
    statuses: Counter[int] = Counter()

    @bounded(100)
    @given(case=cases, real=st.booleans(), data=st.data())
    def run(case: schemathesis.Case, real: bool, data: st.DataObject) -> None:
        if real:
            use_real_resources(case, server, data, PLAUSIBLE)
        response = case.call_and_validate(checks=CHECKS)
        statuses[response.status_code] += 1

    run()
    accepted = sum(n for status, n in statuses.items() if 200 <= status < 300)
    assert accepted > 0, f"no request to {method} {path} succeeded: {dict(statuses)}"


@pytest.mark.parametrize("path", [CHUNKS, PREDICT])
def test_extreme_inputs_conform(
    api_schema: schemathesis.BaseSchema, server: LiveServer, path: str
) -> None:
    """Guided bodies of values up to the documented bound (|x| <= 1e9, large enough to saturate
    every gate) pass CHECKS: the answers stay numbers (no overflow to NaN)."""
    operation = api_schema[path]["POST"]

    @bounded(50)
    @given(case=operation.as_strategy(), data=st.data())
    def run(case: schemathesis.Case, data: st.DataObject) -> None:
        use_real_resources(case, server, data, NEAR_LIMIT)
        case.call_and_validate(checks=CHECKS)

    run()
