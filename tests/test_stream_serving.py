"""The shipped stream model served by a real uvicorn: its accumulator travels in the session
state (any chunking answers the same), and it updates far fewer neurons while the wrist rests."""

import json
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.service_fixtures import (
    SHIPPED_MODELS,
    LiveServer,
    start_server,
    stop_server,
    watch_steps,
)

MODEL = "watch-stream-sa"
REST_ROWS = 250


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    models = tmp_path_factory.mktemp("stream") / "models"
    shutil.copytree(SHIPPED_MODELS / MODEL, models / MODEL)
    live = start_server(models, tmp_path_factory.mktemp("stream-live"))
    yield live
    stop_server(live)


def _rest(rows: int, seed: int) -> np.ndarray:
    """A still wrist: gravity along one direction, gyroscope at 0, sensor noise."""
    rng = np.random.default_rng(seed)
    gravity = np.array([0.3, -0.2, 1.0]) / np.linalg.norm([0.3, -0.2, 1.0]) * 1.07
    accel = gravity + rng.normal(0, 0.04, (rows, 3))
    gyro = rng.normal(0, 0.15, (rows, 3))
    return np.hstack([accel, gyro]).astype(np.float32)


def _stream() -> tuple[np.ndarray, np.ndarray]:
    """Rest, a bout of real motion (a held-out recording), rest; and which rows rest."""
    bout = watch_steps()
    x = np.vstack([_rest(REST_ROWS, 0), bout, _rest(REST_ROWS, 1)])
    idle = np.ones(len(x), bool)
    idle[REST_ROWS : REST_ROWS + len(bout)] = False
    return x, idle


def _play(server: LiveServer, x: np.ndarray, chunk: int) -> tuple[list[int], list[int]]:
    """Classes and update counts per step of one session fed `chunk` rows at a time."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        opened = client.post("/v1/sessions", json={"model": MODEL})
        assert opened.status_code == 201, opened.text
        sid = opened.json()["id"]
        classes: list[int] = []
        updates: list[int] = []
        for seq, start in enumerate(range(0, len(x), chunk)):
            body = {"seq": seq, "inputs": x[start : start + chunk].tolist(), "answer": "columns"}
            answer = client.post(f"/v1/sessions/{sid}/chunks", json=body)
            assert answer.status_code == 200, answer.text
            classes += answer.json()["classes"]
            updates += answer.json()["updates"]
        client.delete(f"/v1/sessions/{sid}")
    return classes, updates


def test_the_card_names_an_accumulating_coordinator_and_its_state() -> None:
    card = json.loads((SHIPPED_MODELS / MODEL / "model.json").read_text())
    assert card["coordinator_accumulate"] is True
    assert card["evaluation"]["idle_update_rate"] < card["evaluation"]["active_update_rate"] / 3


def test_any_chunking_answers_as_one_chunk(server: LiveServer) -> None:
    x, _ = _stream()
    whole = _play(server, x, len(x))
    assert _play(server, x, 37) == whole
    assert _play(server, x, 1)[1][:60] == whole[1][:60]


def test_the_served_rate_falls_while_the_wrist_rests(server: LiveServer) -> None:
    x, idle = _stream()
    _, updates = _play(server, x, 100)
    per_step = np.asarray(updates, float)
    settled = idle.copy()
    settled[REST_ROWS + len(watch_steps()) : REST_ROWS + len(watch_steps()) + 25] = False
    assert per_step[settled].mean() < per_step[~idle].mean() / 3
