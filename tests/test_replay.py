"""`sarnn-serve replay` against a real server: CSV files written from a held-out watch recording
(tests/data) are streamed over the WebSocket at maximum speed (in-process, through
`sarnn_serve.cli.main`) and the printed summary is checked against the server's own session
totals."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from sarnn_serve.cli import main
from sarnn_serve.client.recordings import read_csv
from tests.service_fixtures import RECORDING, TINY_MODEL, LiveServer

pytestmark = pytest.mark.slow  # starts sarnn-serve processes

ROWS = 300
FEATURES = ["ax", "ay", "az", "wx", "wy", "wz"]


@pytest.fixture(scope="module")
def watch_recording() -> tuple[np.ndarray, str]:
    """The first ROWS samples of held-out watch recording 0 and its class label (the
    checked-in CSV file)."""
    table = read_csv(RECORDING, features=FEATURES)
    assert len(table.x) == ROWS and table.labels is not None and len(set(table.labels)) == 1
    return table.x, table.labels[0]


def write_csv(path: Path, x: np.ndarray, columns: list[str], labels: list[str] | None) -> Path:
    """Columns in the given order (names from FEATURES or extra ones filled with the row index)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns + (["label"] if labels is not None else []))
        for i, row in enumerate(x):
            cells = [
                repr(float(row[FEATURES.index(c)])) if c in FEATURES else str(i) for c in columns
            ]
            w.writerow(cells + ([labels[i]] if labels is not None else []))
    return path


def parse_summary(text: str) -> dict[str, str]:
    """`name   value` lines of the printed summary -> {name: value}."""
    out = {}
    for line in text.strip().splitlines():
        name, _, value = re.split(r"(\s{2,})", line.strip(), maxsplit=1)
        out[name] = value
    return out


def first_int(value: str) -> int:
    return int(value.split()[0])


def replay(server: LiveServer, *extra: str) -> int:
    return main(["replay", "--url", server.ws_url, "--max-speed", "--no-progress", *extra])


