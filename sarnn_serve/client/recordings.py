"""Recordings on disk: one CSV file per recording, or a NumPy .npz archive of several.

Shared by training (`export.data`) and `sarnn-serve replay`; numpy and the csv module only (no
torch). Every problem is a ValueError naming the file and, where there is one, the line and
column.

A CSV file has a header row of column names and one row per step. `read_csv` takes either the
named feature columns (replay: the model card's) or every column that is not the label, the
group or an ignored one (training). `read_folder` reads a folder of such files for training:
one class per recording, so the label column must hold the same value on every row. `read_npz`
reads `X` ([N,T,F] numbers, optionally with `lengths` [N]; or an object array of [T_i,F]),
`y` [N], and optionally `groups` [N], `feature_names` [F] and `class_labels` [C].
"""

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABEL_COLUMN = "label"
GROUPS_FILE = "groups.csv"


@dataclass
class Table:
    """One CSV file: x [T, F] float32 in `features` order; per row the text of the label column
    (None without one) and the file line it came from; the group column's value, if asked for."""

    path: Path
    features: list[str]
    x: np.ndarray
    lines: list[int]
    labels: list[str] | None
    group: str | None


@dataclass
class Recordings:
    """Recordings read for training, not yet split: each with its class index and group."""

    source: str
    feature_names: list[str]
    class_labels: list[str]
    x: list[np.ndarray]
    y: list[int]
    groups: list[str]
    names: list[str]


def _plural(items: Sequence[str], word: str = "column") -> str:
    return f"{word}{'s' if len(items) > 1 else ''} {', '.join(repr(i) for i in items)}"


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None
    if not np.isfinite(value):
        raise ValueError(f"{where}: {text!r} is not finite (NaN or infinity)")
    return value


def read_csv(
    path: Path,
    *,
    features: Sequence[str] | None = None,
    label_column: str | None = LABEL_COLUMN,
    ignore: Sequence[str] = (),
    group_column: str | None = None,
) -> Table:
    """Read one recording. `features` picks columns by name (others are not parsed) and the
    label column is optional; without `features` the label column must exist and every other
    column but the group and `ignore` is a feature. A named group or ignored column must exist;
    the group's value must not change within the file."""
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty; expected a header row of column names")
        names = [h.strip() for h in header]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"{path}: the header repeats {_plural(doubled)}")
        has = ", ".join(names) or "none"
        asked = [*ignore, *([group_column] if group_column else [])]
        missing = [c for c in (list(features or []) + asked) if c not in names]
        if missing:
            raise ValueError(f"{path} lacks {_plural(missing)} (it has {has})")
        if features is None:
            if label_column not in names:
                raise ValueError(
                    f"{path} has no label column {label_column!r} (it has {has}; name it with "
                    "--label-column)"
                )
            skip = {*asked, label_column}
            features = [n for n in names if n not in skip]
            if not features:
                raise ValueError(f"{path} has no feature columns (it has {has})")
        cols = [names.index(f) for f in features]
        label_at = names.index(label_column) if label_column in names else None
        group_at = names.index(group_column) if group_column else None
        rows: list[list[float]] = []
        lines: list[int] = []
        labels: list[str] = []
        groups: set[str] = set()
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(names):
                raise ValueError(
                    f"{path}, line {line}: {len(row)} cells, expected {len(names)} (one per "
                    "header column)"
                )
            rows.append(
                [_number(row[c], f"{path}, line {line}, column {names[c]!r}") for c in cols]
            )
            lines.append(line)
            if label_at is not None:
                labels.append(row[label_at].strip())
            if group_at is not None:
                groups.add(row[group_at].strip())
                if len(groups) > 1:
                    raise ValueError(
                        f"{path}, line {line}: the group column {group_column!r} changes within "
                        f"the recording ({', '.join(sorted(groups))}); a recording has one group"
                    )
    if not rows:
        raise ValueError(f"{path} has a header but no data rows")
    return Table(
        path=path,
        features=list(features),
        x=np.asarray(rows, dtype=np.float32),
        lines=lines,
        labels=labels if label_at is not None else None,
        group=groups.pop() if groups else None,
    )


