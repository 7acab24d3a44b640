"""The ONNX chunk graph (export.onnx_graph / onnx_export) and the export and verify CLIs.

docs/architecture.md, "The chunk graph": inputs x [B,T,F], state [B,S], lengths [L], threshold
[L] (L = B or 1); outputs logits [B,T,C], updates [B,T,H] bool, state_out [B,S]; dynamic B and T;
parity with the PyTorch deterministic mode; chunks and batches must not change a row's answer.
"""

import contextlib
import hashlib
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import onnx
import onnxruntime as ort
import torch

import export.verify
from export.cli import main
from export.model import SARNN, ModelConfig, load_checkpoint, save_checkpoint
from export.onnx_export import build_model
from export.verify import Report, StepParity
from sarnn_serve.card import GRAPH_INPUTS, GRAPH_OUTPUTS, ModelCard

pytestmark = pytest.mark.train  # needs the training extra

ATOL = 1e-5
KNOWN_ORT_WARNINGS = (
    # lengths and threshold are optional inputs with defaults: initializers that are also inputs.
    "Initializer lengths appears in graph inputs",
    "Initializer threshold appears in graph inputs",
)


def _run(sess: ort.InferenceSession, x: np.ndarray, state: np.ndarray, **extra):
    feeds = {"x": x, "state": state}
    for key, value in extra.items():
        feeds[key] = np.asarray(value, np.int64 if key == "lengths" else np.float32)
    logits, updates, state_out = sess.run(None, feeds)
    return logits, updates, state_out


def _torch(model: SARNN, x: np.ndarray, state: np.ndarray, threshold: float = 0.5):
    with torch.no_grad():
        out = model(
            torch.from_numpy(x), torch.from_numpy(state), deterministic=True, threshold=threshold
        )
    return out.logits.numpy(), out.updates.numpy() > 0, out.state.numpy(), out.coordinator.numpy()


def _state(model: SARNN, batch: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.5 * rng.standard_normal((batch, model.state_size))).astype(np.float32)


