"""The two pictures of a training run: learning curves and the update raster."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from export.data import Dataset
from export.model import SARNN


def plot_curves(history: list[dict], path: Path) -> None:
    """Train loss, validation streaming accuracy and update rate per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(epochs, [h["train_loss"] for h in history])
    axes[0].set_title("train task loss")
    axes[1].plot(epochs, [h["val_streaming_accuracy"] for h in history], label="streaming")
    axes[1].plot(epochs, [h["val_last_step_accuracy"] for h in history], label="last step")
    axes[1].set_title("validation accuracy")
    axes[1].legend()
    axes[2].plot(epochs, [h["train_update_rate"] for h in history], label="train")
    axes[2].plot(epochs, [h["val_update_rate"] for h in history], label="validation")
    axes[2].set_title("update rate")
    axes[2].set_ylim(0, 1.05)
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def plot_raster(model: SARNN, data: Dataset, path: Path, index: int = 0) -> None:
    """Update raster of one test recording: time x neuron, dark = updated."""
    rec = data.test[index]
    out = model(torch.from_numpy(rec.x[None]), deterministic=True)
    mask = out.updates[0].numpy().T
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.imshow(mask, aspect="auto", cmap="Greys", interpolation="nearest")
    rate = mask.mean()
    label = data.class_labels[rec.label]
    ax.set_title(f"updates of test recording {index} ({label}); update rate {rate:.1%}")
    ax.set_xlabel("step")
    ax.set_ylabel("neuron")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
