"""Typed results of the data plane and their rendering into the bodies every transport sends.

`StepOutputs` is what a chunk produced (logits, update counts, optional masks): the data plane
keeps the last one in the session record (packed: `records.PackedOutputs`) so that a retry is
answered again exactly; transports render it with `chunk_body` / `step_list`.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

from sarnn_serve.accounting import Usage, usage
from sarnn_serve.card import ModelCard


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class StepOutputs:
    """Per-step outputs of one chunk: logits [T,C] float32, update counts [T], masks [T,H]."""

    first_index: int
    logits: np.ndarray
    counts: np.ndarray
    masks: np.ndarray | None = None

    @classmethod
    def from_graph(
        cls,
        first_index: int,
        logits: np.ndarray,
        updates: np.ndarray,
        include_mask: bool,
        counts: np.ndarray | None = None,
    ) -> "StepOutputs":
        """From a chunk's graph outputs: logits [T,C] and the update mask [T,H] (its counts
        per step when already summed)."""
        if counts is None:
            counts = updates.sum(axis=-1, dtype=np.int64).astype(np.uint16)
        return cls(
            first_index,
            logits.astype(np.float32, copy=False),
            counts.astype(np.uint16, copy=False),
            updates.astype(bool, copy=False) if include_mask else None,
        )

    @property
    def steps(self) -> int:
        return len(self.counts)

    def usage(self, card: ModelCard) -> Usage:
        return usage(card.cost, self.steps, int(self.counts.sum(dtype=np.int64)))


def step_list(card: ModelCard, out: StepOutputs) -> list[dict[str, Any]]:
    """One entry per step: index, label, class, probabilities, updates (and mask)."""
    probs = softmax(out.logits.astype(np.float64)).astype(np.float32)
    classes = probs.argmax(axis=-1)
    labels = card.class_labels
    steps = []
    for t in range(out.steps):
        entry = {
            "index": out.first_index + t,
            "label": labels[classes[t]],
            "class": int(classes[t]),
            "probabilities": probs[t],
            "updates": int(out.counts[t]),
        }
        if out.masks is not None:
            entry["mask"] = out.masks[t].astype(np.uint8)
        steps.append(entry)
    return steps


@dataclass
class ChunkResult:
    """The answer to one chunk: what it produced, its usage and the session's totals after it
    (`session`, the full summary, only for the answer modes that show it)."""

    session_id: str
    seq: int
    model: str
    outputs: StepOutputs
    chunk: Usage
    session_steps: int
    session_updates: int
    replayed: bool
    session: dict[str, Any] | None = None
    threshold: float = 0.5
    expected_accuracy: float | None = None


def chunk_columns(result: ChunkResult, include_probabilities: bool) -> dict[str, Any]:
    """The lean chunk answer (schemas.ChunkColumns): arrays, not per-step objects."""
    out = result.outputs
    body: dict[str, Any] = {
        "type": "chunk",
        "seq": result.seq,
        "first_index": out.first_index,
        "classes": out.logits.argmax(axis=-1),
        "updates": out.counts,
        "session_steps": result.session_steps,
        "session_updates": result.session_updates,
        "threshold": result.threshold,
        "replayed": result.replayed,
    }
    if include_probabilities:
        body["probabilities"] = softmax(out.logits.astype(np.float64)).astype(np.float32)
    if out.masks is not None:
        body["masks"] = out.masks.astype(np.uint8)
    return body


def chunk_body(card: ModelCard, result: ChunkResult) -> dict[str, Any]:
    """The chunk answer of REST and WebSocket (schemas.ChunkResponse)."""
    return {
        "type": "chunk",
        "session_id": result.session_id,
        "seq": result.seq,
        "model": result.model,
        "steps": step_list(card, result.outputs),
        "chunk": result.chunk.as_dict(),
        "session": result.session,
        "threshold": result.threshold,
        "expected_accuracy": result.expected_accuracy,
        "replayed": result.replayed,
    }
