"""The request body limit (SARNN_MAX_BODY_BYTES) on a real server, in each API's error format:
a body over it, announced by Content-Length or streamed without one, is refused with 413 before
anything is applied; under /v2 the error is the Open Inference Protocol's string, elsewhere the
native {"code", "message", "field"} object.
"""

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service_fixtures import TINY_MODEL, LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow  # starts a sarnn-serve process

MAX_BYTES = 2048  # the smallest limit the settings take
BIG = b"{" + b" " * 2 * MAX_BYTES + b"}"
MESSAGE = f"request body exceeds {MAX_BYTES} bytes"
ROUTES = {
    "native": "/v1/sessions",
    "v2": f"/v2/models/{TINY_MODEL}/infer",
}
FORMATS = {
    "native": {"code": "payload_too_large", "message": MESSAGE, "field": "body"},
    "v2": f"payload_too_large: {MESSAGE}",
}


@pytest.fixture(scope="module")
def server(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"SARNN_MAX_BODY_BYTES": str(MAX_BYTES)}
    live = start_server(served_models, tmp_path_factory.mktemp("limit"), env)
    yield live
    stop_server(live)


def _work(client: httpx.Client) -> tuple[float, ...]:
    """Live sessions and engine calls, summed over their series in /metrics."""
    text = client.get("/metrics").text
    return tuple(
        sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))
        for name in ("sarnn_active_sessions", "sarnn_engine_calls_total")
    )


def _streamed() -> Iterator[bytes]:
    """BIG in pieces, sent without Content-Length (chunked)."""
    for i in range(0, len(BIG), 256):
        yield BIG[i : i + 256]


@pytest.mark.parametrize("api", list(ROUTES))
@pytest.mark.parametrize("how", ["content-length", "chunked"])
def test_a_body_over_the_limit_is_413_in_the_apis_format(
    server: LiveServer, api: str, how: str
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        before = _work(client)
        content = BIG if how == "content-length" else _streamed()
        r = client.post(ROUTES[api], content=content, headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"error": FORMATS[api]}
        assert _work(client) == before
