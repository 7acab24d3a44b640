"""Your own recordings: the shared reader (sarnn_serve.client.recordings), the split by group
(export.data), and a folder of CSV files trained, exported, verified, served and replayed."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("torch")

import onnxruntime as ort

from export.data import load_data, load_files, split_groups
from sarnn_serve.client.recordings import read_csv, read_folder, read_npz
from sarnn_serve.replay import ReplayError, load_csv
from tests.service_fixtures import start_server, stop_server

pytestmark = pytest.mark.train  # needs the training extra

HEADER = ["time", "subject", "u", "v", "label"]
RATE_HZ = 10.0


def write_rows(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def drift_recording(rng: np.random.Generator, label: str, steps: int) -> np.ndarray:
    """Two noisy channels; the class is the one whose running sum grows (mean 0.5, noise 1.5):
    one sample says little, the history says which."""
    x = 1.5 * rng.standard_normal((steps, 2))
    x[:, "UV".index(label)] += 0.5
    return x


def write_task(folder: Path, subjects: int = 6, steps: int = 80, seed: int = 0) -> Path:
    """One CSV per (subject, class): columns time (ignored), subject (group), u, v, label."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(1, subjects + 1):
        for label in "UV":
            x = drift_recording(rng, label, steps)
            rows = [
                [f"{t / RATE_HZ:.1f}", f"s{s}", repr(float(a)), repr(float(b)), label]
                for t, (a, b) in enumerate(x)
            ]
            write_rows(folder / f"s{s}-{label}.csv", HEADER, rows)
    return folder


def small_rows(label: str = "U", subject: str = "s1") -> list[list]:
    return [["0.0", subject, "1.0", "2.0", label], ["0.1", subject, "1.5", "2.5", label]]


# --- the reader ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["0.0", "s1", "1", "2", "U"], ["0.1", "s1", "1", "U"]], r"line 3: 4 cells, expected 5"),
        ([["0.0", "s1", "abc", "2", "U"]], r"line 2, column 'u': 'abc' is not a number"),
        ([["0.0", "s1", "1", "nan", "U"]], r"line 2, column 'v': 'nan' is not finite"),
        ([["0.0", "s1", "1", "", "U"]], r"line 2, column 'v': '' is not a number"),
        ([["0.0", "s1", "1", "2", "U"], ["0.1", "s2", "1", "2", "U"]], r"line 3: the group"),
        ([], "no data rows"),
    ],
)
def test_reader_names_the_file_line_and_column(tmp_path, rows, message):
    path = write_rows(tmp_path / "rec.csv", HEADER, rows)
    with pytest.raises(ValueError, match=message) as caught:
        read_csv(path, ignore=["time"], group_column="subject")
    assert str(path) in str(caught.value)


def test_reader_takes_every_other_column_or_the_named_ones(tmp_path):
    path = write_rows(tmp_path / "rec.csv", HEADER, small_rows())
    table = read_csv(path, ignore=["time"], group_column="subject")
    assert table.features == ["u", "v"] and table.group == "s1"
    assert table.x.dtype == np.float32 and table.x.tolist() == [[1.0, 2.0], [1.5, 2.5]]
    assert table.labels == ["U", "U"] and table.lines == [2, 3]
    picked = read_csv(path, features=["v", "u"])  # replay: by name, in the card's order
    assert picked.x.tolist() == [[2.0, 1.0], [2.5, 1.5]] and picked.group is None
    with pytest.raises(ValueError, match="lacks column 'tme'"):
        read_csv(path, ignore=["tme"], group_column="subject")
    with pytest.raises(ValueError, match="has no label column 'class'"):
        read_csv(path, label_column="class", ignore=["time"], group_column="subject")


def test_folder_errors(tmp_path):
    write_rows(tmp_path / "a.csv", HEADER, small_rows("U"))
    write_rows(tmp_path / "b.csv", HEADER, [*small_rows("V"), ["0.2", "s1", "1", "1", "U"]])
    with pytest.raises(ValueError, match=r"b\.csv, line 4: the label changes from 'V' to 'U'"):
        read_folder(tmp_path, ignore=["time"], group_column="subject")
    write_rows(
        tmp_path / "b.csv", ["time", "subject", "u", "w", "label"], [["0", "s1", "1", "2", "V"]]
    )
    with pytest.raises(ValueError, match="every recording needs the same columns"):
        read_folder(tmp_path, ignore=["time"], group_column="subject")
    with pytest.raises(ValueError, match=r"holds no \.csv recordings"):
        read_folder(tmp_path / "a.csv")


