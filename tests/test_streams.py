"""Information-sparse streams (export/streams.py) and the coordinator's energy features: the
streams hold every recording once between idle periods that look like a sensor at rest, and a
model whose coordinator weighs x * x answers the same in torch, both chunk graphs and the
native kernel."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from export.data import Recording  # noqa: E402
from export.model import SARNN, ModelConfig  # noqa: E402
from export.onnx_export import build_model  # noqa: E402
from export.streams import (  # noqa: E402
    IDLE,
    RestModel,
    StreamCursor,
    StreamSet,
    StreamSpec,
    build_streams,
    load_streams,
    save_streams,
)
from export.train import TrainConfig, evaluate_streams  # noqa: E402
from sarnn_serve import native  # noqa: E402
from sarnn_serve.accounting import CellCost  # noqa: E402
from sarnn_serve.native import NativeKernel  # noqa: E402
from sarnn_serve.onnx_initializers import read_initializers  # noqa: E402

pytestmark = pytest.mark.train
RATE = 50.0
NAMES = ["ax", "ay", "az", "wx", "wy", "wz"]


def _recordings(n: int = 9, seed: int = 0) -> list[Recording]:
    """Moving-wrist recordings: gravity plus motion on the accelerometer, a gyroscope swinging
    about 1.5 rad/s after a still first second (where the rest model measures its noise),
    lengths 300-600 steps, three classes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        steps = int(rng.integers(300, 600))
        t = np.arange(steps) / RATE
        acc = np.array([0.0, 0.3, -0.95]) + 0.4 * np.sin(2 * np.pi * (0.5 + i % 3) * t)[:, None]
        gyro = 1.5 * np.sin(2 * np.pi * (0.7 + i % 3) * t + np.arange(3)[:, None]).T
        still = (t >= 1.0)[:, None]
        motion = np.hstack([acc - acc.mean(0), gyro]) * still
        x = np.hstack([acc.mean(0) + 0 * acc, 0 * gyro]) + motion
        x += 0.02 * rng.standard_normal((steps, 6))
        out.append(Recording(x.astype(np.float32), i % 3, i % 2))
    return out


@pytest.fixture(scope="module")
def rest() -> RestModel:
    return RestModel.measure(_recordings(), NAMES, StreamSpec(), RATE)


def test_every_recording_is_one_bout_between_idle_periods(rest: RestModel) -> None:
    recs = _recordings()
    streams = build_streams(recs, rest, StreamSpec(bouts_per_stream=4), RATE, seed=5)
    assert len(streams) == 3  # 9 recordings, 4 a stream
    bouts = [b for s in streams for b in np.unique(s.bout[s.bout >= 0])]
    assert sorted(bouts) == list(range(len(recs)))
    for s in streams:
        assert s.labels[0] == IDLE  # a stream starts at rest
        assert np.array_equal(s.bout == -1, s.labels == IDLE)
        for b in np.unique(s.bout[s.bout >= 0]):
            steps = np.flatnonzero(s.bout == b)
            assert np.array_equal(s.x[steps], recs[b].x)  # a bout is its recording, untouched
            assert (s.labels[steps] == recs[b].label).all()


def test_idle_reads_gravity_and_a_still_gyroscope(rest: RestModel) -> None:
    streams = build_streams(_recordings(), rest, StreamSpec(), RATE, seed=1)
    idle = np.concatenate([s.x[s.idle_mask] for s in streams])
    active = np.concatenate([s.x[~s.idle_mask] for s in streams])
    gravity = np.linalg.norm(idle[:, :3], axis=1)
    assert abs(np.median(gravity) - rest.gravity_g) < 0.05
    assert np.abs(idle[:, 3:]).mean() < 0.25 * np.abs(active[:, 3:]).mean()
    assert rest.noise[3:].max() < 0.5  # measured on the quietest windows, far below motion


def test_varied_rest_mixes_louder_and_frozen_periods(rest: RestModel) -> None:
    """Varied rest keeps every bout as its recording; its idle periods are the measured rest
    (1/2), louder rest (1/4: noise x2-x8) or a frozen sensor (1/4: the bout's last values)."""
    spec = StreamSpec(idle_min_s=5.0, idle_max_s=20.0, bouts_per_stream=1)
    recs = _recordings()
    for s in build_streams(recs, rest, spec, RATE, seed=4, varied=True):
        bout = int(s.bout[~s.idle_mask][0])
        assert np.array_equal(s.x[~s.idle_mask], recs[bout].x)
    before = np.tile(np.float32([0.6, 0.2, 0.7, 0.3, -0.2, 0.1]), (25, 1))
    kinds = []
    for seed in range(200):
        idle = rest.varied(500, before, np.random.default_rng(seed))
        loud = float((idle.std(0) / rest.noise)[3:].max())
        frozen = np.allclose(idle[:, 3:].mean(0), before[0, 3:], atol=0.05)
        kinds.append("frozen" if frozen else "louder" if loud > 2.2 else "rest")
    shares = {k: kinds.count(k) / len(kinds) for k in ("rest", "louder", "frozen")}
    assert abs(shares["rest"] - 0.5) < 0.1
    assert abs(shares["louder"] - 0.25) < 0.1 and abs(shares["frozen"] - 0.25) < 0.1


