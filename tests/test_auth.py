"""API keys, per-key quotas, WebSocket connection caps and Origin checks on real servers.

Each class runs one `sarnn-serve` process with the settings of its scenario; clients are httpx
(REST) and the `websockets` client (sockets). Another key's session must look exactly like one
that never existed, and one key's flood must neither evict nor starve another key's sessions.
"""

import asyncio
import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from sarnn_serve.sessions import new_session_id
from tests.auth_fixtures import (
    ALICE,
    BOB,
    CAROL,
    CHUNK,
    REST_ROUTES,
    ROOT,
    SESSION_ROUTES,
    as_key,
    created,
    error,
    masked,
    recv,
    refused,
    ws_connect,
)
from tests.service_fixtures import TINY_MODEL, LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow

KEYS = f"{ALICE},{BOB},{ROOT}:admin"

# Ways to call without a valid key (the ':admin' suffix is configuration, not part of a key).
BAD_AUTH = {
    "no key": None,
    "unknown key": "Bearer mallory-key",
    "scheme only": "Bearer",
    "basic scheme": f"Basic {ALICE}",
    "role suffix": f"Bearer {ROOT}:admin",
}


# helpers --------------------------------------------------------------------------------


def serve(
    models: Path, factory: pytest.TempPathFactory, env: dict[str, str], tmp: Path | None = None
) -> Iterator[LiveServer]:
    """A server with the SARNN_* overrides in `env`, stopped when the generator closes."""
    server = start_server(models, tmp or factory.mktemp("auth"), env)
    try:
        yield server
    finally:
        stop_server(server)


def create(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/sessions", json={})


def advance(client: httpx.Client, sid: str, seq: int) -> httpx.Response:
    return client.post(f"/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": CHUNK})


def active_session(client: httpx.Client) -> str:
    """A new session advanced by one chunk (listings show sessions that have advanced)."""
    sid = created(create(client))
    assert advance(client, sid, 0).status_code == 200
    return sid


def listed(client: httpx.Client) -> set[str]:
    r = client.get("/v1/sessions")
    assert r.status_code == 200, r.text
    assert all(entry["model"] == TINY_MODEL for entry in r.json())
    return {entry["id"] for entry in r.json()}


def create_patiently(client: httpx.Client) -> httpx.Response:
    """Create a session, waiting out `rate_limited` answers for Retry-After seconds."""
    for _ in range(5):
        r = create(client)
        if r.status_code != 429 or r.json()["error"]["code"] != "rate_limited":
            return r
        time.sleep(int(r.headers["Retry-After"]))
    raise AssertionError("still rate limited after 5 waits")


