"""The idle check (export/idle_check.py): each rest generator differs from the trained rest in
the way its docstring says, only idle steps are redrawn, and the check reports one row per
generator, from a function call and from a checkpoint on the command line."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export import idle_check  # noqa: E402
from export.data import Recording  # noqa: E402
from export.model import SARNN, ModelConfig, save_checkpoint  # noqa: E402
from export.streams import RestModel, StreamSpec, build_streams  # noqa: E402
from export.train import TrainConfig  # noqa: E402
from tests.tiny_models import wrist_recordings  # noqa: E402

pytestmark = pytest.mark.train
RATE = 50.0
NAMES = ["ax", "ay", "az", "wx", "wy", "wz"]
PERIOD = 1500  # steps of one drawn idle period (30 s)


def _recordings() -> list[Recording]:
    return wrist_recordings(12, rate=RATE)


@pytest.fixture(scope="module")
def rest() -> RestModel:
    return RestModel.measure(_recordings(), NAMES, StreamSpec(), RATE)


def _draw(name: str, rest: RestModel, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A period of `name` and of `trained` from equally seeded generators, after a bout whose
    last 0.5 s read `BEFORE`."""
    make = idle_check.GENERATORS[name]
    drawn = make(PERIOD, BEFORE, rest, RATE, np.random.default_rng(seed))
    return drawn, idle_check.trained(PERIOD, BEFORE, rest, RATE, np.random.default_rng(seed))


BEFORE = np.tile(np.float32([0.6, 0.2, 0.7, 0.3, -0.2, 0.1]), (25, 1))


def test_louder_adds_three_to_six_times_the_noise(rest: RestModel) -> None:
    for seed in range(20):
        loud, base = _draw("louder", rest, seed)
        extra = (loud - base).std(0) / rest.noise
        assert np.all(extra > 2.7) and np.all(extra < 6.6)
        assert np.all(base.std(0)[:3] / rest.noise[:3] < 2.2)  # the trained level, x0.25-2


def test_quiet_rest_has_a_twentieth_to_a_fifth_of_the_noise(rest: RestModel) -> None:
    for seed in range(20):
        still, _ = _draw("quiet", rest, seed)
        level = (still.std(0) / rest.noise)[:3]
        assert np.all(level > 0.045) and np.all(level < 0.22)


def test_tremor_is_a_small_fast_oscillation(rest: RestModel) -> None:
    for seed in range(10):
        shaking, base = _draw("tremor", rest, seed)
        wave = shaking - rest.idle(PERIOD, BEFORE, np.random.default_rng(seed))
        assert np.abs(wave[:, :3]).max() <= 0.03 and np.abs(wave[:, 3:]).max() <= 0.12
        assert np.abs(wave[:, 3:]).max() > 0.01
        spectrum = np.abs(np.fft.rfft(wave[:, 3], axis=0))
        peak = np.fft.rfftfreq(PERIOD, 1 / RATE)[spectrum.argmax()]
        assert 7.5 <= peak <= 12.5
        assert base.shape == shaking.shape


def test_drift_turns_gravity_and_the_gyroscope_reads_the_turn(rest: RestModel) -> None:
    turned = []
    for seed in range(20):
        moved, base = _draw("drift", rest, seed)
        np.testing.assert_allclose(  # a rotation: the accelerometer's length is kept
            np.linalg.norm(moved[:, :3], axis=1), np.linalg.norm(base[:, :3], axis=1), rtol=1e-4
        )
        rate = np.rad2deg(np.linalg.norm((moved - base)[:, 3:].mean(0)))
        assert 2 - 1e-3 <= rate <= 10 + 1e-3  # deg/s
        first, last = moved[:50, :3].mean(0), moved[-50:, :3].mean(0)
        cos = first @ last / np.linalg.norm(first) / np.linalg.norm(last)
        turned.append(np.rad2deg(np.arccos(np.clip(cos, -1, 1))))
        assert turned[-1] <= rate * PERIOD / RATE + 5
    assert np.median(turned) > 20  # the direction changes (by less where the axis is near it)


def test_fidget_adds_short_small_bursts_every_few_seconds(rest: RestModel) -> None:
    for seed in range(10):
        busy, base = _draw("fidget", rest, seed)
        moving = np.abs(busy - base).max(1) > 0
        edges = np.flatnonzero(np.diff(np.r_[0, moving.astype(int), 0]))
        starts, ends = edges[::2], edges[1::2]
        assert len(starts) >= PERIOD / RATE / 7  # one burst after every gap of 2-6 s at least
        assert np.all(ends - starts <= RATE)  # bursts of at most 1 s
        assert np.all(starts[1:] - ends[:-1] >= 2 * RATE)  # gaps of at least 2 s
        assert np.abs(busy - base)[:, :3].max() <= 0.15 and np.abs(busy - base)[:, 3:].max() <= 0.6
        assert np.abs(busy - base)[:, 3:].max() > 0.1


