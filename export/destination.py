"""Where `export onnx` writes a model: outside the repository's models/ unless asked.

The repository's models/ holds the shipped models: `sarnn-serve` serves them by default and the
image copies them. A model of your own goes elsewhere (by default exported/<run>, served with
SARNN_MODEL_DIR=exported); `--ship` adds one to the shipped models on purpose.
"""

from pathlib import Path

from sarnn_serve.settings import DEFAULT_MODEL_DIR

EXPORTED = Path("exported")


def model_dir(out: str | None, checkpoint: Path, ship: bool = False) -> Path:
    """The model directory to write: `out`, or exported/<the checkpoint's folder name>;
    ValueError for one inside the repository's models/ unless `ship`."""
    path = Path(out) if out else EXPORTED / checkpoint.resolve().parent.name
    if path.resolve().is_relative_to(DEFAULT_MODEL_DIR.resolve()) and not ship:
        raise ValueError(
            f"{path} is in the repository's models/, the shipped models (served by default and "
            f"copied into the image): export elsewhere, e.g. --out {EXPORTED / path.name} "
            f"(then SARNN_MODEL_DIR={EXPORTED} sarnn-serve), or pass --ship to add it to them"
        )
    return path