def class_order(labels: set[str]) -> list[str]:
    """Class labels in a stable order: by value when every label is an integer, else as text."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def _recording_label(table: Table, label_column: str) -> str:
    """The one class of a recording; an error if its label is empty or varies."""
    assert table.labels is not None, "read_csv without features requires the label column"
    first = table.labels[0]
    for line, label in zip(table.lines, table.labels, strict=True):
        if label == "":
            raise ValueError(f"{table.path}, line {line}: the label {label_column!r} is empty")
        if label != first:
            raise ValueError(
                f"{table.path}, line {line}: the label changes from {first!r} to {label!r}; "
                "training takes one class per recording: split the file where the class changes"
            )
    return first


def _group_file(folder: Path) -> dict[str, str]:
    """groups.csv: a header row, then `file,group` rows (file name with or without .csv)."""
    path = folder / GROUPS_FILE
    mapping: dict[str, str] = {}
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 2:
                raise ValueError(f"{path}, line {line}: expected two cells, file and group")
            mapping[row[0].strip().removesuffix(".csv")] = row[1].strip()
    return mapping


def read_folder(
    folder: Path,
    *,
    label_column: str = LABEL_COLUMN,
    ignore: Sequence[str] = (),
    group_column: str | None = None,
) -> Recordings:
    """Every *.csv file of `folder` (but groups.csv) as one recording. The group of a file is its
    `group_column` value, else its row in groups.csv, else the file's own name."""
    files = sorted(p for p in folder.glob("*.csv") if p.name != GROUPS_FILE)
    if not files:
        raise ValueError(f"{folder} holds no .csv recordings")
    mapping = None
    if group_column is None and (folder / GROUPS_FILE).is_file():
        mapping = _group_file(folder)
    tables = [
        read_csv(f, label_column=label_column, ignore=ignore, group_column=group_column)
        for f in files
    ]
    first = tables[0]
    for table in tables[1:]:
        if table.features != first.features:
            raise ValueError(
                f"{table.path.name} has feature columns {', '.join(table.features)} but "
                f"{first.path.name} has {', '.join(first.features)}; every recording needs "
                "the same columns (list extra ones in --ignore-columns)"
            )
    labels = [_recording_label(t, label_column) for t in tables]
    groups = []
    for table in tables:
        if table.group is not None:
            groups.append(table.group)
        elif mapping is not None:
            if table.path.stem not in mapping:
                raise ValueError(f"{folder / GROUPS_FILE} has no group for {table.path.name}")
            groups.append(mapping[table.path.stem])
        else:
            groups.append(table.path.stem)
    classes = class_order(set(labels))
    return Recordings(
        source=str(folder),
        feature_names=first.features,
        class_labels=classes,
        x=[t.x for t in tables],
        y=[classes.index(label) for label in labels],
        groups=groups,
        names=[t.path.name for t in tables],
    )


def _npz_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise ValueError(
            f"{path}: {key!r} is an object array; loading it unpickles Python objects, which can "
            "run code. Pass --allow-pickle if you trust the file, or store X as a padded "
            "[N, T, F] array with lengths [N]"
        ) from None