def test_replay_csv_summary_matches_the_server(
    live_server: LiveServer,
    watch_recording: tuple[np.ndarray, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    x, label = watch_recording
    path = write_csv(tmp_path / "rec.csv", x, FEATURES, [label] * len(x))
    assert replay(live_server, "--csv", str(path), "--chunk", "8", "--keep-session") == 0
    printed = parse_summary(capsys.readouterr().out)

    steps = first_int(printed["steps"])
    assert steps == len(x) == ROWS
    assert first_int(printed["messages"]) == -(-ROWS // 8)
    assert printed["true label"] == label
    accuracy, scored = re.match(
        r"([\d.]+) \(after the first 2 s: (\d+) steps\)", printed["step accuracy"]
    ).groups()
    assert 0.0 <= float(accuracy) <= 1.0 and int(scored) == ROWS - 100  # 2 s at 50 Hz
    assert re.fullmatch(r"\S+ \((correct|wrong, true \S+)\)", printed["last step"])
    rate = float(printed["update rate"].split()[0])
    assert 0.0 <= rate <= 1.0

    session_id = printed["session"].split()[0]
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        session = c.get(f"/v1/sessions/{session_id}").json()
        card = c.get(f"/v1/models/{TINY_MODEL}").json()
        c.delete(f"/v1/sessions/{session_id}")
    assert session["steps"] == steps and session["next_seq"] == -(-ROWS // 8)
    for key in ("macs_dense", "macs_selective", "macs_saved"):
        assert first_int(printed[key.replace("_", " ")]) == session[key]
    assert session["macs_saved"] == session["macs_dense"] - session["macs_selective"]
    assert session["macs_dense"] == steps * card["cost_per_step"]["dense_macs"]
    assert (
        f"({session['updates']} of {steps * card['hidden']} neuron slots)"
        in (printed["update rate"])
    )
    assert rate == pytest.approx(session["update_rate"], abs=5e-5)


def test_columns_are_matched_by_name(
    live_server: LiveServer,
    watch_recording: tuple[np.ndarray, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Shuffled columns plus an extra one give the same run as the card's order; labels may be
    class indices; without a label column the accuracy is not reported."""
    x, label = watch_recording
    x = x[:60]
    plain = write_csv(tmp_path / "plain.csv", x, FEATURES, None)
    index = str(["PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW"].index(label))
    mixed = write_csv(tmp_path / "mixed.csv", x, ["t", *reversed(FEATURES)], [index] * len(x))

    assert replay(live_server, "--csv", str(plain)) == 0
    a = parse_summary(capsys.readouterr().out)
    assert replay(live_server, "--csv", str(mixed)) == 0
    b = parse_summary(capsys.readouterr().out)
    assert a["true label"].startswith("unknown") and "step accuracy" not in a
    assert b["true label"] == label
    for key in ("steps", "messages", "update rate", "macs selective", "last step"):
        assert a[key].split()[0] == b[key].split()[0], key
    assert first_int(a["messages"]) == 60  # --chunk defaults to one sample per message


def test_csv_missing_a_column_fails_naming_it(
    live_server: LiveServer,
    watch_recording: tuple[np.ndarray, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    x, _ = watch_recording
    path = write_csv(tmp_path / "short.csv", x[:10], FEATURES[:5], None)
    assert replay(live_server, "--csv", str(path)) != 0
    captured = capsys.readouterr()
    assert "'wz'" in captured.err and "lacks column" in captured.err
    assert captured.out == ""


def test_bad_label_and_unknown_model_fail_clearly(
    live_server: LiveServer,
    watch_recording: tuple[np.ndarray, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    x, _ = watch_recording
    path = write_csv(tmp_path / "bad.csv", x[:3], FEATURES, ["PEN", "JUMP", "PEN"])
    assert replay(live_server, "--csv", str(path)) == 2
    assert "line 3" in (err := capsys.readouterr().err) and "'JUMP'" in err
    assert replay(live_server, "--csv", str(path), "--model", "nope") == 2
    assert "no model 'nope'" in capsys.readouterr().err


def test_paced_replay_takes_real_time(
    live_server: LiveServer,
    watch_recording: tuple[np.ndarray, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    x, _ = watch_recording
    path = write_csv(tmp_path / "paced.csv", x[:25], FEATURES, None)
    argv = ["replay", "--url", live_server.ws_url, "--csv", str(path), "--rate", "200"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = parse_summary(captured.out)
    assert first_int(printed["steps"]) == 25
    assert float(printed["elapsed"].split()[0]) >= 24 / 200 * 0.95
    assert "paced at 200 samples/s" in printed["elapsed"]
    assert "25/25" in captured.err  # the progress bar


@pytest.mark.train
def test_dataset_recording_without_torch(live_server: LiveServer) -> None:
    """`--dataset watch --recording N` in a fresh interpreter: steps equal the recording's length,
    its true label is reported, and neither sarnn_serve nor export.data imported torch."""
    pytest.importorskip("seglearn")
    code = (
        "import sys\n"
        "from sarnn_serve.cli import main\n"
        f"rc = main(['replay', '--url', {live_server.ws_url!r}, '--dataset', 'watch', "
        "'--recording', '1', '--max-speed', '--chunk', '128', '--no-progress'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "from export.data import load_watch\n"
        "d = load_watch()\n"
        "print('expect', len(d.test[1].x), d.class_labels[d.test[1].label])\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    _, length, label = lines[-1].split()
    printed = parse_summary("\n".join(lines[:-1]))
    assert first_int(printed["steps"]) == int(length)
    assert printed["true label"] == label
    assert printed["replayed"].startswith("watch test recording 1")


def test_every_message_format_replays_to_the_same_summary(
    live_server: LiveServer,
    watch_recording: tuple[np.ndarray, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    x, label = watch_recording
    path = write_csv(tmp_path / "rec.csv", x, FEATURES, [label] * len(x))
    printed = {}
    for fmt in ("json", "msgpack", "raw"):
        assert replay(live_server, "--csv", str(path), "--chunk", "8", "--format", fmt) == 0
        printed[fmt] = parse_summary(capsys.readouterr().out)
    keys = ("steps", "messages", "step accuracy", "last step", "update rate", "macs saved")
    for fmt in ("msgpack", "raw"):
        assert {k: printed[fmt][k] for k in keys} == {k: printed["json"][k] for k in keys}


def test_stream_file_with_idle_rows_scores_bouts_and_splits_the_update_rate(
    live_server: LiveServer,
    watch_recording: tuple[np.ndarray, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Rows labelled `idle` (a stream of `python -m export streams --csv`) are never scored,
    each bout is scored from 2 s after it starts, and the update rate is given on idle and on
    active rows apart, adding up to the session's."""
    x, label = watch_recording
    rest = np.tile(np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0], np.float32), (150, 1))
    rows = np.vstack([rest, x[:150], rest, x[150:]])
    labels = ["idle"] * 150 + [label] * 150 + ["idle"] * 150 + [label] * 150
    path = write_csv(tmp_path / "stream.csv", rows, FEATURES, labels)
    assert replay(live_server, "--csv", str(path), "--chunk", "30") == 0
    printed = parse_summary(capsys.readouterr().out)
    assert printed["true label"] == "per row (varies)"
    assert re.search(r"\(after the first 2 s: 100 steps\)", printed["step accuracy"])  # 2 x 50
    idle = float(printed["update rate idle"].split()[0])
    active = float(printed["update rate active"].split()[0])
    assert "(300 rows)" in printed["update rate idle"]
    overall = float(printed["update rate"].split()[0])
    assert overall == pytest.approx((idle + active) / 2, abs=1e-4)
