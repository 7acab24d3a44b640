"""Keys that cannot touch each other, on real servers (memory store and a real Redis).

Another key's probe of a session, live or gone, gets exactly what an unknown id gets and changes
nothing: it neither keeps the session alive nor tells that the id ever existed. Eviction under
the session cap or the byte budget takes from the key over its share, never from a key within it.
"""

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sarnn_serve.sessions import new_session_id
from tests.auth_fixtures import (
    ALICE,
    BOB,
    FEATURES,
    SESSION_ROUTES,
    as_key,
    created,
    error,
    masked,
    refused,
)
from tests.service_fixtures import LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow


def serve(
    request: pytest.FixtureRequest, store: str, models: Path, tmp: Path, **env: str
) -> LiveServer:
    """A server with keys on and the SARNN_ settings `env`, over `store`: "memory", or "redis"
    (a real one)."""
    env = {"SARNN_API_KEYS": f"{ALICE},{BOB}", **{f"SARNN_{k.upper()}": v for k, v in env.items()}}
    if store == "redis":
        env |= {
            "SARNN_STORE": "redis",
            "SARNN_REDIS_URL": request.getfixturevalue("redis_url"),
            "SARNN_REDIS_PREFIX": f"tenants-{uuid.uuid4().hex}",
        }
    return start_server(models, tmp, env)


@pytest.fixture(scope="module", params=["memory", "redis"])
def keyed(
    request: pytest.FixtureRequest,
    served_models: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    server = serve(request, request.param, served_models, tmp_path_factory.mktemp("tenants"))
    yield server
    stop_server(server)


@pytest.fixture(params=["memory", "redis", "memory-bytes"])
def crowded(
    request: pytest.FixtureRequest, served_models: Path, tmp_path: Path
) -> Iterator[LiveServer]:
    """Room for 8 sessions, or (memory-bytes) for 1 MiB of records, the smallest budget: about
    8 records after the longest chunk with masks."""
    store, _, measure = request.param.partition("-")
    budget = {"max_store_bytes": str(1024 * 1024)} if measure == "bytes" else {"max_sessions": "8"}
    server = serve(request, store, served_models, tmp_path, **budget)
    yield server
    stop_server(server)


def rows(steps: int) -> list[list[float]]:
    return [[0.01 * ((t + f) % 50) for f in range(FEATURES)] for t in range(steps)]


async def assert_like_an_unknown_id(server: LiveServer, bob: httpx.Client, sid: str) -> None:
    """Every session route and socket answers bob about `sid` as about an id never created."""
    ghost = new_session_id()
    for method, path, body in SESSION_ROUTES:
        theirs = bob.request(method, path.format(sid=sid), json=body)
        never = bob.request(method, path.format(sid=ghost), json=body)
        error(theirs, 404, "session_not_found")
        assert masked(theirs.text, sid) == masked(never.text, ghost), (method, path)
    for route in ("stream", "watch"):
        frame, code = await refused(f"{server.ws_url}/v1/sessions/{sid}/{route}", f"Bearer {BOB}")
        ghost_frame, ghost_code = await refused(
            f"{server.ws_url}/v1/sessions/{ghost}/{route}", f"Bearer {BOB}"
        )
        assert code == ghost_code == 4404, route
        assert masked(frame, sid) == masked(ghost_frame, ghost), route


async def test_a_probe_does_not_keep_a_session_alive(keyed: LiveServer) -> None:
    with as_key(keyed, ALICE) as alice, as_key(keyed, BOB) as bob:
        sid = created(alice.post("/v1/sessions", json={"idle_timeout_s": 1.5}))
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # bob probes for longer than the idle timeout
            for method, path, body in SESSION_ROUTES:
                error(
                    bob.request(method, path.format(sid=sid), json=body), 404, "session_not_found"
                )
            time.sleep(0.2)
        error(alice.get(f"/v1/sessions/{sid}"), 404, "session_expired")
        await assert_like_an_unknown_id(keyed, bob, sid)


async def test_a_gone_session_is_an_unknown_id_to_another_key(keyed: LiveServer) -> None:
    with as_key(keyed, ALICE) as alice, as_key(keyed, BOB) as bob:
        sid = created(alice.post("/v1/sessions", json={}))
        chunk = alice.post(f"/v1/sessions/{sid}/chunks", json={"seq": 0, "inputs": rows(3)})
        assert chunk.status_code == 200, chunk.text
        await assert_like_an_unknown_id(keyed, bob, sid)
        assert alice.delete(f"/v1/sessions/{sid}").status_code == 200
        await assert_like_an_unknown_id(keyed, bob, sid)
        error(alice.get(f"/v1/sessions/{sid}"), 404, "session_deleted")


def test_one_keys_sessions_never_evict_anothers_within_its_share(crowded: LiveServer) -> None:
    with as_key(crowded, ALICE) as alice, as_key(crowded, BOB) as bob:
        mine = [created(alice.post("/v1/sessions", json={})) for _ in range(2)]
        for sid in mine:
            r = alice.post(f"/v1/sessions/{sid}/chunks", json={"seq": 0, "inputs": rows(2)})
            assert r.status_code == 200, r.text
        # bob, within every quota of his key, opens 20 sessions and fills each with the longest
        # chunk, with masks: past the session cap or the byte budget
        long, bobs = rows(4096), []
        for _ in range(20):
            bobs.append(created(bob.post("/v1/sessions", json={})))
            r = bob.post(
                f"/v1/sessions/{bobs[-1]}/chunks",
                json={"seq": 0, "inputs": long, "include_mask": True, "answer": "columns"},
            )
            assert r.status_code == 200, r.text
        evicted = [bob.get(f"/v1/sessions/{sid}").status_code == 404 for sid in bobs]
        assert sum(evicted) >= 10 and not any(evicted[-5:]), evicted
        for sid in mine:
            r = alice.get(f"/v1/sessions/{sid}")
            assert r.status_code == 200, r.text
            assert r.json()["next_seq"] == 1