def _npz_recordings(x: np.ndarray, lengths: np.ndarray | None, path: Path) -> list[np.ndarray]:
    """The recordings of X: [N,T,F] (cut to `lengths`) or an object array of [T_i, F]."""
    if x.dtype == object:
        items = [np.asarray(item) for item in x]
    elif x.ndim == 3:
        if lengths is None:
            items = list(x)
        else:
            if lengths.shape != (len(x),) or not np.issubdtype(lengths.dtype, np.integer):
                raise ValueError(f"{path}: lengths must be {len(x)} integers, one per recording")
            bad = np.flatnonzero((lengths < 1) | (lengths > x.shape[1]))
            if bad.size:
                raise ValueError(f"{path}: lengths[{bad[0]}] is not within 1..{x.shape[1]}")
            items = [xi[:n] for xi, n in zip(x, lengths, strict=True)]
    else:
        raise ValueError(
            f"{path}: X has shape {x.shape}; expected [N, T, F] or an object array of [T, F]"
        )
    out = []
    for i, item in enumerate(items):
        if item.ndim != 2 or not np.issubdtype(item.dtype, np.number):
            raise ValueError(f"{path}: X[{i}] is not a [T, F] array of numbers")
        if item.shape[1] != items[0].shape[1]:
            raise ValueError(
                f"{path}: X[{i}] has {item.shape[1]} features, X[0] has {items[0].shape[1]}"
            )
        bad = np.argwhere(~np.isfinite(item))
        if bad.size:
            step, feature = bad[0]
            raise ValueError(
                f"{path}: X[{i}] is not finite (NaN or infinity) at step {step}, feature {feature}"
            )
        out.append(np.ascontiguousarray(item, dtype=np.float32))
    return out


def _npz_classes(y: np.ndarray, names: list[str] | None, path: Path) -> tuple[list[int], list[str]]:
    """Class indices and labels from y: indices into `names`, or labels (text or numbers)."""
    if y.dtype.kind in "iu" and names is not None:
        bad = np.flatnonzero((y < 0) | (y >= len(names)))
        if bad.size:
            raise ValueError(
                f"{path}: y[{bad[0]}] = {y[bad[0]]} is not a class index 0..{len(names) - 1}"
            )
        return [int(v) for v in y], names
    if y.dtype.kind == "f" and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    text = [str(v) for v in y]
    classes = names if names is not None else class_order(set(text))
    unknown = sorted(set(text) - set(classes))
    if unknown:
        raise ValueError(f"{path}: y holds {_plural(unknown, 'label')} not in class_labels")
    return [classes.index(t) for t in text], classes


def read_npz(path: Path, *, allow_pickle: bool = False) -> Recordings:
    """Recordings from a .npz archive (see the module docstring for its arrays)."""
    try:
        archive = np.load(path, allow_pickle=allow_pickle)
    except OSError as exc:
        raise ValueError(f"cannot read {path} as a .npz archive: {exc}") from None
    with archive:
        keys = set(archive.files)
        for key in ("X", "y"):
            if key not in keys:
                raise ValueError(f"{path} has no array {key!r} (it has {', '.join(sorted(keys))})")
        get = {k: _npz_array(archive, k, path) for k in keys}
    xs = _npz_recordings(get["X"], get.get("lengths"), path)
    if not xs:
        raise ValueError(f"{path}: X holds no recordings")
    y = get["y"]
    if y.shape != (len(xs),):
        raise ValueError(
            f"{path}: y has shape {y.shape}; expected ({len(xs)},), one class per recording"
        )
    names = [str(c) for c in get["class_labels"]] if "class_labels" in get else None
    labels, classes = _npz_classes(y, names, path)
    n_features = xs[0].shape[1] if xs else 0
    features = [str(f) for f in get.get("feature_names", [f"f{i}" for i in range(n_features)])]
    if len(features) != n_features:
        raise ValueError(f"{path}: {len(features)} feature_names for {n_features} features")
    groups = [str(g) for g in get.get("groups", range(len(xs)))]
    if len(groups) != len(xs):
        raise ValueError(f"{path}: {len(groups)} groups for {len(xs)} recordings")
    return Recordings(
        source=str(path),
        feature_names=features,
        class_labels=classes,
        x=xs,
        y=labels,
        groups=groups,
        names=[f"{path.name}[{i}]" for i in range(len(xs))],
    )
