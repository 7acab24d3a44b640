"""Load every model directory under the model dir and check each card against its graph; the
served versions of each model: the current one, which new work gets, and older ones that still
serve the sessions started on them (draining) until they are released."""

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from sarnn_serve import native
from sarnn_serve.card import CARD_FORMAT, GRAPH_INPUTS, GRAPH_OUTPUTS, ModelCard
from sarnn_serve.engine import DENSE, Engine
from sarnn_serve.errors import ModelLoadError, ModelNotFound


@dataclass
class LoadedModel:
    """A model ready to serve: its card and its engine."""

    card: ModelCard
    engine: Engine
    native: str = "not loaded"  # "loaded", or why not (see `load_model`)
    directory: Path | None = None
    last_used: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def key(self) -> "ModelKey":
        """(name, version): what sessions and batchers know a served version by."""
        return self.card.name, self.card.version


ModelKey = tuple[str, str]


# binary WebSocket answers (frames.py) carry C and H, each step's class and its update count as
# 16-bit fields
MAX_WIRE_SIZE = 2**16 - 1


def read_card(path: Path) -> ModelCard:
    try:
        card = ModelCard.model_validate_json(path.read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: model card missing") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'card'}: {e['msg']}" for e in exc.errors()
        )
        raise ModelLoadError(f"{path}: invalid model card: {problems}") from exc
    if card.format != CARD_FORMAT:
        raise ModelLoadError(f"{path}: card format {card.format!r}, expected {CARD_FORMAT!r}")
    if len(card.feature_names) != card.n_features or len(card.class_labels) != card.n_classes:
        raise ModelLoadError(
            f"{path}: feature_names/class_labels do not match n_features/n_classes"
        )
    for field, value in (("n_classes", card.n_classes), ("hidden", card.hidden)):
        if value > MAX_WIRE_SIZE:
            raise ModelLoadError(
                f"{path}: {field} {value} is over {MAX_WIRE_SIZE}, the most that binary answers "
                "carry (16-bit classes and update counts)"
            )
    return card


def _check_graph(card: ModelCard, engine: Engine, path: Path) -> None:
    """Names and static sizes of the graph must be what the card says."""
    if set(engine.inputs) != set(GRAPH_INPUTS) or set(engine.outputs) != set(GRAPH_OUTPUTS):
        raise ModelLoadError(
            f"{path}: graph inputs {sorted(engine.inputs)} / outputs {sorted(engine.outputs)}; "
            f"expected {list(GRAPH_INPUTS)} / {list(GRAPH_OUTPUTS)}"
        )
    expected = {
        ("x", 2): card.n_features,
        ("state", 1): card.state_size,
        ("logits", 2): card.n_classes,
        ("updates", 2): card.hidden,
        ("state_out", 1): card.state_size,
    }
    shapes = {k: v.shape for k, v in (engine.inputs | engine.outputs).items()}
    for (name, axis), size in expected.items():
        got = shapes[name][axis] if len(shapes[name]) > axis else None
        if got != size:
            raise ModelLoadError(
                f"{path}: {name} has size {got} on axis {axis} but the card says {size}"
            )
    x = np.zeros((2, 3, card.n_features), np.float32)
    state = np.full((2, card.state_size), 0.1, np.float32)
    try:
        probes = {p: engine.run(x, state, path=p) for p in engine.paths}
    except Exception as exc:  # a graph that loads but cannot run its own inputs
        raise ModelLoadError(
            f"{path}: a probe run of its graphs failed: {' '.join(str(exc).split())}"
        ) from None
    for name, probe in probes.items():
        if probe.logits.shape != (2, 3, card.n_classes) or probe.updates.shape != (
            2,
            3,
            card.hidden,
        ):
            raise ModelLoadError(f"{path}: a probe run of the {name} graph returned other shapes")
    dense = probes.pop(DENSE)
    for name, probe in probes.items():
        if not np.array_equal(dense.updates, probe.updates) or not np.allclose(
            dense.state, probe.state, atol=1e-5
        ):
            raise ModelLoadError(f"{path}: the {name} path does not answer as the dense graph")


def load_model(
    directory: Path,
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
    native_kernel: bool = True,
) -> LoadedModel:
    """Load one model directory (with the native kernel where it was built, unless
    `native_kernel` is off); ModelLoadError names the bad file."""
    card = read_card(directory / "model.json")
    graph = directory / "model.onnx"
    sparse = directory / card.sparse_graph if card.sparse_graph else None
    if not graph.is_file():
        raise ModelLoadError(f"{graph}: graph missing")
    try:
        engine = Engine(graph, intra_op_threads, inter_op_threads)
    except Exception as exc:
        raise ModelLoadError(f"{graph}: onnxruntime cannot load it: {exc}") from exc
    if sparse is not None:
        if not sparse.is_file():
            raise ModelLoadError(f"{sparse}: graph missing (the card names it)")
        try:
            engine.load_sparse(sparse)
        except Exception as exc:
            raise ModelLoadError(f"{sparse}: onnxruntime cannot load it: {exc}") from exc
    status = _load_native(engine) if native_kernel else "off (SARNN_NATIVE_KERNEL=false)"
    _check_graph(card, engine, graph)
    return LoadedModel(card, engine, status, directory)