def test_idle_lengths_follow_the_spec(rest: RestModel) -> None:
    spec = StreamSpec(idle_min_s=2.0, idle_max_s=6.0, bouts_per_stream=1)
    streams = build_streams(_recordings(), rest, spec, RATE, seed=2)
    lengths = [int(s.idle_mask.sum()) for s in streams]
    assert min(lengths) >= 2 * RATE and max(lengths) <= 6 * RATE


def test_scoring_skips_idle_and_the_first_seconds_of_a_bout(rest: RestModel) -> None:
    spec = StreamSpec(skip_s=2.0)
    for s in build_streams(_recordings(), rest, spec, RATE, seed=3):
        assert not s.score_mask[s.idle_mask].any()
        for b in np.unique(s.bout[s.bout >= 0]):
            steps = np.flatnonzero(s.bout == b)
            assert not s.score_mask[steps[: int(2 * RATE)]].any()
            assert s.score_mask[steps[int(2 * RATE) :]].all()


def test_streams_are_seeded_and_survive_a_file(rest: RestModel, tmp_path: Path) -> None:
    spec = StreamSpec(variant="distractor")
    a = build_streams(_recordings(), rest, spec, RATE, seed=7)
    b = build_streams(_recordings(), rest, spec, RATE, seed=7)
    c = build_streams(_recordings(), rest, spec, RATE, seed=8)
    assert all(np.array_equal(p.x, q.x) for p, q in zip(a, b, strict=True))
    assert any(len(p.x) != len(q.x) for p, q in zip(a, c, strict=True))
    save_streams(tmp_path / "s.npz", StreamSet(a, spec, rest.describe(NAMES), 7), NAMES)
    loaded, names = load_streams(tmp_path / "s.npz")
    assert names == NAMES and loaded.spec == spec and loaded.seed == 7
    for p, q in zip(a, loaded.streams, strict=True):
        for field in ("x", "labels", "bout", "score_mask"):
            assert np.array_equal(getattr(p, field), getattr(q, field))


def test_a_file_of_another_format_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", meta=np.frombuffer(b'{"format": "x"}', np.uint8))
    with pytest.raises(ValueError, match="not a streams file"):
        load_streams(tmp_path / "other.npz")


def test_distractor_idle_has_the_signals_spread(rest: RestModel) -> None:
    spec = StreamSpec(variant="distractor", bouts_per_stream=9)
    streams = build_streams(_recordings(), rest, spec, RATE, seed=4)
    idle = np.concatenate([s.x[s.idle_mask] for s in streams])
    assert idle[:, 3:].std() > 0.5  # some periods are noise as wide as the motion


def test_data_without_named_sensors_holds_the_last_values() -> None:
    recs = _recordings()
    spec = StreamSpec(gravity=(), rest_zero=())
    rest = RestModel.measure(recs, [f"f{i}" for i in range(6)], spec, RATE)
    s = build_streams(recs, rest, spec, RATE, seed=0)[0]
    first_bout = s.bout[~s.idle_mask][0]
    end = np.flatnonzero(s.bout == first_bout)[-1] + 1
    after = end + np.argmax(~s.idle_mask[end:])  # the idle period after the first bout
    held = s.x[end:after].mean(0)
    tail = recs[first_bout].x[-int(0.5 * RATE) :].mean(0)
    assert np.abs(held - tail).max() < 0.1


def test_unknown_sensor_names_are_refused() -> None:
    with pytest.raises(ValueError, match="feature 'ax' not in the data"):
        RestModel.measure(_recordings(), [f"f{i}" for i in range(6)], StreamSpec(), RATE)


