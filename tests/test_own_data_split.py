"""Own-data splits on small data: a drawn split keeps every class of validation and test in
training (drawn again with the next seeds where one draw would not), and when no draw can, the
error names the groups of each class. Own recordings written as CSV files, read by the real
loader."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the offline side (export/, the training extra)

from export.data import load_data, load_files, split_groups

pytestmark = pytest.mark.train

CLASSES = ("run", "sit", "walk")


def write_recordings(folder: Path, per_class: int, steps: int = 20) -> list[str]:
    """`per_class` CSV files of each class (each file its own group); the groups."""
    rng = np.random.default_rng(0)
    for label in CLASSES:
        for k in range(1, per_class + 1):
            rows = [
                f"{t},{a:.4f},{b:.4f},{label}" for t, (a, b) in enumerate(rng.random((steps, 2)))
            ]
            (folder / f"{label}-{k}.csv").write_text("time,u,v,label\n" + "\n".join(rows) + "\n")
    return sorted(p.stem for p in folder.glob("*.csv"))


def test_small_data_split_keeps_every_class_in_training(tmp_path: Path) -> None:
    groups = write_recordings(tmp_path, per_class=2)
    # one draw (seed 0) would take both 'sit' recordings out of training
    train = split_groups(groups, seed=0)[0]
    assert not any(g.startswith("sit") for g in train), "the precondition of this test"

    data = load_files(tmp_path, ignore_columns=["time"])
    trained = {r.label for r in data.train}
    assert {r.label for r in data.val + data.test} <= trained
    assert trained == set(range(len(CLASSES)))
    assert len(data.val_subjects) == len(data.test_subjects) == 1
    # the split is the one saved: export and verify read the same parts
    again = load_data(data.spec)
    assert (again.train_subjects, again.val_subjects, again.test_subjects) == (
        data.train_subjects,
        data.val_subjects,
        data.test_subjects,
    )


def test_a_named_test_group_with_a_drawn_validation_group(tmp_path: Path) -> None:
    write_recordings(tmp_path, per_class=2)
    data = load_files(tmp_path, ignore_columns=["time"], test_groups=["sit-2"])
    assert data.test_subjects == ["sit-2"]
    assert "sit-1" in data.train_subjects


def test_no_possible_split_names_the_groups_of_each_class(tmp_path: Path) -> None:
    write_recordings(tmp_path, per_class=1)
    with pytest.raises(ValueError) as error:
        load_files(tmp_path, ignore_columns=["time"])
    message = str(error.value)
    assert "no split of the 3 groups (seeds 0 to 99)" in message
    assert "'run': run-1; 'sit': sit-1; 'walk': walk-1" in message
    assert "--val-groups and --test-groups" in message