def test_groups_come_from_the_column_groups_csv_or_the_file(tmp_path):
    for name, label in (("one", "U"), ("two", "V"), ("three", "U")):
        write_rows(tmp_path / f"{name}.csv", ["u", "v", "label"], [["1", "2", label]])
    own = read_folder(tmp_path)
    assert own.names == ["one.csv", "three.csv", "two.csv"]
    assert own.groups == ["one", "three", "two"] and own.class_labels == ["U", "V"]
    assert own.y == [0, 0, 1]
    write_rows(tmp_path / "groups.csv", ["file", "group"], [["one.csv", "g1"], ["two", "g2"]])
    with pytest.raises(ValueError, match=r"has no group for three\.csv"):
        read_folder(tmp_path)
    rows = [["one", "g1"], ["two", "g2"], ["three", "g1"]]
    write_rows(tmp_path / "groups.csv", ["file", "group"], rows)
    assert read_folder(tmp_path).groups == ["g1", "g1", "g2"]


def test_numeric_labels_sort_by_value(tmp_path):
    for i, label in enumerate(["10", "9", "2"]):
        write_rows(tmp_path / f"r{i}.csv", ["u", "label"], [["1", label]])
    raw = read_folder(tmp_path)
    assert raw.class_labels == ["2", "9", "10"] and raw.y == [2, 1, 0]


def test_npz_forms(tmp_path):
    x = np.arange(2 * 4 * 3, dtype=np.float64).reshape(2, 4, 3)
    padded = tmp_path / "padded.npz"
    np.savez(padded, X=x, lengths=np.array([4, 2]), y=np.array(["walk", "run"]))
    raw = read_npz(padded)
    assert [len(r) for r in raw.x] == [4, 2] and raw.x[0].dtype == np.float32
    assert raw.class_labels == ["run", "walk"] and raw.y == [1, 0]
    assert raw.feature_names == ["f0", "f1", "f2"] and raw.groups == ["0", "1"]

    named = tmp_path / "named.npz"
    np.savez(
        named,
        X=x,
        y=np.array([2, 0]),
        groups=np.array([7, 8]),
        feature_names=np.array(["a", "b", "c"]),
        class_labels=np.array(["x", "y", "z"]),
    )
    raw = read_npz(named)
    assert raw.y == [2, 0] and raw.class_labels == ["x", "y", "z"]
    assert raw.groups == ["7", "8"] and raw.feature_names == ["a", "b", "c"]

    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = x[0], x[1, :3]
    objects = tmp_path / "objects.npz"
    np.savez(objects, X=ragged, y=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"object array.*--allow-pickle"):
        read_npz(objects)
    assert [len(r) for r in read_npz(objects, allow_pickle=True).x] == [4, 3]

    bad = x.copy()
    bad[1, 2, 0] = np.nan
    np.savez(tmp_path / "nan.npz", X=bad, y=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"X\[1\] is not finite .* step 2, feature 0"):
        read_npz(tmp_path / "nan.npz")
    with pytest.raises(ValueError, match=r"a folder of CSV files or a \.npz archive"):
        load_files(write_rows(tmp_path / "one.csv", HEADER, small_rows()))
    np.savez(tmp_path / "noy.npz", X=x)
    with pytest.raises(ValueError, match="has no array 'y'"):
        read_npz(tmp_path / "noy.npz")


def test_replay_reads_csv_with_the_shared_reader(tmp_path):
    card = {"name": "m", "feature_names": ["v", "u"], "class_labels": ["U", "V"]}
    path = write_rows(tmp_path / "rec.csv", HEADER, small_rows("1"))
    rec = load_csv(path, card)
    assert rec.x.tolist() == [[2.0, 1.0], [2.5, 1.5]] and rec.labels == ["V", "V"]
    write_rows(path, HEADER, [["0.0", "s1", "1", "oops", "U"]])
    with pytest.raises(ReplayError, match=r"line 2, column 'v': 'oops' is not a number"):
        load_csv(path, card)


