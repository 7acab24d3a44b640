"""The client streams a recording while its server is killed (SIGKILL) and started again twice:
every step is answered once, and the answers are the offline ones.

Real parts: a redis-server holding the sessions, `sarnn-serve` processes (uvicorn) serving the
shipped watch-gru model on one loopback port, the client in a thread, and onnxruntime running
the model's chunk graph offline for the reference. A kill may land while a chunk is on the
wire, after the server applied it, or between chunks; the client resends the unanswered
chunk with its seq to the restarted server, which applies it or answers it from the stored
answer.
"""

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sarnn_serve.client import Answer, Client, Retry, SessionInfo, csv_chunks
from tests.service_fixtures import RECORDING, SHIPPED_MODELS, free_port, start_server, stop_server

pytestmark = pytest.mark.slow  # starts redis-server and three sarnn-serve processes per case

MODEL = "watch-gru"
CHUNK = 2
KILL_AFTER = (25, 80)  # answers received before each kill (of 150)


def offline_answers(model_dir: Path, chunks: list[np.ndarray]) -> tuple[list[int], list[int]]:
    """Classes and update counts per step from onnxruntime on the chunk graph, the state
    carried from chunk to chunk (threshold: the graph's default, the card's)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    graph = ort.InferenceSession(
        str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )
    state = np.zeros((1, graph.get_inputs()[1].shape[1]), np.float32)
    classes: list[int] = []
    updates: list[int] = []
    for x in chunks:
        logits, mask, state = graph.run(None, {"x": x[None], "state": state})
        classes += logits[0].argmax(axis=-1).tolist()
        updates += mask[0].sum(axis=-1).tolist()
    return classes, updates


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A models directory holding only the shipped watch-gru (as a server loads it)."""
    out = tmp_path / "models" / MODEL
    out.mkdir(parents=True)
    for name in ("model.json", "model.onnx", "model.sparse.onnx"):
        shutil.copy2(SHIPPED_MODELS / MODEL / name, out / name)
    return out.parent


@pytest.mark.parametrize(("transport", "encoding"), [("websocket", "binary"), ("rest", "json")])
def test_killed_and_restarted_server_loses_and_doubles_nothing(
    models: Path, redis_url: str, tmp_path: Path, transport: str, encoding: str
) -> None:
    port = free_port()
    env = {"SARNN_STORE": "redis", "SARNN_REDIS_URL": redis_url}
    server = start_server(models, tmp_path, env, port)
    url = f"http://127.0.0.1:{port}"
    with Client(url) as probe:
        features = probe.model(MODEL)["feature_names"]
    chunks = list(csv_chunks(RECORDING, features, CHUNK))
    answers: list[Answer] = []
    totals: list[SessionInfo] = []
    failures: list[BaseException] = []
    killed_at: list[int] = []

    def stream() -> None:
        try:
            with Client(url, retry=Retry(timeout_s=120)) as client:
                session = client.open(MODEL, transport=transport, encoding=encoding)
                for rows in chunks:
                    answers.append(session.send(rows))
                totals.append(session.delete())
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        for count in KILL_AFTER:
            deadline = time.monotonic() + 120
            while len(answers) < count and not failures and time.monotonic() < deadline:
                time.sleep(0.001)
            assert not failures, failures
            server.process.kill()  # no shutdown: whatever was in flight is cut
            server.process.wait()
            killed_at.append(len(answers))
            time.sleep(0.3)
            server = start_server(models, tmp_path, env, port)
        streamer.join(180)
    finally:
        stop_server(server)
    assert not streamer.is_alive(), "the stream did not finish"
    assert not failures, failures
    assert all(n < len(chunks) for n in killed_at), "a kill came after the stream ended"

    steps = sum(len(c) for c in chunks)
    assert [a.seq for a in answers] == list(range(len(chunks)))
    assert [a.first_index for a in answers] == list(range(0, steps, CHUNK))  # 0 lost, 0 doubled
    assert totals[0].steps == answers[-1].session_steps == steps
    assert totals[0].next_seq == len(chunks)
    classes, updates = offline_answers(models / MODEL, chunks)
    assert np.concatenate([a.classes for a in answers]).tolist() == classes
    assert np.concatenate([a.updates for a in answers]).tolist() == updates
    assert totals[0].updates == sum(updates)
