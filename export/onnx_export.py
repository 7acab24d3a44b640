"""Export a trained checkpoint into a self-describing model directory.

    models/<name>/model.onnx     the chunk graph (export.onnx_graph)
    models/<name>/model.sparse.onnx  the same graph computing only updated rows (export.onnx_sparse)
    models/<name>/model.json     the model card (sarnn_serve.card.ModelCard)
    models/<name>/verify.json    parity report against the checkpoint (export.verify)
    + checkpoint.pt, metrics.json and plots copied from beside the checkpoint

Everything is written into a temporary sibling directory and renamed into place only after the
checker and the parity check pass, so a failed export leaves nothing half-written behind.

A dense baseline exports to the same graph with a coordinator that always opens (W_x = 0,
w_d = 0, b = DENSE_GATE_BIAS): every cut (2 tau - 1) / alpha of a finite threshold lies below b,
and the +inf cut past a row's length still shuts the gate, so `updates` is every neuron at every
step. It has no sparse twin and its card says `selective: false`. The skip and random-mask
baselines are offline only (`ModelConfig.offline_only`).
"""

import hashlib
import json
import shutil
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch

from export.data import load_data
from export.model import (
    MOTION_SMOOTHING,
    SARNN,
    accumulator_phase,
    load_checkpoint,
    random_table,
)
from export.onnx_graph import OPSET, CellWeights, build_chunk_graph
from export.onnx_sparse import build_sparse_chunk_graph
from export.train import TrainConfig, stream_parts, threshold_curve
from export.verify import SPARSE_GRAPH, checkpoint_data_spec
from sarnn_serve.card import Evaluation as CardEvaluation
from sarnn_serve.card import (
    ExportInfo,
    ModelCard,
    SeedSpread,
    SpreadFigures,
    ThresholdPoint,
    TrainingInfo,
)

COMPANIONS = ("checkpoint.pt", "metrics.json", "curves.png", "raster.png")
DENSE_GATE_BIAS = 1e30


def _coordinator_bias(sd: dict[str, np.ndarray]) -> np.ndarray:
    """b, with the centrings of the energy and motion terms folded in:
    W_e (x * x - 1) = W_e (x * x) - W_e 1 and W_v (v g - 1) = (W_v g) v - W_v 1."""
    bias = sd["coord_x.bias"]
    if "coord_e.weight" in sd:
        bias = bias - sd["coord_e.weight"].sum(axis=1)
    if "coord_v.weight" in sd:
        bias = bias - sd["coord_v.weight"].sum(axis=1)
    return bias.astype(np.float32)


def cell_weights(model: SARNN) -> CellWeights:
    """The model's parameters as numpy arrays for the graph builder; a dense baseline's
    coordinator is replaced by one that always opens."""
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    if not model.config.selective:
        sd["coord_x.weight"] = np.zeros_like(sd["coord_x.weight"])
        sd["coord_d"] = np.zeros_like(sd["coord_d"])
        sd["coord_x.bias"] = np.full_like(sd["coord_x.bias"], DENSE_GATE_BIAS)
    return CellWeights(
        cell=model.config.cell,
        weight_ih=sd["cell.weight_ih"],
        weight_hh=sd["cell.weight_hh"],
        bias_ih=sd["cell.bias_ih"],
        bias_hh=sd["cell.bias_hh"],
        coord_w=sd["coord_x.weight"],
        coord_b=_coordinator_bias(sd),
        coord_d=sd["coord_d"],
        head_w=sd["head.weight"],
        head_b=sd["head.bias"],
        mean=sd["mean"],
        std=sd["std"],
        alpha=float(model.alpha),
        coord_e=sd.get("coord_e.weight"),
        coord_v=sd["coord_v.weight"] * sd["motion_gain"] if "coord_v.weight" in sd else None,
        smoothing=MOTION_SMOOTHING,
        mask_table=random_table(model.config.hidden, model.config.random_mask).numpy()
        if model.config.gating == "random"
        else None,
        phase=accumulator_phase(model.config.hidden).numpy()
        if model.config.coord_accumulate
        else None,
    )


