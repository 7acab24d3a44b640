"""Shared fakes and helpers of the test suites (imported by them; no test module imports
another's). Its fixtures reach every test through conftest's pytest_plugins.

- A fake engine (FakeEngine) for the batcher and data-plane suites: h_t = state + the running
  sum of each step's features, every row stopped at its length (padded steps get NaN logits),
  so a job given another job's rows, or padding, shows up as a wrong answer.
- A tiny model card for it (CARD) and `make_plane`, a factory of started data planes over a
  MemoryStore.
- `rest_answers`: the answers of a REST session fed chunks in order, the reference the
  WebSocket and kernel suites compare with; `assert_same_outputs`, the kernel's tolerance
  against the dense graph; `watch_like` inputs.
"""

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from sarnn_serve.auth import KeyRing, Principal
from sarnn_serve.card import ModelCard
from sarnn_serve.engine import DENSE, EngineOutput
from sarnn_serve.metrics import Monitor, PromMetrics
from sarnn_serve.registry import LoadedModel, Registry
from sarnn_serve.schemas import ChunkRequest
from sarnn_serve.service import DataPlane
from sarnn_serve.settings import Settings
from sarnn_serve.store.memory import MemoryStore

ATOL = 1e-5
Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]
FEATURES = 3
STATE = 4
CLASSES = 2
FAIL = 666.0  # a feature value that makes the fake engine raise


def fake_outputs(
    x: np.ndarray, state: np.ndarray, lengths: np.ndarray, threshold: np.ndarray
) -> EngineOutput:
    """Deterministic graph outputs for x [B,T,F] from state [B,S], rows stopping at lengths."""
    b, t, _ = x.shape
    with np.errstate(over="ignore"):  # a test drives rows to inf on purpose
        h = state[:, None, :] + np.cumsum(x.sum(axis=-1), axis=1)[:, :, None]
    live = np.arange(t)[None, :] < lengths[:, None]
    logits = np.where(live[..., None], h[..., :CLASSES] * np.arange(1, CLASSES + 1), np.nan)
    updates = (np.abs(h) % 1.0 > threshold[:, None, None]) | ~live[..., None]
    return EngineOutput(
        logits.astype(np.float32), updates, h[np.arange(b), lengths - 1].astype(np.float32)
    )


class FakeEngine:
    """Stands in for engine.Engine: records each call's (rows, steps) and graph; `gate` holds
    calls. Both graphs give the same answers, as the real ones do."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.paths: list[str] = []
        self.threads: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def run(
        self,
        x: np.ndarray,
        state: np.ndarray,
        lengths: np.ndarray,
        threshold: np.ndarray,
        path: str = DENSE,
    ) -> EngineOutput:
        self.calls.append((x.shape[0], x.shape[1]))
        self.paths.append(path)
        self.threads.append(threading.get_ident())
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if (x == FAIL).any():
            raise RuntimeError("engine failed")
        return fake_outputs(x, state, lengths, threshold)


def solo(x: np.ndarray, state: np.ndarray, threshold: float) -> EngineOutput:
    """The fake engine's answer for one chunk run alone (row 0 of a batch of one)."""
    out = fake_outputs(
        x[None], state[None], np.asarray([len(x)]), np.asarray([threshold], np.float32)
    )
    return EngineOutput(out.logits[0], out.updates[0], out.state[0])


MODEL = "tiny-gru"
CARD = ModelCard.model_validate(
    {
        "name": MODEL,
        "version": "v1",
        "cell": "gru",
        "n_features": FEATURES,
        "hidden": STATE,
        "n_classes": CLASSES,
        "feature_names": ["ax", "ay", "az"],
        "class_labels": ["rest", "move"],
        "threshold": 0.5,
        "alpha": 1.92,
        "training": {"dataset": "watch", "recipe": "none", "seed": 0, "lam": 2.5, "steps": 1},
        "evaluation": {
            "streaming_accuracy": 0.9,
            "last_step_accuracy": 0.9,
            "update_rate": 0.5,
        },
    }
)
MakePlane = Callable[..., Awaitable[DataPlane]]


@pytest.fixture
async def make_plane() -> AsyncIterator[MakePlane]:
    """Factory of started data planes over a MemoryStore: make_plane(settings, card)."""
    executor = ThreadPoolExecutor(1)
    planes: list[DataPlane] = []

    async def make(settings: Settings | None = None, card: ModelCard = CARD) -> DataPlane:
        settings = settings or Settings()
        plane = DataPlane(
            settings,
            Registry({MODEL: LoadedModel(card, FakeEngine())}),
            MemoryStore(settings.max_sessions),
            Monitor(PromMetrics(), {MODEL: CARD.hidden}),
            executor,
            keyring=KeyRing.from_settings(settings),
        )
        await plane.start()
        planes.append(plane)
        return plane

    yield make
    for plane in planes:
        await plane.stop()
    executor.shutdown()


def chunk(seq: int, x: np.ndarray, include_mask: bool = False) -> ChunkRequest:
    return ChunkRequest(seq=seq, inputs=x.tolist(), include_mask=include_mask)


def anonymous(host: str = "10.0.0.1") -> Principal:
    return Principal(f"ip-{host}")


async def rest_answers(url: str, chunks: list[list], include_mask: bool = False) -> list[dict]:
    """The chunk answers of a new REST session fed `chunks` in order."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        sid = (await c.post("/v1/sessions", json={})).json()["id"]
        out = []
        for seq, chunk in enumerate(chunks):
            body = {"seq": seq, "inputs": chunk, "include_mask": include_mask}
            r = await c.post(f"/v1/sessions/{sid}/chunks", json=body)
            assert r.status_code == 200, r.text
            out.append(r.json())
        await c.delete(f"/v1/sessions/{sid}")
    return out


def assert_same_outputs(got: Outputs, want: Outputs, label: str = "") -> None:
    """(logits, updates, state) of two runs: update masks identical, logits and state within
    ATOL (the native kernel against the dense graph)."""
    assert got[1].dtype == np.bool_ and got[1].shape == want[1].shape, label
    assert got[0].shape == want[0].shape and got[2].shape == want[2].shape, label
    where = np.argwhere(got[1] != want[1])
    assert where.size == 0, f"{label}: {len(where)} updates differ, first at [b,t,h] {where[:3]}"
    np.testing.assert_allclose(got[0], want[0], atol=ATOL, rtol=0, err_msg=f"{label}: logits")
    np.testing.assert_allclose(got[2], want[2], atol=ATOL, rtol=0, err_msg=f"{label}: state")


def watch_like(seed: int, steps: int) -> np.ndarray:
    """Raw watch-like inputs [T, 6] (accelerometer, gyroscope)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (steps, 6)) * [0.6, 0.6, 0.6, 1.5, 1.5, 1.5]
    return x.astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
