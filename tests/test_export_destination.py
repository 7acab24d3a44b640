"""`python -m export onnx` writes outside the repository's models/ (the shipped models, served
by default and copied into the image) unless --ship says so; with no --out, into
exported/<the run's folder name>."""

from pathlib import Path

import pytest

pytest.importorskip("torch")  # the offline side (export/, the training extra)

from export.cli import main
from export.destination import model_dir
from sarnn_serve.settings import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.train


def test_default_is_exported_run_name() -> None:
    assert model_dir(None, Path("runs/mine/checkpoint.pt")) == Path("exported/mine")


def test_the_repository_models_need_ship(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DEFAULT_MODEL_DIR.parent)
    for out in ("models/mine", str(DEFAULT_MODEL_DIR / "mine"), "models/../models/x"):
        with pytest.raises(ValueError, match="--ship") as error:
            model_dir(out, Path("runs/mine/checkpoint.pt"))
        assert "--out exported/" in str(error.value)
        assert model_dir(out, Path("runs/mine/checkpoint.pt"), ship=True) == Path(out)


def test_elsewhere_is_fine(tmp_path: Path) -> None:
    assert model_dir(str(tmp_path / "m"), Path("c.pt")) == tmp_path / "m"


def test_cli_refuses_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = DEFAULT_MODEL_DIR / "not-a-shipped-model"
    code = main(
        ["onnx", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--out", str(out)]
    )
    assert code == 2
    assert "the shipped models" in capsys.readouterr().err
    assert not out.exists()