def metric(server: LiveServer, name: str) -> float:
    """The sum of a series' samples in /metrics (0 if it has none yet)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    pattern = rf"^{name}(?:\{{[^}}]*\}})? (\S+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


async def until_connections(server: LiveServer, want: int) -> None:
    """Wait until the server counts `want` open sockets (closing one is asynchronous)."""
    for _ in range(250):
        if metric(server, "sarnn_ws_connections") == want:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"sarnn_ws_connections stuck at {metric(server, 'sarnn_ws_connections')}")


async def opened(url: str, authorization: str | None = None, **kwargs: object) -> dict:
    """The first frame of a socket the server accepts (a session summary)."""
    async with ws_connect(url, authorization, **kwargs) as ws:
        frame = await recv(ws)
        assert frame["type"] == "session", frame
        return frame


# keys on --------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def keyed(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from serve(served_models, tmp_path_factory, {"SARNN_API_KEYS": KEYS})


class TestKeys:
    @pytest.mark.parametrize("case", list(BAD_AUTH))
    def test_rest_without_a_valid_key_is_401(self, keyed: LiveServer, case: str) -> None:
        with as_key(keyed, ALICE) as alice, as_key(keyed, None) as anon:
            sid = active_session(alice)
            before = alice.get(f"/v1/sessions/{sid}").json()
            auth = BAD_AUTH[case]
            headers = {"Authorization": auth} if auth else {}
            for method, path, body in REST_ROUTES:
                url = path.format(sid=sid)
                r = anon.request(method, url, json=body, headers=headers)
                error(r, 401, "unauthorized")
                assert r.headers["WWW-Authenticate"] == "Bearer", (method, url)
            assert alice.get(f"/v1/sessions/{sid}").json() == before

    @pytest.mark.parametrize("case", [*BAD_AUTH, "unknown access_token"])
    async def test_socket_without_a_valid_key_is_closed_4401(
        self, keyed: LiveServer, case: str
    ) -> None:
        with as_key(keyed, ALICE) as alice:
            sid = active_session(alice)
            before = alice.get(f"/v1/sessions/{sid}").json()
        query = "?access_token=mallory-key" if case not in BAD_AUTH else ""
        auth = BAD_AUTH.get(case)
        for path in ("/v1/stream", f"/v1/sessions/{sid}/stream", f"/v1/sessions/{sid}/watch"):
            frame, code = await refused(f"{keyed.ws_url}{path}{query}", auth)
            assert code == 4401, path
            assert frame["status"] == 401 and frame["error"]["code"] == "unauthorized"
        with as_key(keyed, ALICE) as alice:
            assert alice.get(f"/v1/sessions/{sid}").json() == before

    async def test_key_in_header_or_query_opens_sockets(self, keyed: LiveServer) -> None:
        with as_key(keyed, ALICE) as alice:
            sid = active_session(alice)
        first = await opened(f"{keyed.ws_url}/v1/sessions/{sid}/stream", f"Bearer {ALICE}")
        assert first["session"]["id"] == sid and first["session"]["next_seq"] == 1
        first = await opened(f"{keyed.ws_url}/v1/sessions/{sid}/stream?access_token={ALICE}")
        assert first["session"]["id"] == sid

    async def test_another_keys_session_does_not_exist(self, keyed: LiveServer) -> None:
        with as_key(keyed, ALICE) as alice, as_key(keyed, BOB) as bob:
            sid = active_session(alice)
            before = alice.get(f"/v1/sessions/{sid}").json()
            ghost = new_session_id()
            assert len(ghost) == len(sid)
            for method, path, body in SESSION_ROUTES:
                theirs = bob.request(method, path.format(sid=sid), json=body)
                never = bob.request(method, path.format(sid=ghost), json=body)
                error(theirs, 404, "session_not_found")
                assert masked(theirs.text, sid) == masked(never.text, ghost), method
                same = {k: v for k, v in theirs.headers.items() if k != "date"}
                assert same == {k: v for k, v in never.headers.items() if k != "date"}
            for route in ("stream", "watch"):
                frame, code = await refused(
                    f"{keyed.ws_url}/v1/sessions/{sid}/{route}", f"Bearer {BOB}"
                )
                ghost_frame, ghost_code = await refused(
                    f"{keyed.ws_url}/v1/sessions/{ghost}/{route}", f"Bearer {BOB}"
                )
                assert code == ghost_code == 4404, route
                assert frame["error"]["code"] == "session_not_found"
                assert masked(frame, sid) == masked(ghost_frame, ghost), route

            assert alice.get(f"/v1/sessions/{sid}").json() == before
            r = advance(alice, sid, before["next_seq"])
            assert r.status_code == 200, r.text
            after = r.json()["session"]
            assert after["next_seq"] == 2 and after["steps"] == 2 * len(CHUNK)

    def test_listing_shows_own_sessions_and_admin_sees_all(self, keyed: LiveServer) -> None:
        with (
            as_key(keyed, ALICE) as alice,
            as_key(keyed, BOB) as bob,
            as_key(keyed, ROOT) as root,
        ):
            alices = {active_session(alice), active_session(alice)}
            bobs = {active_session(bob)}
            seen_alice, seen_bob, seen_root = listed(alice), listed(bob), listed(root)
            assert alices <= seen_alice and not seen_alice & bobs
            assert bobs <= seen_bob and not seen_bob & alices
            assert alices | bobs <= seen_root
            assert seen_alice | seen_bob == seen_root
            for client, seen in ((alice, seen_alice), (bob, seen_bob)):
                for sid in seen:
                    assert client.get(f"/v1/sessions/{sid}").status_code == 200

    async def test_admin_reads_and_watches_any_session(self, keyed: LiveServer) -> None:
        with as_key(keyed, ALICE) as alice, as_key(keyed, ROOT) as root:
            sid = active_session(alice)
            assert root.get(f"/v1/sessions/{sid}").json() == alice.get(f"/v1/sessions/{sid}").json()
            url = f"{keyed.ws_url}/v1/sessions/{sid}/watch"
            async with ws_connect(url, f"Bearer {ROOT}") as ws:
                # The watcher is registered just after the handshake: feed chunks until one shows.
                event = None
                for seq in range(1, 10):
                    assert advance(alice, sid, seq).status_code == 200
                    with contextlib.suppress(TimeoutError):
                        event = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                        break
                assert event is not None, "the admin's watch socket saw no chunk"
                assert 1 <= event["seq"] <= seq and len(event["steps"]) == len(CHUNK)


# keys from a file -----------------------------------------------------------------------

DAVE, ERIN = "dave-key", "erin-key"


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="class")
def key_file_server(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("keyfile")
    keys = tmp / "keys.txt"
    keys.write_text(
        "# sarnn-serve API keys\n"
        f"sha256:{sha256(CAROL)} carol\n"
        "\n"
        f"sha256:{sha256(ERIN).upper()} erin  # upper-case hex\n"
        f"sha256:{sha256(DAVE)} dave admin\n"
    )
    yield from serve(served_models, tmp_path_factory, {"SARNN_API_KEYS_FILE": str(keys)}, tmp)


class TestKeyFile:
    def test_listed_keys_authenticate_and_others_do_not(self, key_file_server: LiveServer) -> None:
        for key in (CAROL, ERIN, DAVE):
            with as_key(key_file_server, key) as client:
                assert client.get("/v1/models").status_code == 200, key
        for key in ("mallory-key", sha256(CAROL), f"sha256:{sha256(CAROL)}", "carol", None):
            with as_key(key_file_server, key) as client:
                r = client.get("/v1/models")
                error(r, 401, "unauthorized")
                assert r.headers["WWW-Authenticate"] == "Bearer"

    async def test_owners_and_admin(self, key_file_server: LiveServer) -> None:
        with (
            as_key(key_file_server, CAROL) as carol,
            as_key(key_file_server, ERIN) as erin,
            as_key(key_file_server, DAVE) as dave,
        ):
            sid = active_session(carol)
            before = carol.get(f"/v1/sessions/{sid}").json()
            for method, path, body in SESSION_ROUTES:
                error(
                    erin.request(method, path.format(sid=sid), json=body), 404, "session_not_found"
                )
            assert sid in listed(carol) and sid in listed(dave) and sid not in listed(erin)
            assert dave.get(f"/v1/sessions/{sid}").json() == before
            assert carol.get(f"/v1/sessions/{sid}").json() == before
        url = f"{key_file_server.ws_url}/v1/sessions/{sid}/stream"
        assert (await opened(url, f"Bearer {CAROL}"))["session"]["id"] == sid
        frame, code = await refused(url, "Bearer mallory-key")
        assert code == 4401 and frame["error"]["code"] == "unauthorized"


# keys off -------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def open_server(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    yield from serve(served_models, tmp_path_factory, {})


@pytest.fixture(scope="class")
def listing_server(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    env = {"SARNN_LIST_SESSIONS": "true", "SARNN_ALLOWED_ORIGINS": "http://app.example"}
    yield from serve(served_models, tmp_path_factory, env)


async def origin_refused(server: LiveServer, origin: str) -> None:
    """A browser handshake from `origin` is refused with HTTP 403 (no socket, no session)."""
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(f"{server.ws_url}/v1/stream", origin=origin):
            pass
    assert info.value.response.status_code == 403


class TestKeysOff:
    def test_listing_is_forbidden_by_default(self, open_server: LiveServer) -> None:
        for key in (None, ROOT):
            with as_key(open_server, key) as client:
                active_session(client)
                error(client.get("/v1/sessions"), 403, "forbidden")

    async def test_same_origin_only_by_default(self, open_server: LiveServer) -> None:
        await origin_refused(open_server, "http://evil.example")
        await origin_refused(open_server, "http://app.example")
        url = f"{open_server.ws_url}/v1/stream"
        await opened(url, origin=open_server.url)
        await opened(url)


class TestKeysOffWithListingAndOrigins:
    def test_listing_when_turned_on(self, listing_server: LiveServer) -> None:
        with as_key(listing_server, None) as client:
            sid = active_session(client)
            r = client.get("/v1/sessions")
            assert r.status_code == 200, r.text
            assert {"id": sid, "model": TINY_MODEL} in r.json()

    async def test_allowed_origins(self, listing_server: LiveServer) -> None:
        await origin_refused(listing_server, "http://evil.example")
        url = f"{listing_server.ws_url}/v1/stream"
        for origin in ("http://app.example", listing_server.url, None):
            await opened(url, origin=origin)


# quotas ---------------------------------------------------------------------------------

QUOTA_ENV = {
    "SARNN_API_KEYS": f"{ALICE},{BOB},{CAROL}",
    "SARNN_MAX_SESSIONS_PER_KEY": "5",
    "SARNN_MAX_SESSIONS": "8",
}


@pytest.fixture(scope="class")
def quota_server(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    env = {**QUOTA_ENV, "SARNN_SESSION_CREATE_RATE": "2", "SARNN_SESSION_CREATE_BURST": "3"}
    yield from serve(served_models, tmp_path_factory, env)


@pytest.fixture(scope="class")
def redis_quota_server(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[LiveServer]:
    env = {
        **QUOTA_ENV,
        "SARNN_STORE": "redis",
        "SARNN_REDIS_URL": redis_url,
        "SARNN_REDIS_PREFIX": f"auth-{uuid.uuid4().hex}",
    }
    yield from serve(served_models, tmp_path_factory, env)


def check_per_key_cap(server: LiveServer) -> None:
    """With 8 sessions in all and 5 per key: Bob opens 3, Alice floods. Alice is stopped at 5
    with `session_quota`, Bob's sessions all survive, and a deleted session frees a slot."""
    with as_key(server, ALICE) as alice, as_key(server, BOB) as bob:
        bobs = [created(create_patiently(bob)) for _ in range(3)]
        alices = [created(create_patiently(alice)) for _ in range(5)]
        for _ in range(2):
            r = create_patiently(alice)
            assert error(r, 429, "session_quota")["retry_after_s"] > 0
            assert int(r.headers["Retry-After"]) >= 1
        for sid in bobs:
            assert bob.get(f"/v1/sessions/{sid}").status_code == 200, "Alice evicted Bob"
        assert metric(server, "sarnn_sessions_evicted_total") == 0

        assert alice.delete(f"/v1/sessions/{alices.pop()}").status_code == 200
        alices.append(created(create_patiently(alice)))
        error(create_patiently(alice), 429, "session_quota")
        for sid in bobs:
            assert bob.get(f"/v1/sessions/{sid}").status_code == 200
        for client, sids in ((alice, alices), (bob, bobs)):
            for sid in sids:
                assert client.delete(f"/v1/sessions/{sid}").status_code == 200


