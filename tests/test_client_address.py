"""Who the client is, with API keys off: a real uvicorn (sarnn-serve) on loopback, sessions
opened with X-Forwarded-For headers that rotate on every request, against a per-IP quota of 2.

Only the proxy named by SARNN_FORWARDED_ALLOW_IPS may name the client: from any other peer the
header is ignored (uvicorn's own FORWARDED_ALLOW_IPS variable, and its default, 127.0.0.1, too),
so rotating it opens no more sessions than the peer's quota.
"""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sarnn_serve.cli import uvicorn_options
from sarnn_serve.settings import Settings
from tests.service_fixtures import LiveServer, start_server, stop_server

QUOTA = 2


@pytest.fixture(scope="module")
def servers(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, LiveServer]]:
    """Two servers: one behind a proxy at another address, one whose proxy is loopback."""
    tmp = tmp_path_factory.mktemp("client-address")
    quota = {"SARNN_MAX_SESSIONS_PER_KEY": str(QUOTA)}
    started = {}
    try:
        started["elsewhere"] = start_server(
            served_models,
            tmp,
            {**quota, "SARNN_FORWARDED_ALLOW_IPS": "10.255.0.7", "FORWARDED_ALLOW_IPS": "*"},
        )
        started["loopback"] = start_server(
            served_models, tmp, {**quota, "SARNN_FORWARDED_ALLOW_IPS": "127.0.0.1"}
        )
        yield started
    finally:
        for server in started.values():
            stop_server(server)


def _open_sessions(server: LiveServer, count: int) -> list[int]:
    """Statuses of `count` session creations, each with another X-Forwarded-For."""
    statuses = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i in range(count):
            spoofed = {"X-Forwarded-For": f"203.0.113.{i + 1}"}
            statuses.append(client.post("/v1/sessions", json={}, headers=spoofed).status_code)
    return statuses


def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored(
    servers: dict[str, LiveServer],
) -> None:
    statuses = _open_sessions(servers["elsewhere"], QUOTA + 3)
    assert statuses == [201] * QUOTA + [429] * 3, "the header changed the quota's identity"


def test_the_trusted_proxy_names_the_client(servers: dict[str, LiveServer]) -> None:
    # loopback is the proxy here: each forwarded address is a client of its own
    assert _open_sessions(servers["loopback"], QUOTA + 3) == [201] * (QUOTA + 3)


def test_no_proxy_configured_means_no_proxy_headers() -> None:
    options = uvicorn_options(Settings())
    assert options["proxy_headers"] is False
    options = uvicorn_options(Settings(forwarded_allow_ips="10.0.0.2, 10.1.0.0/16"))
    assert options["proxy_headers"] is True
    assert options["forwarded_allow_ips"] == ["10.0.0.2", "10.1.0.0/16"]


@pytest.mark.parametrize("value", ["*", "lb", "10.0.0.2,*", "10.0.0.300"])
def test_trusting_anything_but_addresses_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or network"):
        Settings(forwarded_allow_ips=value)
