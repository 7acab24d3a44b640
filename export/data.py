"""Real sensor datasets that ship inside installed packages (nothing is downloaded)."""

from dataclasses import dataclass, field

import numpy as np

DATASETS = ("watch", "basicmotions")


@dataclass
class Recording:
    """One whole recording: x [T, F] float32 in raw sensor units, its class and subject."""

    x: np.ndarray
    label: int
    subject: int | None = None


@dataclass
class Dataset:
    """Recordings split into train and test, with the metadata a model card needs."""

    name: str
    feature_names: list[str]
    class_labels: list[str]
    sample_rate_hz: float | None
    train: list[Recording]
    test: list[Recording]
    train_subjects: list[int] = field(default_factory=list)
    test_subjects: list[int] = field(default_factory=list)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        return len(self.class_labels)

    def normalisation(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and standard deviation over the training recordings only."""
        stacked = np.concatenate([r.x for r in self.train])
        return stacked.mean(0).astype(np.float32), stacked.std(0).astype(np.float32)


def load_watch(test_subjects: tuple[int, ...] = (9, 10)) -> Dataset:
    """seglearn's smartwatch exercise data (6-axis IMU, 50 Hz), split by subject."""
    from seglearn.datasets import load_watch as seglearn_watch

    raw = seglearn_watch()
    recordings = [
        Recording(np.asarray(x, dtype=np.float32), int(y), int(s))
        for x, y, s in zip(raw["X"], raw["y"], raw["subject"], strict=True)
    ]
    subjects = sorted({r.subject for r in recordings})
    unknown = set(test_subjects) - set(subjects)
    if unknown:
        raise ValueError(f"test subjects {sorted(unknown)} not in the watch data ({subjects})")
    return Dataset(
        name="watch",
        feature_names=list(raw["X_labels"]),
        class_labels=list(raw["y_labels"]),
        sample_rate_hz=50.0,
        train=[r for r in recordings if r.subject not in test_subjects],
        test=[r for r in recordings if r.subject in test_subjects],
        train_subjects=[s for s in subjects if s not in test_subjects],
        test_subjects=sorted(test_subjects),
    )


def load_basicmotions() -> Dataset:
    """aeon's BasicMotions (smartwatch, 4 activities, 100 steps at 10 Hz), its own split."""
    from aeon.datasets import load_basic_motions

    parts = {}
    for split in ("train", "test"):
        x, y = load_basic_motions(split=split)
        parts[split] = (np.transpose(x, (0, 2, 1)).astype(np.float32), y)
    labels = sorted(set(parts["train"][1]))
    index = {name: i for i, name in enumerate(labels)}
    recs = {
        split: [Recording(xi, index[yi]) for xi, yi in zip(x, y, strict=True)]
        for split, (x, y) in parts.items()
    }
    return Dataset(
        name="basicmotions",
        feature_names=["ax", "ay", "az", "wx", "wy", "wz"],
        class_labels=[str(label) for label in labels],
        sample_rate_hz=10.0,
        train=recs["train"],
        test=recs["test"],
    )


def load_dataset(name: str) -> Dataset:
    """Load a dataset by name; a clear ValueError for any other name."""
    loaders = {"watch": load_watch, "basicmotions": load_basicmotions}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return loaders[name]()


def sample_windows(
    recordings: list[Recording], batch: int, length: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random training windows: x [batch, L, F] and labels [batch]; L = min(length, shortest)."""
    length = min(length, min(len(r.x) for r in recordings))
    picks = rng.integers(0, len(recordings), size=batch)
    xs, ys = [], []
    for i in picks:
        rec = recordings[i]
        start = rng.integers(0, len(rec.x) - length + 1)
        xs.append(rec.x[start : start + length])
        ys.append(rec.label)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def pad_recordings(recordings: list[Recording]) -> tuple[np.ndarray, np.ndarray]:
    """Whole recordings zero-padded at the end: x [N, T_max, F] and lengths [N]."""
    lengths = np.asarray([len(r.x) for r in recordings], dtype=np.int64)
    out = np.zeros((len(recordings), lengths.max(), recordings[0].x.shape[1]), np.float32)
    for i, r in enumerate(recordings):
        out[i, : len(r.x)] = r.x
    return out, lengths