class TestQuotas:
    def test_creation_rate(self, quota_server: LiveServer) -> None:
        with as_key(quota_server, CAROL) as carol, as_key(quota_server, BOB) as bob:
            sids = [created(create(carol)) for _ in range(3)]
            r = create(carol)
            body = error(r, 429, "rate_limited")
            wait = r.headers["Retry-After"]
            assert wait.isdigit() and int(wait) >= 1, wait
            assert 0 < body["retry_after_s"] <= int(wait)
            bob_sid = created(create(bob))  # another key's bucket is its own
            time.sleep(int(wait))
            sids.append(created(create(carol)))
            assert bob.delete(f"/v1/sessions/{bob_sid}").status_code == 200
            for sid in sids:
                assert carol.delete(f"/v1/sessions/{sid}").status_code == 200

    def test_per_key_cap(self, quota_server: LiveServer) -> None:
        check_per_key_cap(quota_server)

    def test_per_key_cap_with_redis(self, redis_quota_server: LiveServer) -> None:
        check_per_key_cap(redis_quota_server)


# WebSocket connection caps --------------------------------------------------------------


@pytest.fixture(scope="class")
def capped(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {
        "SARNN_API_KEYS": f"{ALICE},{BOB},{CAROL}",
        "SARNN_MAX_WS_CONNECTIONS": "4",
        "SARNN_MAX_WS_CONNECTIONS_PER_KEY": "2",
    }
    yield from serve(served_models, tmp_path_factory, env)


class TestConnectionCaps:
    async def test_caps_per_key_and_per_server(self, capped: LiveServer) -> None:
        url = f"{capped.ws_url}/v1/stream"

        async def too_many(key: str, which: str) -> None:
            frame, code = await refused(url, f"Bearer {key}")
            assert code == 4429
            assert frame["status"] == 429 and frame["error"]["code"] == "too_many_connections"
            assert which in frame["error"]["message"] and frame["error"]["retry_after_s"] > 0

        async with contextlib.AsyncExitStack() as stack:

            async def open_as(key: str) -> ClientConnection:
                ws = await stack.enter_async_context(ws_connect(url, f"Bearer {key}"))
                assert (await recv(ws))["type"] == "session"
                return ws

            first = await open_as(ALICE)
            await open_as(ALICE)
            await too_many(ALICE, "this key")
            await refused(url, "Bearer mallory-key")
            await until_connections(capped, 2)
            bob = await open_as(BOB)
            await open_as(BOB)
            await until_connections(capped, 4)
            await too_many(CAROL, "server")

            await first.close()
            await until_connections(capped, 3)
            await open_as(CAROL)
            await too_many(ALICE, "server")
            await bob.close()
            await until_connections(capped, 3)
            await open_as(ALICE)
            await until_connections(capped, 4)
        await until_connections(capped, 0)