def test_cursor_reads_streams_window_after_window(rest: RestModel) -> None:
    spec = StreamSpec(idle_min_s=1, idle_max_s=2)
    streams = build_streams(_recordings(), rest, spec, RATE, 0)
    cursor = StreamCursor(streams, 4, 64, np.random.default_rng(0))
    x1, y1, fresh1 = cursor.next()
    x2, y2, fresh2 = cursor.next()
    assert x1.shape == (4, 64, 6) and y1.shape == (4, 64) and fresh1.all()
    assert set(np.unique(np.concatenate([y1, y2]))) <= {IDLE, 0, 1, 2}
    for r in range(4):
        if not fresh2[r]:  # the next window of the same stream, right after the last
            whole = np.concatenate([x1[r], x2[r]])
            assert any(
                np.array_equal(s.x[p : p + 128], whole)
                for s in streams
                for p in range(len(s.x) - 127)
            )
    seen = [cursor.next()[2] for _ in range(200)]
    assert any(f.any() for f in seen) and not all(f.all() for f in seen)


def _energy_model(seed: int = 0, hidden: int = 24) -> SARNN:
    torch.manual_seed(seed)
    model = SARNN(ModelConfig(n_features=6, hidden=hidden, n_classes=3, coord_energy=True))
    with torch.no_grad():
        model.coord_x.weight.normal_()
        model.coord_x.bias.normal_()
        model.coord_e.weight.normal_()
        model.coord_d.normal_()
    model.set_normalisation(torch.zeros(6), torch.ones(6))
    model.alpha = 5.0
    return model.eval()


def _inputs(batch: int = 3, steps: int = 40) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(batch, steps, 6)).astype(np.float32)


def test_energy_features_change_the_gates() -> None:
    model = _energy_model()
    x = torch.from_numpy(_inputs())
    with_energy = model(x, deterministic=True).updates
    with torch.no_grad():
        model.coord_e.weight.zero_()
    assert not torch.equal(with_energy, model(x, deterministic=True).updates)


@pytest.mark.parametrize("sparse", [False, True])
def test_chunk_graphs_compute_the_energy_term(sparse: bool) -> None:
    model = _energy_model()
    x = _inputs()
    with torch.no_grad():
        want = model(torch.from_numpy(x), deterministic=True)
    proto = build_model(model, sparse=sparse)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    state = np.zeros((3, model.state_size), np.float32)
    logits, updates, _ = sess.run(None, {"x": x, "state": state})
    assert 0.1 < updates.mean() < 0.9
    assert np.array_equal(updates, want.updates.numpy().astype(bool))
    np.testing.assert_allclose(logits, want.logits.numpy(), atol=1e-5)


@pytest.mark.skipif(not native.available(), reason="the native kernel was not built")
def test_kernel_computes_the_energy_term_as_the_graph(tmp_path: Path) -> None:
    model = _energy_model(hidden=40)
    proto = build_model(model).SerializeToString()
    (tmp_path / "model.onnx").write_bytes(proto)
    kernel = NativeKernel(read_initializers(tmp_path / "model.onnx"))
    sess = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
    x = _inputs(batch=5, steps=60)
    state = np.zeros((5, model.state_size), np.float32)
    want = sess.run(None, {"x": x, "state": state})
    got = kernel.run(x, state, None, None)
    assert np.array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_allclose(got[2], want[2], atol=1e-5)


def test_energy_features_are_counted() -> None:
    plain = CellCost("gru", 6, 128)
    energy = CellCost("gru", 6, 128, coordinator_energy=True)
    assert energy.coordinator - plain.coordinator == 6 * 128 + 6
    assert energy.per_step(0.2) - plain.per_step(0.2) == 6 * 128 + 6


def test_a_baseline_has_no_energy_features() -> None:
    with pytest.raises(ValueError, match="coord_energy"):
        TrainConfig(dense=True, coord_energy=True)


def test_stream_evaluation_scores_bouts_and_splits_update_rates(rest: RestModel) -> None:
    recs = _recordings()
    spec = StreamSpec(idle_min_s=2.0, idle_max_s=4.0)
    streams = StreamSet(build_streams(recs, rest, spec, RATE, seed=0), spec)
    model = SARNN(ModelConfig(n_features=6, hidden=8, n_classes=3, coord_energy=True))
    with torch.no_grad():
        model.coord_x.weight.zero_()
        model.coord_d.zero_()
        model.coord_x.bias.fill_(2.0)  # x * x - 1 is about -1 at rest: a = -1 there
        model.coord_e.weight.zero_()
        model.coord_e.weight[:, 3:].fill_(1.0)  # open when the gyroscope moves
    model.alpha = 5.0
    ev = evaluate_streams(model, streams)
    assert len(ev.scored) == len(recs)
    assert sum(ev.scored) == sum(int(s.score_mask.sum()) for s in streams.streams)
    assert ev.idle_update_rate < 0.05 < 0.5 < ev.active_update_rate