def _dims(value_info: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# --- the graph itself ---------------------------------------------------------------------


def test_graph_passes_checker_and_has_the_designed_interface(tiny_sarnn, capfd):
    model = tiny_sarnn
    f, h, c, s = 3, model.config.hidden, model.config.n_classes, model.state_size
    proto = build_model(model)
    onnx.checker.check_model(proto, full_check=True)

    graph = proto.graph
    assert [i.name for i in graph.input] == list(GRAPH_INPUTS)
    assert [o.name for o in graph.output] == list(GRAPH_OUTPUTS)
    assert _dims(graph.input[0]) == ["B", "T", f]
    assert _dims(graph.input[1]) == ["B", s]
    assert _dims(graph.input[2]) == ["L"] and _dims(graph.input[3]) == ["L"]
    assert graph.input[2].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert _dims(graph.output[0]) == ["B", "T", c]
    assert _dims(graph.output[1]) == ["B", "T", h]
    assert graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.BOOL
    assert _dims(graph.output[2]) == ["B", s]
    # A real loop over time (not unrolled), with a small body.
    scans = [n for n in graph.node if n.op_type == "Scan"]
    assert len(scans) == 1 and not [n for n in graph.node if n.op_type == "Loop"]
    body = onnx.helper.get_attribute_value(scans[0].attribute[0])
    # Each body node costs ~0.8 us per step (docs/architecture.md, "Measured on a 2-core machine").
    assert len(body.node) <= 30

    capfd.readouterr()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 0
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    _run(sess, np.zeros((2, 4, f), np.float32), np.zeros((2, s), np.float32))
    log = capfd.readouterr().err
    assert "All nodes placed on [CPUExecutionProvider]" in log
    problems = [
        line
        for line in log.splitlines()
        if ("[W:" in line or "[E:" in line) and not any(k in line for k in KNOWN_ORT_WARNINGS)
    ]
    assert problems == []
    for word in ("fallback", "fall back", "not supported", "unsupported"):
        assert word not in log.lower()

    # onnxruntime lists lengths and threshold as overridable initializers, not required inputs.
    assert [i.name for i in sess.get_inputs()] == ["x", "state"]
    assert [i.name for i in sess.get_overridable_initializers()] == ["lengths", "threshold"]
    assert [o.name for o in sess.get_outputs()] == list(GRAPH_OUTPUTS)
    assert sess.get_inputs()[0].shape == ["B", "T", f]
    assert sess.get_outputs()[1].type == "tensor(bool)"


@pytest.mark.parametrize("steps", [37, 5])
@pytest.mark.parametrize("tau", [0.5, 0.3, 0.8])
def test_parity_with_pytorch(tiny_sarnn, tiny_onnx, make_tiny_inputs, steps, tau):
    model = tiny_sarnn
    x, state = make_tiny_inputs(4, steps, seed=steps), _state(model, 4)
    ref_logits, ref_mask, ref_state, coord = _torch(model, x, state, tau)
    assert np.abs(coord).min() > 1e-5, "a near tie would make this seed flaky"
    logits, updates, state_out = _run(tiny_onnx, x, state, threshold=[tau])
    assert logits.shape == (4, steps, model.config.n_classes) and updates.dtype == np.bool_
    assert np.array_equal(updates, ref_mask)
    assert 0.05 < updates.mean() < 0.95, "mixed gates expected"
    np.testing.assert_allclose(logits, ref_logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(state_out, ref_state, atol=ATOL, rtol=0)


def test_chunking_does_not_change_the_answer(tiny_sarnn, tiny_onnx, make_tiny_inputs):
    model, sess = tiny_sarnn, tiny_onnx
    steps = 150
    x, state0 = make_tiny_inputs(2, steps, seed=11), _state(model, 2)
    whole_logits, whole_updates, whole_state = _run(sess, x, state0)
    ref_logits, ref_mask, _, _ = _torch(model, x, state0)
    assert np.array_equal(whole_updates, ref_mask)
    np.testing.assert_allclose(whole_logits, ref_logits, atol=ATOL, rtol=0)

    rng = np.random.default_rng(0)
    mix = []
    while sum(mix) < steps:
        mix.append(int(min(rng.integers(1, 40), steps - sum(mix))))
    plans = {"1": [1] * steps, "7": [7] * 21 + [3], "64": [64, 64, 22], "mix": mix}
    for label, plan in plans.items():
        assert sum(plan) == steps
        state, logits, updates, t = state0, [], [], 0
        for n in plan:
            lo, up, state = _run(sess, x[:, t : t + n], state)
            logits.append(lo)
            updates.append(up)
            t += n
        assert np.array_equal(np.concatenate(updates, 1), whole_updates), label
        np.testing.assert_allclose(np.concatenate(logits, 1), whole_logits, atol=ATOL, rtol=0)
        np.testing.assert_allclose(state, whole_state, atol=ATOL, rtol=0)


def test_rows_do_not_depend_on_their_batch_or_padding(tiny_sarnn, tiny_onnx, make_tiny_inputs):
    model, sess = tiny_sarnn, tiny_onnx
    steps = 30
    lengths = np.array([30, 17, 0, 5, 30])
    x = make_tiny_inputs(5, steps, seed=21)
    state = _state(model, 5)
    alone = [
        _run(sess, x[i : i + 1, :n], state[i : i + 1]) if n else None for i, n in enumerate(lengths)
    ]
    # Garbage (large but finite) after each row's length must not matter.
    garbage = x.copy()
    rng = np.random.default_rng(1)
    for i, n in enumerate(lengths):
        garbage[i, n:] = rng.choice([1e3, -1e4, 1e30], size=garbage[i, n:].shape)
    logits, updates, state_out = _run(sess, garbage, state, lengths=lengths)
    for i, n in enumerate(lengths):
        assert not updates[i, n:].any(), f"row {i} updated past its length"
        if n == 0:
            assert np.array_equal(state_out[i], state[i]), "a row of length 0 must keep its state"
            continue
        a_logits, a_updates, a_state = alone[i]
        assert np.array_equal(updates[i : i + 1, :n], a_updates), f"row {i}"
        np.testing.assert_allclose(logits[i : i + 1, :n], a_logits, atol=1e-6, rtol=0)
        np.testing.assert_allclose(state_out[i : i + 1], a_state, atol=1e-6, rtol=0)
        # Past its length a row keeps predicting from its frozen state.
        np.testing.assert_allclose(
            logits[i, n:], np.broadcast_to(a_logits[0, -1], logits[i, n:].shape), atol=1e-6
        )
    # A different batch around row 0 (full length) gives row 0 the same answer.
    others = make_tiny_inputs(3, steps, seed=22)
    mixed = np.concatenate([x[:1], others])
    m_logits, m_updates, m_state = _run(sess, mixed, np.concatenate([state[:1], _state(model, 3)]))
    assert np.array_equal(m_updates[:1], alone[0][1])
    np.testing.assert_allclose(m_logits[:1], alone[0][0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(m_state[:1], alone[0][2], atol=1e-6, rtol=0)


def test_lengths_broadcast_from_one_value(tiny_sarnn, tiny_onnx, make_tiny_inputs):
    x, state = make_tiny_inputs(3, 12, seed=4), _state(tiny_sarnn, 3)
    one = _run(tiny_onnx, x, state, lengths=[7])
    each = _run(tiny_onnx, x, state, lengths=[7, 7, 7])
    for a, b in zip(one, each, strict=True):
        assert np.array_equal(a, b)
    assert not one[1][:, 7:].any()


# --- the threshold input --------------------------------------------------------------------


def test_threshold_input(tiny_sarnn, tiny_onnx, make_tiny_inputs):
    model, sess = tiny_sarnn, tiny_onnx
    x, state = make_tiny_inputs(4, 37, seed=8), _state(model, 4)
    omitted = _run(sess, x, state)
    for given in ([0.5], [0.5] * 4):
        for a, b in zip(omitted, _run(sess, x, state, threshold=given), strict=True):
            assert np.array_equal(a, b), f"threshold={given}"

    # Per-row thresholds in one batch equal each row alone with its own threshold.
    taus = [0.2, 0.5, 0.7, 0.9]
    logits, updates, state_out = _run(sess, x, state, threshold=taus)
    for i, tau in enumerate(taus):
        a_logits, a_updates, a_state = _run(sess, x[i : i + 1], state[i : i + 1], threshold=[tau])
        assert np.array_equal(updates[i : i + 1], a_updates), f"row {i}"
        np.testing.assert_allclose(logits[i : i + 1], a_logits, atol=1e-6, rtol=0)
        np.testing.assert_allclose(state_out[i : i + 1], a_state, atol=1e-6, rtol=0)
        _, ref_mask, ref_state, _ = _torch(model, x[i : i + 1], state[i : i + 1], tau)
        assert np.array_equal(a_updates, ref_mask)
        np.testing.assert_allclose(a_state, ref_state, atol=ATOL, rtol=0)
    rates = [updates[i].mean() for i in range(4)]
    assert rates[0] > rates[-1]


def test_raising_the_threshold_never_adds_updates(tiny_sarnn, tiny_onnx, make_tiny_inputs):
    """Per step, from the same state and input, u(tau_hi) <= u(tau_lo) neuron by neuron."""
    model, sess = tiny_sarnn, tiny_onnx
    x, state = make_tiny_inputs(256, 1, seed=9), _state(model, 256, seed=10)
    taus = [0.01, 0.2, 0.4, 0.5, 0.6, 0.8, 0.99]
    masks = [_run(sess, x, state, threshold=[t])[1] for t in taus]
    for lo, hi in itertools.pairwise(masks):
        assert not (hi & ~lo).any()
    assert masks[0].sum() > masks[-1].sum()
    for t, mask in zip(taus, masks, strict=True):
        assert np.array_equal(mask, _torch(model, x, state, t)[1]), f"tau={t}"


def test_tie_gives_no_update_anywhere(
    make_tiny_sarnn, make_tiny_onnx, make_tiny_inputs, sarnn_cell
):
    model = make_tiny_sarnn(sarnn_cell)
    with torch.no_grad():
        model.coord_x.weight.zero_()
        model.coord_x.bias.zero_()
        model.coord_d.zero_()
    sess = make_tiny_onnx(model)
    x, state = make_tiny_inputs(3, 20, seed=12), _state(model, 3)
    _, updates, state_out = _run(sess, x, state)
    _, ref_mask, ref_state, coord = _torch(model, x, state)
    assert (coord == 0).all()
    assert not updates.any() and not ref_mask.any()
    assert np.array_equal(state_out, state) and np.array_equal(ref_state, state)


def test_build_model_refuses_offline_only_baselines():
    model = SARNN(ModelConfig(n_features=3, hidden=12, n_classes=4, selective=False, skip_every=2))
    with pytest.raises(ValueError, match="offline only"):
        build_model(model)


# --- the export and verify CLIs -------------------------------------------------------------


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A basicmotions SA-RNN (H = 8) trained for 3 batches through the train CLI."""
    run = tmp_path_factory.mktemp("train") / "run"
    argv = ["train", "--dataset", "basicmotions", "--hidden", "8", "--epochs", "1"]
    argv += ["--batches-per-epoch", "3", "--batch-size", "8", "--window", "50", "--quiet"]
    code, out, err = _cli([*argv, "--out", str(run)])
    assert code == 0, err
    assert "validation  streaming accuracy" in out
    assert "test figures:" in out and "test " not in out.replace("test figures:", "")
    return run / "checkpoint.pt"


@pytest.fixture(scope="module")
def tiny_export(tiny_checkpoint, tmp_path_factory) -> tuple[Path, str]:
    """The export CLI run once on `tiny_checkpoint` into <tmp>/models/tiny."""
    out = tmp_path_factory.mktemp("export") / "models" / "tiny"
    code, stdout, err = _cli(["onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(out)])
    assert code == 0, err
    return out, stdout


@pytest.mark.slow
def test_export_cli_writes_a_verified_model_directory(tiny_checkpoint, tiny_export):
    out, stdout = tiny_export
    assert "parity OK" in stdout and "exported tiny" in stdout
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.json", "verify.json"} <= names
    assert {"checkpoint.pt", "metrics.json", "curves.png", "raster.png"} <= names
    assert [p.name for p in out.parent.iterdir()] == ["tiny"], "no temporary leftovers"

    card = ModelCard.model_validate_json((out / "model.json").read_text())
    graph_bytes = (out / "model.onnx").read_bytes()
    assert card.version == hashlib.sha256(graph_bytes).hexdigest()[:12]
    assert (card.name, card.cell, card.hidden, card.n_features, card.n_classes) == (
        "tiny",
        "gru",
        8,
        6,
        4,
    )
    assert card.class_labels == ["badminton", "running", "standing", "walking"]
    assert card.training.dataset == "basicmotions" and card.training.steps == 3
    metrics = json.loads((tiny_checkpoint.parent / "metrics.json").read_text())
    assert card.evaluation.update_rate == metrics["test"]["update_rate"]
    report = json.loads((out / "verify.json").read_text())
    assert report["ok"] is True and report["random"]["steps"] >= 10_000

    # The file on disk is the checkpoint's graph and agrees with it.
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    model, _ = load_checkpoint(str(tiny_checkpoint))
    sess = export.verify.open_session(out)
    x = np.random.default_rng(0).standard_normal((2, 23, 6)).astype(np.float32)
    x = x * model.std.numpy() + model.mean.numpy()
    state = np.zeros((2, model.state_size), np.float32)
    logits, updates, state_out = _run(sess, x, state)
    ref_logits, ref_mask, ref_state, _ = _torch(model, x, state)
    assert np.array_equal(updates, ref_mask)
    np.testing.assert_allclose(logits, ref_logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(state_out, ref_state, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_export_cli_refuses_to_overwrite_without_force(tiny_checkpoint, tiny_export):
    out, _ = tiny_export
    before, siblings = _snapshot(out), sorted(p.name for p in out.parent.iterdir())
    code, _, err = _cli(["onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(out)])
    assert code != 0
    assert "exists" in err and "--force" in err
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == siblings


@pytest.mark.slow
def test_export_cli_force_replaces(tiny_checkpoint, tmp_path):
    out = tmp_path / "m"
    argv = ["onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]
    assert _cli(argv)[0] == 0
    (out / "stale.txt").write_text("from an older export")
    code, stdout, err = _cli([*argv, "--force"])
    assert code == 0, err
    assert "exported m" in stdout
    assert not (out / "stale.txt").exists()
    assert (out / "model.onnx").is_file() and (out / "verify.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["m"], "no temporary or trash leftovers"


def _not_a_checkpoint(path: Path) -> None:
    path.write_bytes(b"garbage")


def _foreign_pickle(path: Path) -> None:
    torch.save({"a": 1}, path)


def _skip_checkpoint(path: Path) -> None:
    model = SARNN(ModelConfig(n_features=6, hidden=8, n_classes=4, selective=False, skip_every=3))
    save_checkpoint(model, str(path), {"dataset": "basicmotions"})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (None, "does not exist"),
        (_not_a_checkpoint, "not a readable torch checkpoint"),
        (_foreign_pickle, "not an sarnn checkpoint"),
        (_skip_checkpoint, "offline only"),
    ],
)
def test_export_cli_failures_leave_nothing_behind(tmp_path, make, message):
    checkpoint = tmp_path / "in" / "checkpoint.pt"
    checkpoint.parent.mkdir()
    if make is not None:
        make(checkpoint)
    models = tmp_path / "models"
    models.mkdir()
    code, _, err = _cli(["onnx", "--checkpoint", str(checkpoint), "--out", str(models / "x")])
    assert code != 0
    assert err.startswith("error: ") and message in err
    assert list(models.iterdir()) == []


@pytest.mark.slow
def test_export_cli_failed_parity_leaves_nothing_behind(tiny_checkpoint, tmp_path, monkeypatch):
    def failing_verify(checkpoint, model_dir, **kwargs):
        assert (model_dir / "model.onnx").is_file()  # the check runs on the temporary directory
        return Report(data=StepParity(steps=1, mismatches_far=1), random=StepParity())

    monkeypatch.setattr(export.verify, "verify", failing_verify)
    code, stdout, err = _cli(
        ["onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x")]
    )
    assert code != 0
    assert "parity FAILED" in stdout and "parity check failed" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_verify_cli(tiny_checkpoint, tiny_export, tmp_path):
    out, _ = tiny_export
    code, stdout, err = _cli(["verify", "--checkpoint", str(tiny_checkpoint), "--model", str(out)])
    assert code == 0, err
    assert stdout.startswith("parity OK")

    # Against other weights the same graph must fail.
    model, blob = load_checkpoint(str(tiny_checkpoint))
    with torch.no_grad():
        model.head.bias.add_(0.1)
    other = tmp_path / "other.pt"
    own = ("format", "config", "alpha", "state_dict")
    save_checkpoint(model, str(other), {k: v for k, v in blob.items() if k not in own})
    code, stdout, _ = _cli(["verify", "--checkpoint", str(other), "--model", str(out)])
    assert code == 1 and stdout.startswith("parity FAILED")

    code, _, err = _cli(["verify", "--checkpoint", str(tiny_checkpoint), "--model", str(tmp_path)])
    assert code != 0 and "model.onnx does not exist" in err
