"""End to end: real held-out watch recordings through both transports of a live server.

The exported graph run offline with onnxruntime over each whole recording from a zero state is
the reference. Streaming the same recording in random-sized chunks (1..64 steps) over the
WebSocket and over REST, all four streams at once so the micro-batcher pads and mixes their
chunks, must give the same predicted class and update count at every step, and probabilities
within 1e-5.
"""

import asyncio
import json
from pathlib import Path

import httpx
import msgpack
import numpy as np
import onnxruntime as ort
import pytest
from websockets.asyncio.client import connect

from tests.service_fixtures import TINY_MODEL, LiveServer

# starts sarnn-serve processes; streams whole held-out watch recordings (the datasets: `train`)
pytestmark = [pytest.mark.slow, pytest.mark.train]

N_RECORDINGS = 2
MAX_CHUNK = 64


@pytest.fixture(scope="module")
def recordings() -> list[np.ndarray]:
    """The shortest held-out recording of each of two test subjects (about 1.3-1.9k steps)."""
    from export.data import load_watch

    test = load_watch().test
    subjects = sorted({r.subject for r in test})[:N_RECORDINGS]
    picked = [min((r for r in test if r.subject == s), key=lambda r: len(r.x)) for s in subjects]
    assert len(picked) == N_RECORDINGS
    return [np.ascontiguousarray(r.x, dtype=np.float32) for r in picked]


@pytest.fixture(scope="module")
def offline(served_models: Path, recordings: list[np.ndarray]) -> list[dict]:
    """Class, update count and probabilities of every step, from one run over each recording."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        str(served_models / TINY_MODEL / "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )
    hidden = sess.get_inputs()[1].shape[1]
    out = []
    for x in recordings:
        logits, updates, _ = sess.run(
            None, {"x": x[None], "state": np.zeros((1, hidden), np.float32)}
        )
        z = logits[0].astype(np.float64)
        e = np.exp(z - z.max(-1, keepdims=True))
        probs = e / e.sum(-1, keepdims=True)
        out.append(
            {
                "classes": probs.astype(np.float32).argmax(-1),
                "updates": updates[0].sum(-1),
                "probs": probs,
            }
        )
    return out


def chunk_sizes(total: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = []
    while total:
        n = min(total, int(rng.integers(1, MAX_CHUNK + 1)))
        sizes.append(n)
        total -= n
    return sizes


async def via_websocket(server: LiveServer, x: np.ndarray, seed: int) -> tuple[list[dict], dict]:
    """Stream x over /v1/stream in random chunks, each frame JSON or msgpack at random."""
    rng = np.random.default_rng(seed + 1)
    steps, at = [], 0
    async with connect(f"{server.ws_url}/v1/stream", compression=None) as ws:
        sid = json.loads(await ws.recv())["session"]["id"]
        for seq, n in enumerate(chunk_sizes(len(x), seed)):
            body = {"seq": seq, "inputs": x[at : at + n].tolist()}
            at += n
            await ws.send(msgpack.packb(body) if rng.random() < 0.5 else json.dumps(body))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert answer["type"] == "chunk", answer
            steps += answer["steps"]
    async with httpx.AsyncClient(base_url=server.url) as c:
        summary = (await c.delete(f"/v1/sessions/{sid}")).json()
    return steps, summary


async def via_rest(server: LiveServer, x: np.ndarray, seed: int) -> tuple[list[dict], dict]:
    steps, at = [], 0
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        sid = (await c.post("/v1/sessions", json={"model": TINY_MODEL})).json()["id"]
        for seq, n in enumerate(chunk_sizes(len(x), seed)):
            body = {"seq": seq, "inputs": x[at : at + n].tolist()}
            at += n
            r = await c.post(f"/v1/sessions/{sid}/chunks", json=body)
            assert r.status_code == 200, r.text
            steps += r.json()["steps"]
        summary = (await c.delete(f"/v1/sessions/{sid}")).json()
    return steps, summary


async def test_streamed_recordings_equal_offline_run(
    live_server: LiveServer, recordings: list[np.ndarray], offline: list[dict]
) -> None:
    jobs = []
    for i, x in enumerate(recordings):
        jobs.append(via_websocket(live_server, x, seed=10 + i))
        jobs.append(via_rest(live_server, x, seed=20 + i))
    results = await asyncio.gather(*jobs)

    for k, (steps, summary) in enumerate(results):
        i, transport = divmod(k, 2)
        ref, n = offline[i], len(recordings[i])
        where = f"recording {i} over {('websocket', 'rest')[transport]}"
        assert [s["index"] for s in steps] == list(range(n)), where
        classes = np.asarray([s["class"] for s in steps])
        updates = np.asarray([s["updates"] for s in steps])
        bad = np.flatnonzero(classes != ref["classes"])
        assert bad.size == 0, f"{where}: class differs at steps {bad[:10]}"
        bad = np.flatnonzero(updates != ref["updates"])
        assert bad.size == 0, f"{where}: update count differs at steps {bad[:10]}"
        probs = np.asarray([s["probabilities"] for s in steps])
        np.testing.assert_allclose(probs, ref["probs"], rtol=0, atol=1e-5, err_msg=where)
        assert summary["steps"] == n
        assert summary["updates"] == int(ref["updates"].sum())
