"""The shipped default model: it loads in the runtime, its card matches its graph, and it meets
the figures its card claims on the held-out recordings."""

import json

import numpy as np
import pytest

pytest.importorskip("seglearn")


from export.data import load_watch, pad_recordings
from sarnn_serve.registry import Registry
from sarnn_serve.settings import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.train  # needs the training extra

SHIPPED = "watch-gru"


@pytest.fixture(scope="module")
def shipped():
    return Registry.load(DEFAULT_MODEL_DIR).get(SHIPPED)


def test_shipped_model_loads_and_passed_its_parity_check(shipped):
    card = shipped.card
    assert (card.cell, card.hidden, card.n_features, card.n_classes) == ("gru", 128, 6, 7)
    report = json.loads((DEFAULT_MODEL_DIR / SHIPPED / "verify.json").read_text())
    assert report["ok"]
    assert report["data"]["mismatches_far"] == 0
    assert report["data"]["steps"] >= 10_000 and report["random"]["steps"] >= 10_000


def test_shipped_model_reproduces_its_card_on_held_out_subjects(shipped):
    """Streaming accuracy (after the first 2 s) and update rate recomputed with onnxruntime."""
    card = shipped.card
    data = load_watch(tuple(card.training.test_subjects))
    x, lengths = pad_recordings(data.test)
    state = np.zeros((len(x), card.state_size), np.float32)
    out = shipped.engine.run(x, state, lengths)
    labels = np.asarray([r.label for r in data.test])
    skip = int(2 * card.sample_rate_hz)
    t = np.arange(x.shape[1])[None, :]
    scored = (t >= skip) & (t < lengths[:, None])
    valid = t < lengths[:, None]
    correct = (out.logits.argmax(-1) == labels[:, None]) & scored
    accuracy = correct.sum() / scored.sum()
    rate = out.updates[valid].sum() / (valid.sum() * card.hidden)
    assert accuracy == pytest.approx(card.evaluation.streaming_accuracy, abs=1e-3)
    assert rate == pytest.approx(card.evaluation.update_rate, abs=1e-3)
    assert rate <= 0.5