def build_model(model: SARNN, sparse: bool = False) -> onnx.ModelProto:
    """Chunk graph of `model` (dense, or the sparse twin of an SA-RNN), passing onnx's full
    checker. Refuses the offline-only baselines."""
    if model.config.offline_only:
        raise ValueError(model.config.offline_only)
    if sparse and model.config.gating == "dense":
        raise ValueError("a dense baseline updates every neuron; it has no sparse twin")
    builder = build_sparse_chunk_graph if sparse else build_chunk_graph
    proto = builder(
        cell_weights(model),
        metadata={"cell": model.config.cell, "hidden": str(model.config.hidden)},
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _subjects(values: list) -> list[int]:
    """Subject numbers for the card's *_subjects fields: empty unless every group is a number."""
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        return []


def _evaluation(figures: dict) -> CardEvaluation:
    return CardEvaluation(
        streaming_accuracy=float(figures.get("streaming_accuracy", float("nan"))),
        last_step_accuracy=float(figures.get("last_step_accuracy", float("nan"))),
        update_rate=float(figures.get("update_rate", float("nan"))),
        idle_update_rate=figures.get("idle_update_rate"),
        active_update_rate=figures.get("active_update_rate"),
    )


def seed_spread(records: list[Path]) -> SeedSpread:
    """Mean and spread over seeds from result records (export.pareto) or metrics.json files of
    one recipe. A record written before a setting existed has that setting's default."""
    runs = [json.loads(path.read_text()) for path in records]
    defaults = asdict(TrainConfig())
    recipes = {json.dumps({**defaults, **r["config"], "seed": 0}, sort_keys=True) for r in runs}
    if len(recipes) > 1:
        raise ValueError("--seed-records: the records hold different recipes")

    def spread(part: str) -> SpreadFigures:
        figures = {}
        for key in ("streaming_accuracy", "last_step_accuracy"):
            values = [r[part][key] for r in runs]
            figures[f"{key}_mean"] = statistics.mean(values)
            figures[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        return SpreadFigures(
            **figures, update_rate_mean=statistics.mean(r[part]["update_rate"] for r in runs)
        )

    return SeedSpread(
        seeds=sorted(r["config"]["seed"] for r in runs),
        validation=spread("validation"),
        test=spread("test"),
        macs_per_step_mean=statistics.mean(r["macs_per_step"]["selective_val"] for r in runs),
    )


def measure_threshold_curve(model: SARNN, blob: dict) -> list[ThresholdPoint]:
    """The threshold curve on the validation part of the checkpoint's data, scored after the
    same warm-up as its validation figures."""
    data = load_data(checkpoint_data_spec(blob))
    train_cfg = blob.get("train_config", {})
    if train_cfg.get("streams"):
        cfg = TrainConfig(**{k: v for k, v in train_cfg.items() if k != "data"})
        streams = stream_parts(cfg, data)["val"]
        return [ThresholdPoint(**p) for p in threshold_curve(model, data, 0, streams)]
    skip = blob.get("metrics", {}).get("dataset", {}).get("scored_after_steps")
    if skip is None:
        default = TrainConfig.eval_skip_seconds
        seconds = blob.get("train_config", {}).get("eval_skip_seconds", default)
        skip = int(seconds * (data.sample_rate_hz or 0))
    return [ThresholdPoint(**point) for point in threshold_curve(model, data, int(skip))]


def remeasure_curve(model_dir: Path) -> ModelCard:
    """Measure the threshold curve of an exported model again at CURVE_THRESHOLDS, from the
    checkpoint beside its graph, and rewrite its card with it; nothing else changes. Refused
    unless the checkpoint builds the very graph the card names (its version)."""
    card_path = model_dir / "model.json"
    card = ModelCard.model_validate_json(card_path.read_text())
    model, blob = load_checkpoint(str(model_dir / "checkpoint.pt"))
    if not model.config.selective:
        raise ValueError(f"{card.name} has no threshold to measure a curve over")
    version = hashlib.sha256(build_model(model).SerializeToString()).hexdigest()[:12]
    if version != card.version:
        raise ValueError(
            f"{model_dir}/checkpoint.pt builds graph version {version}, not the card's "
            f"{card.version}"
        )
    card.threshold_curve = measure_threshold_curve(model, blob)
    card_path.write_text(card.model_dump_json(indent=2) + "\n")
    return card


def make_card(
    model: SARNN, blob: dict, name: str, graph_bytes: bytes, recipe_chosen_on: str | None = None
) -> ModelCard:
    """Model card from the checkpoint's metadata, with the threshold curve measured on its
    validation data; version is a hash of the graph."""
    metrics = blob.get("metrics", {})
    ds = metrics.get("dataset", {})
    budget = metrics.get("budget", {})
    train_cfg = blob.get("train_config", {})
    parts = {p: ds.get(f"{p}_subjects", []) for p in ("train", "val", "test")}
    cfg = model.config
    card = ModelCard(
        name=name,
        version=hashlib.sha256(graph_bytes).hexdigest()[:12],
        cell=cfg.cell,
        n_features=cfg.n_features,
        hidden=cfg.hidden,
        n_classes=cfg.n_classes,
        feature_names=blob.get("feature_names") or [f"f{i}" for i in range(cfg.n_features)],
        class_labels=blob.get("class_labels") or [str(i) for i in range(cfg.n_classes)],
        sample_rate_hz=blob.get("sample_rate_hz"),
        alpha=float(model.alpha),
        selective=cfg.selective,
        coordinator_energy=cfg.coord_energy,
        coordinator_accumulate=cfg.coord_accumulate,
        coordinator_delta=cfg.coord_delta,
        random_mask=cfg.random_mask,
        training=TrainingInfo(
            dataset=blob.get("dataset", "unknown"),
            recipe=metrics.get("recipe", ""),
            seed=int(train_cfg.get("seed", 0)),
            lam=float(train_cfg.get("lam", 0.0)),
            steps=int(train_cfg.get("epochs", 0)) * int(train_cfg.get("batches_per_epoch", 0)),
            train_subjects=_subjects(parts["train"]),
            val_subjects=_subjects(parts["val"]),
            test_subjects=_subjects(parts["test"]),
            groups={p: [str(g) for g in v] for p, v in parts.items()} if parts["val"] else None,
            budget=budget.get("form"),
            target_rate=budget.get("target_rate"),
            gate_grad=train_cfg.get("gate_grad"),
            recipe_chosen_on=recipe_chosen_on,
            streams=train_cfg.get("streams"),
        ),
        evaluation=_evaluation(metrics.get("test", {})),
        validation=_evaluation(metrics["validation"]) if "validation" in metrics else None,
        export=ExportInfo(
            exporter="export.onnx_graph (onnx.helper, Scan over time)",
            opset=OPSET,
            onnx_version=onnx.__version__,
            torch_version=torch.__version__,
        ),
    )
    card.cost_per_step = card.cost_summary()
    card.threshold_curve = measure_threshold_curve(model, blob)
    card.sparse_graph = SPARSE_GRAPH if cfg.selective else None
    return card


def export_model(
    checkpoint: Path,
    out: Path,
    name: str | None = None,
    force: bool = False,
    notes: list[str] | None = None,
    seed_records: list[Path] | None = None,
    recipe_chosen_on: str | None = None,
) -> Path:
    """Write the model directory `out` from `checkpoint`; verify it before it appears."""
    from export.verify import verify

    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    model, blob = load_checkpoint(str(checkpoint))
    proto = build_model(model)
    graph_bytes = proto.SerializeToString()
    selective = model.config.selective
    sparse_bytes = build_model(model, sparse=True).SerializeToString() if selective else None
    card = make_card(model, blob, name or out.name, graph_bytes, recipe_chosen_on)
    card.notes = list(notes or [])
    if seed_records:
        card.seed_spread = seed_spread(seed_records)
        if card.training.seed not in card.seed_spread.seeds:
            raise ValueError("--seed-records: none is the record of the exported checkpoint")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        (tmp / "model.onnx").write_bytes(graph_bytes)
        if sparse_bytes is not None:
            (tmp / SPARSE_GRAPH).write_bytes(sparse_bytes)
        (tmp / "model.json").write_text(card.model_dump_json(indent=2) + "\n")
        for companion in COMPANIONS:
            src = checkpoint.parent / companion
            if src.is_file() and src.resolve() != (tmp / companion).resolve():
                shutil.copy2(src, tmp / companion)
        report = verify(checkpoint, tmp)
        (tmp / "verify.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        print(report.summary())
        if not report.ok:
            raise ValueError("parity check failed; nothing written (see the report above)")
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(trash / out.name)
            tmp.rename(out)
            shutil.rmtree(trash)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"exported {card.name} version {card.version} -> {out}")
    return out
