"""Trained stream runs scored again on streams with longer rest (export/rescore.py): the new
streams hold more rest, the figures are the run's at the new lengths, and the study report
reads the rescored root."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from export import rescore  # noqa: E402
from export.model import SARNN, save_checkpoint  # noqa: E402
from export.stream_report import load_arms  # noqa: E402
from export.train import TrainConfig  # noqa: E402
from tests.tiny_models import wrist_recordings  # noqa: E402

pytestmark = pytest.mark.train
RATE = 50.0
NAMES = ["ax", "ay", "az", "wx", "wy", "wz"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study root with seed 0 of a tiny accumulating SA-RNN arm `sa-8` and a dense arm."""
    root = tmp_path_factory.mktemp("study")
    data = root / "data"
    data.mkdir()
    for i, rec in enumerate(wrist_recordings(15, rate=RATE)):
        rows = [",".join(f"{v:.5f}" for v in row) + f",c{rec.label}" for row in rec.x]
        (data / f"r{i:02d}.csv").write_text("\n".join([",".join([*NAMES, "label"]), *rows]))
    arms = {"sa-8": {"coord_accumulate": True, "coord_delta": True}, "dense-8": {"dense": True}}
    for arm, flags in arms.items():
        torch.manual_seed(0)
        cfg = TrainConfig(data=str(data), sample_rate=RATE, streams="rest", hidden=8, **flags)
        out = root / f"{arm}-s0"
        out.mkdir()
        extra = {"train_config": asdict(cfg), "feature_names": NAMES}
        save_checkpoint(SARNN(cfg.model_config(6, 3)), str(out / "checkpoint.pt"), extra)
    return root


def _rescored(study: Path, idle: tuple[str, str], to: str) -> Path:
    out = study / to
    argv = ["--from", str(study), "--to", str(out), "--arms", "sa-8", "dense-8"]
    assert rescore.main([*argv, "--idle-seconds", *idle]) == 0
    return out


def test_longer_rest_makes_streams_with_more_rest(study: Path) -> None:
    short = json.loads((_rescored(study, ("1", "3"), "short") / "sa-8-s0/metrics.json").read_text())
    long = json.loads(
        (_rescored(study, ("60", "600"), "long") / "sa-8-s0/metrics.json").read_text()
    )
    assert (long["config"]["idle_min_s"], long["config"]["idle_max_s"]) == (60.0, 600.0)
    for part in ("val", "test"):
        assert long["streams"][part]["idle_share"] > short["streams"][part]["idle_share"] + 0.2
    assert long["validation"]["steps"] > short["validation"]["steps"]
    assert long["config"]["rescored_from"].endswith("sa-8-s0/checkpoint.pt")
    # the same recordings are scored, so the runs pair up in a report
    assert long["validation"]["scored"] == short["validation"]["scored"]


def test_the_report_reads_a_rescored_root(study: Path) -> None:
    arms = load_arms(_rescored(study, ("60", "600"), "long"))
    assert set(arms) == {"sa-8", "dense-8"}
    assert arms["dense-8"].rate("val", "update_rate") == 1.0
    assert arms["sa-8"].macs() < arms["sa-8"].configs[0]["hidden"] * 1000


def test_a_finished_run_is_not_scored_again(study: Path, capsys: pytest.CaptureFixture) -> None:
    _rescored(study, ("60", "600"), "again")
    capsys.readouterr()
    _rescored(study, ("60", "600"), "again")
    assert capsys.readouterr().out.count("done before") == 2


def test_an_arm_without_checkpoints_is_refused(study: Path) -> None:
    with pytest.raises(SystemExit):
        rescore.main(["--from", str(study), "--to", str(study / "x"), "--arms", "sa-99",
                      "--idle-seconds", "5", "9"])  # fmt: skip