def _load_native(engine: Engine) -> str:
    """Add the native kernel to `engine`: "loaded", or why it was not."""
    if not native.available():
        why = native.unavailable_reason()
        if why and native.library_path() is not None:  # built, but not a build this code uses
            return f"unusable: {why}"
        return (
            "not built: the package was installed without a C compiler (install gcc, then "
            "reinstall the package)"
        )
    try:
        engine.load_native()
    except native.NativeKernelError as exc:
        return f"refused: {exc}"
    return "loaded"


def model_directories(model_dir: Path) -> list[Path]:
    """The model folders (holding a model.json) of a model dir, by name; ModelLoadError for a
    missing dir, a file, or one model's own folder."""
    if not model_dir.exists():
        raise ModelLoadError(f"{model_dir}: model directory does not exist")
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"{model_dir}: not a directory; the model dir holds one folder per model"
        )
    if any((model_dir / name).exists() for name in ("model.json", "model.onnx")):
        raise ModelLoadError(
            f"{model_dir}: this looks like one model's folder (it holds model.json or "
            "model.onnx); point --model-dir (SARNN_MODEL_DIR) at its parent, "
            f"{model_dir.resolve().parent}"
        )
    return sorted(p for p in model_dir.iterdir() if (p / "model.json").exists())


def folder_cards(model_dir: Path) -> list[tuple[Path, ModelCard | ModelLoadError]]:
    """Every model folder of the model dir (`model_directories`) with its card, or with why
    the card cannot be read; only the cards are read."""
    found: list[tuple[Path, ModelCard | ModelLoadError]] = []
    for directory in model_directories(model_dir):
        try:
            found.append((directory, read_card(directory / "model.json")))
        except ModelLoadError as exc:
            found.append((directory, exc))
    return found


def find_model(model_dir: Path, name: str) -> tuple[Path, ModelCard]:
    """The folder under `model_dir` whose card names model `name`, and that card;
    ModelNotFound lists the names the folders hold, ModelLoadError names a folder whose card
    is unreadable or a name two folders claim."""
    found: dict[str, tuple[Path, ModelCard]] = {}
    for directory, card in folder_cards(model_dir):
        if isinstance(card, ModelLoadError):
            if directory.name == name:
                raise card
            continue
        if card.name in found:
            raise ModelLoadError(f"{directory}: model name {card.name!r} used twice")
        found[card.name] = (directory, card)
    if name not in found:
        raise ModelNotFound(name, sorted(found))
    return found[name]


class Registry:
    """The models this process serves: the current version of each, by name (`models`), and
    the versions replaced or unloaded that still serve their sessions (`draining`)."""

    def __init__(self, models: dict[str, LoadedModel]) -> None:
        self.models = models
        self.draining: dict[ModelKey, LoadedModel] = {}

    @classmethod
    def load(
        cls,
        model_dir: Path,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        native_kernel: bool = True,
    ):
        """Every subdirectory holding a model.json; refuse an empty or missing model dir."""
        models: dict[str, LoadedModel] = {}
        for directory in model_directories(model_dir):
            model = load_model(directory, intra_op_threads, inter_op_threads, native_kernel)
            if model.name in models:
                raise ModelLoadError(f"{directory}: model name {model.name!r} used twice")
            models[model.name] = model
        if not models:
            raise ModelLoadError(f"{model_dir}: no model directories (with model.json) found")
        return cls(models)

    def lookup(self, name: str, version: str) -> LoadedModel | None:
        """The served version `version` of model `name`, current or draining (None: not
        served), marked as used now."""
        model = self.models.get(name)
        if model is None or model.card.version != version:
            model = self.draining.get((name, version))
        if model is not None:
            model.last_used = time.monotonic()
        return model

    def install(self, model: LoadedModel) -> LoadedModel | None:
        """Make `model` the current version of its name; the version it replaces, if any,
        drains (returned)."""
        old = self.models.get(model.name)
        self.draining.pop(model.key, None)
        self.models[model.name] = model
        if old is None or old.key == model.key:
            return None
        old.last_used = time.monotonic()
        self.draining[old.key] = old
        return old

    def retire(self, name: str) -> LoadedModel:
        """Stop serving `name` to new work (ModelNotFound if it is not served); its version
        drains."""
        model = self.get(name)
        del self.models[name]
        model.last_used = time.monotonic()
        self.draining[model.key] = model
        return model

    def release(self, idle_s: float) -> list[LoadedModel]:
        """The draining versions no session has used for `idle_s` seconds, no longer served."""
        cutoff = time.monotonic() - idle_s
        done = [m for m in self.draining.values() if m.last_used <= cutoff]
        for model in done:
            del self.draining[model.key]
        return done

    def get(self, name: str) -> LoadedModel:
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFound(name, sorted(self.models)) from None

    def names(self) -> list[str]:
        return sorted(self.models)

    def default(self, named: str | None = None) -> tuple[str | None, str]:
        """The model of requests that name none, and why it is: `named` (SARNN_DEFAULT_MODEL)
        if set, else the only model, else the first by name that skips work (a dense baseline
        only when every model is one); None when every model was unloaded."""
        if named:
            return named, "SARNN_DEFAULT_MODEL"
        names = self.names()
        if not names:
            return None, "no model is served"
        if len(names) == 1:
            return names[0], "the only model"
        selective = [name for name in names if self.models[name].card.selective]
        return (selective or names)[0], (
            f"the first {'selective ' if selective else ''}model by name of {len(names)}; "
            "SARNN_DEFAULT_MODEL chooses another"
        )
