"""Chunks to stream: the steps of a NumPy array or of a CSV recording, `size` steps at a time."""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sarnn_serve.client.recordings import read_csv


def array_chunks(x: Any, size: int = 1) -> Iterator[np.ndarray]:
    """Consecutive chunks [size, F] of the steps x [T, F] (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"a chunk holds at least one step, got size {size}")
    rows = np.asarray(x, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError(f"steps are [T, F], got shape {rows.shape}")
    for begin in range(0, len(rows), size):
        yield rows[begin : begin + size]


def csv_chunks(path: str | Path, features: Sequence[str], size: int = 1) -> Iterator[np.ndarray]:
    """Chunks of a CSV recording: a header row of column names, the `features` columns read by
    name in that order (others ignored). ValueError names the file, line and column of a bad
    value."""
    table = read_csv(Path(path), features=features)
    yield from array_chunks(table.x, size)