def test_frozen_holds_the_bouts_last_mean(rest: RestModel) -> None:
    held, _ = _draw("frozen", rest, 0)
    np.testing.assert_allclose(held.mean(0), BEFORE.mean(0), atol=float(rest.noise.max()) / 5)
    np.testing.assert_allclose(held.std(0), rest.noise, rtol=0.1)


def test_table_lies_flat(rest: RestModel) -> None:
    signs = set()
    for seed in range(10):
        flat, _ = _draw("table", rest, seed)
        gravity = flat[:, :3].mean(0)
        np.testing.assert_allclose(np.abs(gravity), [0, 0, rest.gravity_g], atol=0.02)
        assert np.abs(flat[:, 3:].mean(0)).max() < 0.1
        signs.add(float(np.sign(gravity[2])))
    assert signs == {-1.0, 1.0}


def _gyro_model() -> SARNN:
    """Gates open only when the gyroscope moves: a = sum(w * w) - 0.2 (coordinator energy
    features, no dependence on the state), so update rates depend on the input alone."""
    model = SARNN(ModelConfig(n_features=6, hidden=8, n_classes=3, coord_energy=True))
    with torch.no_grad():
        model.coord_x.weight.zero_()
        model.coord_d.zero_()
        model.coord_x.bias.fill_(2.8)
        model.coord_e.weight.zero_()
        model.coord_e.weight[:, 3:].fill_(1.0)
    model.alpha = 5.0
    return model.eval()


def test_check_redraws_only_idle_and_reports_every_generator(rest: RestModel) -> None:
    spec = StreamSpec(idle_min_s=5.0, idle_max_s=20.0)
    streams = build_streams(_recordings(), rest, spec, RATE, seed=3)
    swapped = idle_check.swap_idle(streams, idle_check.louder, rest, RATE, np.random.default_rng(0))
    for s, t in zip(streams, swapped, strict=True):
        assert np.array_equal(s.x[~s.idle_mask], t.x[~t.idle_mask])
        assert not np.allclose(s.x[s.idle_mask], t.x[t.idle_mask])
    rows = idle_check.check(_gyro_model(), streams, rest, spec, RATE, seed=0)
    by_name = {r.generator: r for r in rows}
    assert list(by_name) == list(idle_check.GENERATORS)
    for r in rows:
        assert 0 <= r.accuracy <= 1 and 0 <= r.idle_update_rate <= 1
        assert r.active_update_rate == pytest.approx(rows[0].active_update_rate)  # same bouts
        assert len(r.scored) == len(_recordings())
    assert by_name["trained"].idle_update_rate < 0.01 < 0.3 < rows[0].active_update_rate
    assert by_name["fidget"].idle_update_rate > by_name["trained"].idle_update_rate + 0.01
    table = idle_check.markdown(rows, "t", "n")
    assert table.count("\n| ") == len(rows) + 1  # the header and one line a generator


def test_command_reads_a_checkpoint_and_writes_the_report(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i, rec in enumerate(_recordings()):
        rows = [",".join(f"{v:.5f}" for v in row) + f",c{rec.label}" for row in rec.x]
        (data / f"r{i:02d}.csv").write_text("\n".join([",".join([*NAMES, "label"]), *rows]))
    cfg = TrainConfig(data=str(data), sample_rate=RATE, streams="rest", coord_energy=True)
    model = SARNN(ModelConfig(n_features=6, hidden=8, n_classes=3, coord_energy=True))
    save_checkpoint(model, str(tmp_path / "checkpoint.pt"), {"train_config": asdict(cfg)})
    out = tmp_path / "report"
    assert (
        idle_check.main(["--checkpoint", str(tmp_path / "checkpoint.pt"), "--out", str(out)]) == 0
    )
    report = json.loads((out / "idle_check.json").read_text())
    assert report["format"] == idle_check.REPORT_FORMAT and report["part"] == "val"
    # data without named gravity and gyroscope features: the generators that need them are out
    names = [r["generator"] for r in report["rows"]]
    assert names == ["trained", "louder", "frozen", "quiet"]
    assert "| frozen |" in (out / "idle_check.md").read_text()
