"""Several replicas behind one Redis: a session continues on whichever replica gets its chunk,
and a chunk sent to two replicas at once is applied exactly once."""

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from sarnn_serve.client.recordings import read_csv
from tests.service_fixtures import (
    RECORDING,
    LiveServer,
    start_redis,
    start_server,
    stop_process,
    stop_server,
)

pytestmark = pytest.mark.slow  # starts sarnn-serve processes


@pytest.fixture(scope="module")
def replicas(
    served_models: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, LiveServer]]:
    env = {
        "SARNN_STORE": "redis",
        "SARNN_REDIS_URL": redis_url,
        "SARNN_REDIS_PREFIX": f"replicas-{uuid.uuid4().hex[:8]}",
    }
    tmp = tmp_path_factory.mktemp("replicas")
    a = start_server(served_models, tmp, env)
    b = start_server(served_models, tmp, env)
    yield a, b
    stop_server(a)
    stop_server(b)


FEATURES = ["ax", "ay", "az", "wx", "wy", "wz"]


@pytest.fixture(scope="module")
def recording() -> np.ndarray:
    """The first 120 samples of held-out watch recording 0 (tests/data)."""
    return read_csv(RECORDING, features=FEATURES).x[:120]


def _chunks(x: np.ndarray, size: int) -> list[list[list[float]]]:
    return [x[i : i + size].tolist() for i in range(0, len(x), size)]


def _run(url: str, chunks: list, urls: list[str]) -> tuple[list[int], list[int], dict]:
    """Stream chunks, chunk i to urls[i % len(urls)]; per-step classes, counts, final summary."""
    with httpx.Client(timeout=30) as client:
        sid = client.post(f"{url}/v1/sessions", json={}).json()["id"]
        classes, counts = [], []
        for seq, chunk in enumerate(chunks):
            target = urls[seq % len(urls)]
            r = client.post(
                f"{target}/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": chunk}
            )
            assert r.status_code == 200, r.text
            classes += [s["class"] for s in r.json()["steps"]]
            counts += [s["updates"] for s in r.json()["steps"]]
        return classes, counts, client.get(f"{urls[-1]}/v1/sessions/{sid}").json()


def test_session_moves_between_replicas(replicas, recording):
    a, b = replicas
    chunks = _chunks(recording, 10)
    alone = _run(a.url, chunks, [a.url])
    alternating = _run(a.url, chunks, [a.url, b.url])
    assert alternating[0] == alone[0]
    assert alternating[1] == alone[1]
    assert alternating[2]["steps"] == len(recording)
    assert alternating[2]["updates"] == sum(alone[1])
    assert alternating[2]["next_seq"] == len(chunks)


def test_same_chunk_on_two_replicas_applies_once(replicas, recording):
    a, b = replicas
    chunk = recording[:8].tolist()

    async def race() -> tuple[list[httpx.Response], dict]:
        async with httpx.AsyncClient(timeout=30) as client:
            sid = (await client.post(f"{a.url}/v1/sessions", json={})).json()["id"]
            posts = [
                client.post(f"{url}/v1/sessions/{sid}/chunks", json={"seq": 0, "inputs": chunk})
                for _ in range(6)
                for url in (a.url, b.url)
            ]
            answers = await asyncio.gather(*posts)
            return answers, (await client.get(f"{b.url}/v1/sessions/{sid}")).json()

    answers, summary = asyncio.run(race())
    ok = [r for r in answers if r.status_code == 200]
    assert all(r.status_code in (200, 409) for r in answers), [r.text for r in answers]
    assert sum(not r.json()["replayed"] for r in ok) == 1
    steps = {tuple(s["updates"] for s in r.json()["steps"]) for r in ok}
    assert len(steps) == 1
    assert summary["steps"] == len(chunk)
    assert summary["next_seq"] == 1


def test_sessions_are_visible_and_deleted_everywhere(replicas):
    a, b = replicas
    with httpx.Client(timeout=10) as client:
        sid = client.post(f"{a.url}/v1/sessions", json={}).json()["id"]
        assert client.get(f"{b.url}/v1/sessions/{sid}").status_code == 200
        assert client.delete(f"{b.url}/v1/sessions/{sid}").status_code == 200
        gone = client.get(f"{a.url}/v1/sessions/{sid}")
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "session_deleted"


def test_store_outage_is_a_503_and_the_server_stays_up(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
):
    """With Redis gone, session requests answer 503 store_unavailable (not a 500), readiness
    fails, liveness holds; nothing was applied, so the client can retry later."""
    tmp = tmp_path_factory.mktemp("outage")
    redis, url = start_redis(tmp)
    server = start_server(served_models, tmp, {"SARNN_STORE": "redis", "SARNN_REDIS_URL": url})
    try:
        with httpx.Client(timeout=30) as client:
            sid = client.post(f"{server.url}/v1/sessions", json={}).json()["id"]
            stop_process(redis)
            chunk = client.post(
                f"{server.url}/v1/sessions/{sid}/chunks",
                json={"seq": 0, "inputs": [[0.0] * 6]},
            )
            assert chunk.status_code == 503, chunk.text
            assert chunk.json()["error"]["code"] == "store_unavailable"
            created = client.post(f"{server.url}/v1/sessions", json={})
            assert created.status_code == 503
            assert client.get(f"{server.url}/readyz").status_code == 503
            assert client.get(f"{server.url}/healthz").status_code == 200
    finally:
        stop_server(server)
        stop_process(redis)
