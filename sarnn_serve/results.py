"""Turn raw graph outputs into the per-step answers every transport returns."""

import numpy as np

from sarnn_serve.accounting import Usage, usage
from sarnn_serve.card import ModelCard


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def usage_dict(u: Usage) -> dict:
    """The accounting fields shared by chunks, sessions, predictions and stats."""
    return {
        "steps": u.steps,
        "updates": u.updates,
        "update_rate": u.update_rate,
        "macs_dense": u.macs_dense,
        "macs_selective": u.macs_selective,
        "macs_saved": u.macs_saved,
    }


def step_results(
    card: ModelCard,
    logits: np.ndarray,
    updates: np.ndarray,
    first_index: int,
    include_mask: bool,
) -> tuple[list[dict], Usage]:
    """One entry per step of a chunk (logits [T,C], updates [T,H] bool) and its usage."""
    probs = softmax(logits.astype(np.float64)).astype(np.float32)
    classes = probs.argmax(axis=-1)
    counts = updates.sum(axis=-1)
    labels = card.class_labels
    steps = []
    for t in range(len(classes)):
        entry = {
            "index": first_index + t,
            "label": labels[classes[t]],
            "class": int(classes[t]),
            "probabilities": probs[t],
            "updates": int(counts[t]),
        }
        if include_mask:
            entry["mask"] = updates[t].astype(np.uint8)
        steps.append(entry)
    return steps, usage(card.cost, len(classes), int(counts.sum()))
