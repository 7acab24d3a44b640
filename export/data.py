"""Training data split into train, validation and test parts; nothing is downloaded.

Datasets that ship inside installed packages (seglearn's smartwatch exercises, split by subject;
aeon's BasicMotions) and your own recordings (a folder of CSV files or a .npz archive, read by
sarnn_serve.client.recordings, split by group). Every Dataset carries `spec`, plain data from which
`load_data` rebuilds the same split: it is saved in the checkpoint so that export and verify read
exactly the data the model was trained and tested on. This module never imports torch.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sarnn_serve.client.recordings import LABEL_COLUMN, Recordings, read_folder, read_npz

DATASETS = ("watch", "basicmotions")
WATCH_VAL_SUBJECTS = (7, 8)
WATCH_TEST_SUBJECTS = (9, 10)
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2
SPLIT_DRAWS = 100  # seeds a drawn split tries (--split-seed and the next) to keep every class


@dataclass
class Recording:
    """One whole recording: x [T, F] float32 in raw sensor units, its class and its subject
    (the group it is split by: a watch subject number, or a group name of your data)."""

    x: np.ndarray
    label: int
    subject: int | str | None = None


@dataclass
class Dataset:
    """Recordings split into train, validation and test, with the metadata a model card needs."""

    name: str
    feature_names: list[str]
    class_labels: list[str]
    sample_rate_hz: float | None
    train: list[Recording]
    test: list[Recording]
    val: list[Recording] = field(default_factory=list)
    train_subjects: list = field(default_factory=list)
    val_subjects: list = field(default_factory=list)
    test_subjects: list = field(default_factory=list)
    spec: dict = field(default_factory=dict)

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


def load_watch(
    test_subjects: Sequence[int] = WATCH_TEST_SUBJECTS,
    val_subjects: Sequence[int] = WATCH_VAL_SUBJECTS,
) -> Dataset:
    """seglearn's smartwatch exercise data (6-axis IMU, 50 Hz), split by subject: by default
    train on subjects 1-6, validate on 7-8, test on 9-10."""
    from seglearn.datasets import load_watch as seglearn_watch

    raw = seglearn_watch()
    recordings = [
        Recording(np.asarray(x, dtype=np.float32), int(y), int(s))
        for x, y, s in zip(raw["X"], raw["y"], raw["subject"], strict=True)
    ]
    subjects = sorted({r.subject for r in recordings})
    for role, chosen in (("test", test_subjects), ("validation", val_subjects)):
        unknown = set(chosen) - set(subjects)
        if unknown:
            raise ValueError(
                f"{role} subjects {sorted(unknown)} not in the watch data ({subjects})"
            )
    both = set(test_subjects) & set(val_subjects)
    if both:
        raise ValueError(f"subjects {sorted(both)} are both validation and test subjects")
    held = set(test_subjects) | set(val_subjects)
    return Dataset(
        name="watch",
        feature_names=list(raw["X_labels"]),
        class_labels=list(raw["y_labels"]),
        sample_rate_hz=50.0,
        train=[r for r in recordings if r.subject not in held],
        val=[r for r in recordings if r.subject in val_subjects],
        test=[r for r in recordings if r.subject in test_subjects],
        train_subjects=[s for s in subjects if s not in held],
        val_subjects=sorted(val_subjects),
        test_subjects=sorted(test_subjects),
        spec={
            "dataset": "watch",
            "val_subjects": sorted(val_subjects),
            "test_subjects": sorted(test_subjects),
        },
    )


def stratified_holdout(
    labels: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices (kept, held out): `fraction` of each class held out (at least one), seeded."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    held: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, round(fraction * len(members))) if fraction > 0 else 0
        if count >= len(members):
            raise ValueError(f"class {label} has {len(members)} recordings; none would be left")
        held += rng.permutation(members)[:count].tolist()
    kept = sorted(set(range(len(labels))) - set(held))
    return kept, sorted(held)


def load_basicmotions(val_fraction: float = VAL_FRACTION, split_seed: int = 0) -> Dataset:
    """aeon's BasicMotions (smartwatch, 4 activities, 100 steps at 10 Hz): its own test split,
    and a validation part carved out of its train split (seeded, stratified by class)."""
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
    kept, held = stratified_holdout([r.label for r in recs["train"]], val_fraction, split_seed)
    return Dataset(
        name="basicmotions",
        feature_names=["ax", "ay", "az", "wx", "wy", "wz"],
        class_labels=[str(label) for label in labels],
        sample_rate_hz=10.0,
        train=[recs["train"][i] for i in kept],
        val=[recs["train"][i] for i in held],
        test=recs["test"],
        spec={"dataset": "basicmotions", "val_fraction": val_fraction, "split_seed": split_seed},
    )


def split_groups(
    groups: Sequence[str],
    val_groups: Sequence[str] = (),
    test_groups: Sequence[str] = (),
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) groups. Named groups are used as given; a part with none named draws
    round(fraction x number of groups), at least one, from the groups left (seeded)."""
    known = sorted(set(groups))
    for role, chosen in (("validation", val_groups), ("test", test_groups)):
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            raise ValueError(
                f"{role} groups {', '.join(unknown)} not in the data (groups: {', '.join(known)})"
            )
    both = set(val_groups) & set(test_groups)
    if both:
        raise ValueError(f"groups {', '.join(sorted(both))} are both validation and test groups")
    rng = np.random.default_rng(seed)
    pool = [g for g in rng.permutation(known).tolist() if g not in {*val_groups, *test_groups}]
    chosen = {}
    for role, named, fraction in (
        ("test", test_groups, test_fraction),
        ("val", val_groups, val_fraction),
    ):
        if named:
            chosen[role] = sorted(named)
            continue
        if not 0 < fraction < 1:
            raise ValueError(f"the {role} fraction must be between 0 and 1, got {fraction:g}")
        count = max(1, round(fraction * len(known)))
        chosen[role], pool = sorted(pool[:count]), pool[count:]
    if not pool:
        raise ValueError(
            f"no group left for training: {len(known)} groups, validation "
            f"{', '.join(chosen['val'])}, test {', '.join(chosen['test'])}"
        )
    return sorted(pool), chosen["val"], chosen["test"]


