"""Training loop for SA-RNN and its dense baseline: seeds, checkpoint, metrics JSON, plots."""

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from export.data import Dataset, load_dataset, pad_recordings, sample_windows
from export.model import SARNN, ModelConfig, budget_loss, save_checkpoint, slope
from sarnn_serve.accounting import CellCost


@dataclass
class TrainConfig:
    """Recipe of one training run."""

    dataset: str = "watch"
    cell: str = "gru"
    hidden: int = 128
    lam: float = 2.5
    lam_warmup_epochs: int = 4
    dense: bool = False
    epochs: int = 24
    batches_per_epoch: int = 50
    batch_size: int = 32
    window: int = 256
    lr: float = 3e-3
    seed: int = 0
    warmup_steps: int = 50
    eval_skip_seconds: float = 2.0
    threads: int = 1

    def recipe(self, out: str) -> str:
        """The CLI command that reproduces this run."""
        flags = [
            f"--dataset {self.dataset}",
            f"--cell {self.cell}",
            f"--hidden {self.hidden}",
            f"--lam {self.lam:g}",
            f"--lam-warmup-epochs {self.lam_warmup_epochs}",
            f"--epochs {self.epochs}",
            f"--batches-per-epoch {self.batches_per_epoch}",
            f"--batch-size {self.batch_size}",
            f"--window {self.window}",
            f"--seed {self.seed}",
        ]
        if self.dense:
            flags.append("--dense")
        return f"python -m export train {' '.join(flags)} --out {out}"


@dataclass
class Evaluation:
    """Held-out figures of a model in deterministic mode."""

    streaming_accuracy: float
    last_step_accuracy: float
    update_rate: float
    steps: int


def budget_weight(cfg: TrainConfig, epoch: int) -> float:
    """lambda, ramped linearly from 0 over the first `lam_warmup_epochs` epochs: the model first
    learns the task with its gates mostly open, then learns to skip updates."""
    if cfg.lam_warmup_epochs <= 0:
        return cfg.lam
    return cfg.lam * min(1.0, epoch / cfg.lam_warmup_epochs)


@torch.no_grad()
def evaluate(model: SARNN, data: Dataset, skip_steps: int, threshold: float = 0.5) -> Evaluation:
    """Stream every test recording from a zero state; score the prediction at every step after
    `skip_steps` (pooled over steps), the last-step prediction per recording and the update rate."""
    model.eval()
    x, lengths = pad_recordings(data.test)
    out = model(torch.from_numpy(x), deterministic=True, threshold=threshold)
    pred = out.logits.argmax(-1).numpy()
    upd = out.updates.numpy()
    labels = np.asarray([r.label for r in data.test])
    correct = scored = updates = steps = last_ok = 0
    for i, n in enumerate(lengths):
        skip = min(skip_steps, n - 1)
        correct += int((pred[i, skip:n] == labels[i]).sum())
        scored += int(n - skip)
        last_ok += int(pred[i, n - 1] == labels[i])
        updates += int(upd[i, :n].sum())
        steps += int(n)
    return Evaluation(
        streaming_accuracy=correct / scored,
        last_step_accuracy=last_ok / len(lengths),
        update_rate=updates / (steps * model.config.hidden),
        steps=steps,
    )


def _step_loss(
    model: SARNN, x: torch.Tensor, y: torch.Tensor, lam: float, warmup: int
) -> tuple[torch.Tensor, float, float]:
    out = model(x)
    logits = out.logits[:, warmup:]
    task = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.repeat_interleave(logits.shape[1])
    )
    loss = task + (budget_loss(out.updates, lam) if model.config.selective else 0.0)
    return loss, float(task.detach()), float(out.updates.detach().mean())


def train(cfg: TrainConfig, out_dir: Path, progress: bool = True) -> dict:
    """Train one model, write checkpoint.pt, metrics.json and the plots into out_dir."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data = load_dataset(cfg.dataset)
    model = SARNN(
        ModelConfig(
            cell=cfg.cell,
            n_features=data.n_features,
            hidden=cfg.hidden,
            n_classes=data.n_classes,
            selective=not cfg.dense,
        )
    )
    model.set_normalisation(*data.normalisation())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    total = cfg.epochs * cfg.batches_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    skip = int(cfg.eval_skip_seconds * (data.sample_rate_hz or 0))
    warmup = min(cfg.warmup_steps, cfg.window // 4)
    history, skipped = [], 0
    started = time.perf_counter()
    bar = tqdm(total=total, disable=not progress, desc=f"{cfg.cell} lam={cfg.lam:g} s{cfg.seed}")
    for epoch in range(cfg.epochs):
        model.train()
        model.alpha = slope(epoch)
        lam = budget_weight(cfg, epoch)
        losses, rates = [], []
        for _ in range(cfg.batches_per_epoch):
            xb, yb = sample_windows(data.train, cfg.batch_size, cfg.window, rng)
            loss, task, rate = _step_loss(
                model, torch.from_numpy(xb), torch.from_numpy(yb), lam, warmup
            )
            opt.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if math.isfinite(float(loss.detach())) and math.isfinite(float(grad_norm)):
                opt.step()
            else:
                skipped += 1
            sched.step()
            losses.append(task)
            rates.append(rate)
            bar.update()
            bar.set_postfix(loss=f"{task:.3f}", rate=f"{rate:.2f}")
        ev = evaluate(model, data, skip)
        history.append(
            {
                "epoch": epoch,
                "alpha": model.alpha,
                "lam": lam,
                "train_loss": float(np.mean(losses)),
                "train_update_rate": float(np.mean(rates)),
                **{f"test_{k}": v for k, v in asdict(ev).items() if k != "steps"},
            }
        )
    bar.close()
    final = evaluate(model, data, skip)
    cost = CellCost(cfg.cell, data.n_features, cfg.hidden)
    rate = 1.0 if cfg.dense else final.update_rate
    metrics = {
        "config": asdict(cfg),
        "recipe": cfg.recipe(str(out_dir)),
        "dataset": {
            "name": data.name,
            "train_subjects": data.train_subjects,
            "test_subjects": data.test_subjects,
            "test_recordings": len(data.test),
            "test_steps": final.steps,
            "scored_after_steps": skip,
        },
        "test": asdict(final),
        "macs_per_step": {
            "dense": cost.dense_step,
            "selective": cost.coordinator + rate * cfg.hidden * cost.per_neuron
            if not cfg.dense
            else cost.dense_step,
        },
        "alpha": model.alpha,
        "skipped_nonfinite_steps": skipped,
        "train_seconds": time.perf_counter() - started,
        "history": history,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        model,
        str(out_dir / "checkpoint.pt"),
        {
            "dataset": data.name,
            "feature_names": data.feature_names,
            "class_labels": data.class_labels,
            "sample_rate_hz": data.sample_rate_hz,
            "train_config": asdict(cfg),
            "metrics": {k: metrics[k] for k in ("test", "dataset", "recipe")},
        },
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    from export.plots import plot_curves, plot_raster

    plot_curves(history, out_dir / "curves.png")
    plot_raster(model, data, out_dir / "raster.png")
    return metrics