def test_reader_and_replay_never_import_torch():
    code = (
        "import sys\nimport sarnn_serve.client.recordings, sarnn_serve.replay, export.data\n"
        "assert 'torch' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- the split ---------------------------------------------------------------------------------


def test_split_groups():
    groups = [f"g{i}" for i in range(10)]
    train, val, test = split_groups(groups, ["g3"], ["g4", "g5"])
    assert (val, test) == (["g3"], ["g4", "g5"]) and len(train) == 7
    once = split_groups(groups, val_fraction=0.2, test_fraction=0.3, seed=4)
    assert once == split_groups(groups, val_fraction=0.2, test_fraction=0.3, seed=4)
    assert [len(p) for p in once] == [5, 2, 3]
    assert sorted(g for part in once for g in part) == sorted(groups)
    assert once != split_groups(groups, val_fraction=0.2, test_fraction=0.3, seed=5)
    with pytest.raises(ValueError, match="validation groups nope not in the data"):
        split_groups(groups, ["nope"])
    with pytest.raises(ValueError, match="g1 are both validation and test"):
        split_groups(groups, ["g1"], ["g1"])
    with pytest.raises(ValueError, match="no group left for training"):
        split_groups(["a", "b"])


def test_normalisation_and_classes_come_from_training_groups_only(tmp_path):
    rng = np.random.default_rng(1)
    for s, offset in (("s1", 0.0), ("s2", 0.0), ("s3", 100.0), ("s4", -50.0)):
        for label in "UV":
            x = drift_recording(rng, label, 30) + offset
            rows = [["0", s, repr(float(a)), repr(float(b)), label] for a, b in x]
            write_rows(tmp_path / f"{s}-{label}.csv", HEADER, rows)
    data = load_files(
        tmp_path,
        ignore_columns=["time"],
        group_column="subject",
        val_groups=["s3"],
        test_groups=["s4"],
    )
    assert (data.train_subjects, data.val_subjects, data.test_subjects) == (
        ["s1", "s2"],
        ["s3"],
        ["s4"],
    )
    mean, std = data.normalisation()
    train = np.concatenate([r.x for r in data.train])
    assert np.allclose(mean, train.mean(0), atol=1e-5) and np.allclose(std, train.std(0))
    assert np.all(np.abs(mean) < 5), "the val/test offsets (+100, -50) must not leak in"

    again = load_data(data.spec)
    assert again.spec == data.spec
    assert [r.x.tolist() for r in again.test] == [r.x.tolist() for r in data.test]

    (tmp_path / "s4-V.csv").unlink()
    rows = [["0", "s4", "1", "2", "W"]]
    write_rows(tmp_path / "s4-W.csv", HEADER, rows)
    with pytest.raises(ValueError, match="class 'W' appears in the test part but not in training"):
        load_files(
            tmp_path,
            ignore_columns=["time"],
            group_column="subject",
            val_groups=["s3"],
            test_groups=["s4"],
        )


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_csv_folder_trains_exports_serves_and_replays(tmp_path):
    import json

    from export.cli import main as export_main
    from export.model import load_checkpoint
    from export.onnx_export import export_model

    folder = write_task(tmp_path / "recordings")
    run = tmp_path / "run"
    argv = ["train", "--data", str(folder), "--ignore-columns", "time", "--group-column"]
    argv += ["subject", "--val-groups", "s5", "--test-groups", "s6", "--sample-rate", "10"]
    argv += ["--hidden", "16", "--epochs", "2", "--batches-per-epoch", "4", "--batch-size", "8"]
    argv += ["--window", "32", "--quiet", "--out", str(run)]
    assert export_main(argv) == 0

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["alpha"] == 5.0
    assert metrics["dataset"]["test_subjects"] == ["s6"] and metrics["dataset"]["test_steps"] == 160
    _, blob = load_checkpoint(str(run / "checkpoint.pt"))
    assert blob["data"]["path"] == str(folder.resolve())
    assert blob["data"]["val_groups"] == ["s5"] and blob["data"]["ignore_columns"] == ["time"]

    models = tmp_path / "models"
    out = export_model(run / "checkpoint.pt", models / "drift")
    report = json.loads((out / "verify.json").read_text())
    assert report["ok"] is True
    assert report["data"]["steps"] == 160, "verify read the test recordings of the checkpoint"

    server = start_server(models, tmp_path)
    try:
        card = httpx.get(f"{server.url}/v1/models/drift", timeout=30).json()
        assert card["feature_names"] == ["u", "v"] and card["class_labels"] == ["U", "V"]
        assert card["sample_rate_hz"] == RATE_HZ
        assert card["training"]["groups"] == {
            "train": ["s1", "s2", "s3", "s4"],
            "val": ["s5"],
            "test": ["s6"],
        }
        assert card["validation"]["update_rate"] == metrics["validation"]["update_rate"]

        recording = folder / "s6-V.csv"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "sarnn_serve.cli",
                "replay",
                "--url",
                server.ws_url,
                "--csv",
                str(recording),
                "--max-speed",
                "--chunk",
                "16",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop_server(server)
    assert done.returncode == 0, done.stderr

    # The same recording offline in onnxruntime: same predictions and gates.
    x = read_csv(recording, features=["u", "v"]).x[None]
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, updates, _ = sess.run(None, {"x": x, "state": np.zeros((1, 16), np.float32)})
    pred = logits[0].argmax(-1)
    skip = int(2 * RATE_HZ)
    accuracy = float((pred[skip:] == 1).mean())
    assert "true label       V" in done.stdout
    assert (
        f"step accuracy    {accuracy:.4f} (after the first 2 s: {80 - skip} steps)" in done.stdout
    )
    assert re.search(rf"last step\s+{'UV'[pred[-1]]} ", done.stdout)
    assert f"({int(updates.sum())} of {80 * 16} neuron slots)" in done.stdout