def draw_split(
    groups: Sequence[str],
    labels: Sequence[int],
    class_labels: Sequence[str],
    val_groups: Sequence[str] = (),
    test_groups: Sequence[str] = (),
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
) -> tuple[list[str], list[str], list[str]]:
    """`split_groups` for recordings of `labels` in `groups`, drawn again with the next seeds
    (up to SPLIT_DRAWS) until every class of the validation and test parts is also in training:
    with a few recordings a class, one draw often takes a whole class out of training. Named
    parts are kept as named (`_check_classes` then says what is wrong). ValueError, with the
    groups of each class, if no draw works."""
    held: dict[str, set[int]] = {}
    for group, label in zip(groups, labels, strict=True):
        held.setdefault(group, set()).add(int(label))
    draws = 1 if val_groups and test_groups else SPLIT_DRAWS
    for attempt in range(draws):
        train, val, test = split_groups(
            groups, val_groups, test_groups, val_fraction, test_fraction, seed + attempt
        )
        trained = set().union(*(held[g] for g in train))
        if draws == 1 or all(held[g] <= trained for g in (*val, *test)):
            return train, val, test
    by_class = "; ".join(
        f"{class_labels[c]!r}: {', '.join(sorted(g for g in held if c in held[g]))}"
        for c in sorted(set().union(*held.values()))
    )
    raise ValueError(
        f"no split of the {len(held)} groups (seeds {seed} to {seed + draws - 1}) keeps every "
        f"class of validation and test in training. Groups of each class: {by_class}. Name "
        "--val-groups and --test-groups from classes with several groups, keeping one of each "
        "class for training, or record more groups"
    )


def _check_classes(parts: dict[str, list[Recording]], class_labels: list[str]) -> None:
    """Every class of the validation and test parts must be in the training part."""
    trained = {r.label for r in parts["train"]}
    for role in ("validation", "test"):
        missing = sorted({r.label for r in parts[role]} - trained)
        if missing:
            names = ", ".join(repr(class_labels[c]) for c in missing)
            raise ValueError(
                f"class {names} appears in the {role} part but not in training; choose other "
                "groups (--val-groups, --test-groups) or another --split-seed"
            )


def load_files(
    path: str | Path,
    *,
    label_column: str = LABEL_COLUMN,
    ignore_columns: Sequence[str] = (),
    group_column: str | None = None,
    val_groups: Sequence[str] = (),
    test_groups: Sequence[str] = (),
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    split_seed: int = 0,
    sample_rate_hz: float | None = None,
    allow_pickle: bool = False,
) -> Dataset:
    """Your own recordings: a folder of CSV files or a .npz archive, split by group."""
    source = Path(path).resolve()
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    if source.is_dir():
        raw: Recordings = read_folder(
            source, label_column=label_column, ignore=ignore_columns, group_column=group_column
        )
    elif source.suffix == ".npz":
        raw = read_npz(source, allow_pickle=allow_pickle)
    else:
        raise ValueError(f"{source}: expected a folder of CSV files or a .npz archive")
    train_g, val_g, test_g = draw_split(
        raw.groups,
        raw.y,
        raw.class_labels,
        val_groups,
        test_groups,
        val_fraction,
        test_fraction,
        split_seed,
    )
    recordings = [Recording(x, y, g) for x, y, g in zip(raw.x, raw.y, raw.groups, strict=True)]
    parts = {
        role: [r for r in recordings if r.subject in chosen]
        for role, chosen in (("train", train_g), ("validation", val_g), ("test", test_g))
    }
    _check_classes(parts, raw.class_labels)
    return Dataset(
        name=source.stem,
        feature_names=raw.feature_names,
        class_labels=raw.class_labels,
        sample_rate_hz=sample_rate_hz,
        train=parts["train"],
        val=parts["validation"],
        test=parts["test"],
        train_subjects=train_g,
        val_subjects=val_g,
        test_subjects=test_g,
        spec={
            "path": str(source),
            "label_column": label_column,
            "ignore_columns": list(ignore_columns),
            "group_column": group_column,
            "val_groups": val_g,
            "test_groups": test_g,
            "sample_rate_hz": sample_rate_hz,
            "allow_pickle": allow_pickle,
        },
    )


def load_dataset(name: str) -> Dataset:
    """Load a shipped dataset by name with its default split; a clear ValueError otherwise."""
    loaders = {"watch": load_watch, "basicmotions": load_basicmotions}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return loaders[name]()


def load_data(spec: dict) -> Dataset:
    """The dataset a spec (`Dataset.spec`, as saved in a checkpoint) describes, split the same
    way: a shipped dataset (key `dataset`) or your own files (key `path`)."""
    options = {k: v for k, v in spec.items() if k not in ("dataset", "path")}
    if "path" in spec:
        return load_files(spec["path"], **options)
    name = spec.get("dataset")
    if name == "watch":
        return load_watch(**options)
    if name == "basicmotions":
        return load_basicmotions(**options)
    return load_dataset(str(name))


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
