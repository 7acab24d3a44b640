"""Typed results of the session service, carrying everything the transports need to render them
(`api.codec`), with no wire format here.

`StepOutputs` is what a chunk produced (logits, update counts, optional masks): the service
keeps the last one in the session record (packed: `records.PackedOutputs`) so that a retry is
answered again exactly.
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
    labels: list[str]
    hidden: int
    session: dict[str, Any] | None = None
    threshold: float = 0.5
    expected_accuracy: float | None = None


@dataclass
class PredictResult:
    """The answer to whole sequences run from a zero state: per sequence its outputs and usage,
    and the usage of them all."""

    model: str
    labels: list[str]
    sequences: list[tuple[StepOutputs, Usage]]
    usage: Usage
    include_steps: bool
