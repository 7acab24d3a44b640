"""`python -m export tiny-fixture`: the small model and recording the tests serve and stream.

Trains a GRU SA-RNN with 16 neurons on the watch data for a few seconds (seeded), exports it
with the real exporter and keeps only what a server loads (model.json, model.onnx and its
sparse twin: a few kB), then writes the first 300 samples of held-out watch recording 0 as a
CSV file with a label column. The tests use both without torch; run this again after a change
to the exporter or the card format, and commit the result.
"""

import contextlib
import csv
import shutil
import tempfile
from pathlib import Path

from export.data import load_watch

MODEL = "watch-tiny"
SERVED_FILES = ("model.json", "model.onnx", "model.sparse.onnx")
RECORDING = "watch-test-0.csv"
RECORDING_ROWS = 300
DEFAULT_OUT = Path("tests/data")


def train_tiny(run: Path) -> Path:
    """Train the tiny model into the run directory `run` (checkpoint.pt, metrics.json)."""
    from export.train import TrainConfig, train

    config = TrainConfig(
        dataset="watch",
        hidden=16,
        lam=2.0,
        target_rate=0.5,
        epochs=2,
        batches_per_epoch=4,
        batch_size=8,
        window=64,
        seed=0,
    )
    train(config, run, progress=False)
    return run


def write_model(models: Path) -> Path:
    """Train and export the tiny model into models/watch-tiny (replacing it)."""
    from export.onnx_export import export_model

    out = (models / MODEL).resolve()
    # trained in a temporary working directory, so that the card's recipe reads `--out run`
    # whatever the directory's name: the same command writes the same bytes
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        train_tiny(Path("run"))
        exported = export_model(Path("run/checkpoint.pt"), Path(MODEL))
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for name in SERVED_FILES:
            shutil.copy2(exported / name, out / name)
    return out


def write_recording(path: Path) -> Path:
    """The first RECORDING_ROWS samples of held-out watch recording 0, with its label."""
    data = load_watch()
    rec = data.test[0]
    label = data.class_labels[rec.label]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*data.feature_names, "label"])
        for row in rec.x[:RECORDING_ROWS]:
            writer.writerow([*(str(v) for v in row), label])  # float32 str: exact round trip
    return path


def make_fixture(out: Path = DEFAULT_OUT) -> None:
    model = write_model(out / "models")
    recording = write_recording(out / RECORDING)
    for path in [*sorted(model.iterdir()), recording]:
        print(f"{path}  {path.stat().st_size} bytes")
