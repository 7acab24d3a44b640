"""Checkpoints load with weights_only=True: a pickle that would run code is refused, not run."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import torch

from export.model import SARNN, ModelConfig, load_checkpoint, save_checkpoint
from sarnn_serve.settings import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.train  # needs the training extra


class MarkerPayload:
    """Unpickles as open(marker, "w"): creating the file proves the pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def _tiny() -> SARNN:
    torch.manual_seed(0)
    model = SARNN(ModelConfig(cell="lstm", n_features=3, hidden=5, n_classes=2))
    model.alpha = 1.4
    return model


def _bare(marker: Path) -> object:
    return MarkerPayload(marker)


def _inside_checkpoint(marker: Path) -> object:
    """A genuine-looking checkpoint with the payload hidden in its metadata."""
    model = _tiny()
    return {
        "format": "sarnn-checkpoint/1",
        "config": model.config.to_dict(),
        "alpha": model.alpha,
        "state_dict": model.state_dict(),
        "dataset": MarkerPayload(marker),
    }


@pytest.mark.parametrize("legacy_format", [False, True])
@pytest.mark.parametrize("make", [_bare, _inside_checkpoint])
def test_malicious_checkpoint_is_refused_without_running(tmp_path, make, legacy_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(make(marker), path, _use_new_zipfile_serialization=not legacy_format)
    assert not marker.exists()
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_the_payload_is_live_under_an_unsafe_load(tmp_path):
    """Guards the test above: the same file does run code when loaded with weights_only=False."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(_bare(marker), path)
    torch.load(path, weights_only=False).close()
    assert marker.exists()


def test_checkpoint_round_trips_as_plain_data(tmp_path):
    model = _tiny()
    extra = {
        "dataset": "basicmotions",
        "class_labels": ["a", "b"],
        "sample_rate_hz": 10.0,
        "metrics": {"test": {"streaming_accuracy": np.float64(0.75), "steps": np.int64(12)}},
        "shape": (3, 5),
    }
    path = tmp_path / "m.pt"
    save_checkpoint(model, str(path), extra)
    torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    loaded, blob = load_checkpoint(str(path))
    assert loaded.config == model.config and loaded.alpha == model.alpha
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    test = blob["metrics"]["test"]
    assert test == {"streaming_accuracy": 0.75, "steps": 12}
    assert type(test["streaming_accuracy"]) is float and type(test["steps"]) is int
    assert blob["class_labels"] == ["a", "b"] and blob["shape"] == (3, 5)


def test_save_refuses_metadata_that_is_not_plain_data(tmp_path):
    path = tmp_path / "m.pt"
    with pytest.raises(TypeError, match=r"checkpoint\['metrics'\]\['when'\] has type object"):
        save_checkpoint(_tiny(), str(path), {"metrics": {"when": object()}})
    assert not path.exists()


def test_metadata_cannot_override_the_checkpoint_fields(tmp_path):
    model = _tiny()
    save_checkpoint(model, str(tmp_path / "m.pt"), {"alpha": 9.0, "format": "other"})
    loaded, blob = load_checkpoint(str(tmp_path / "m.pt"))
    assert loaded.alpha == model.alpha and blob["format"] == "sarnn-checkpoint/1"


def test_damaged_config_is_a_value_error(tmp_path):
    model = _tiny()
    path = tmp_path / "m.pt"
    save_checkpoint(model, str(path), {})
    blob = torch.load(path, weights_only=True)
    blob["config"]["hidden"] = 6
    torch.save(blob, path)
    with pytest.raises(ValueError, match="damaged sarnn checkpoint"):
        load_checkpoint(str(path))


def test_shipped_checkpoint_loads_safely_and_matches_its_card():
    model_dir = DEFAULT_MODEL_DIR / "watch-gru"
    model, blob = load_checkpoint(str(model_dir / "checkpoint.pt"))
    card = json.loads((model_dir / "model.json").read_text())
    cfg = model.config
    assert (cfg.cell, cfg.n_features, cfg.hidden, cfg.n_classes, cfg.selective) == (
        card["cell"],
        card["n_features"],
        card["hidden"],
        card["n_classes"],
        card["selective"],
    )
    assert model.alpha == card["alpha"]
    assert blob["class_labels"] == card["class_labels"]
