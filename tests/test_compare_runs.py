"""export.compare_runs: two recipes' runs as a paired difference over recordings and seeds."""

import json

import pytest

pytest.importorskip("torch")  # export/ ships with the training extra
from export.compare_runs import main

pytestmark = pytest.mark.train  # needs the training extra


def write_run(root, name, seed, correct, rate=0.3):
    run = root / name
    run.mkdir()
    part = {"streaming_accuracy": sum(correct) / 400, "update_rate": rate}
    part |= {"scored": [100] * 4, "correct": correct}
    curve = [{"threshold": 0.05, "update_rate": 0.6}, {"threshold": 0.95, "update_rate": 0.1}]
    metrics = {"config": {"seed": seed}, "validation": part, "test": part}
    metrics["threshold_curve"] = curve
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_a_clear_difference_is_called_and_a_tie_is_not(tmp_path, capsys):
    good = [write_run(tmp_path, f"a{s}", s, [90, 95, 92, 94]) for s in (0, 1)]
    bad = [write_run(tmp_path, f"b{s}", s, [60, 65, 62, 58]) for s in (0, 1)]
    main([*map(str, good), "--against", *map(str, bad)])
    out = capsys.readouterr().out
    assert "A is better" in out and "knob 60.0% (tau 0.05) to 10.0% (tau 0.95)" in out
    main([*map(str, bad), "--against", *map(str, good), "--part", "test"])
    assert "B is better" in capsys.readouterr().out
    same = [write_run(tmp_path, f"c{s}", s, [90, 95, 92, 94]) for s in (0, 1)]
    main([str(good[0] / "metrics.json"), str(good[1]), "--against", *map(str, same)])
    assert "+0.0 [+0.0, +0.0] (95% CI): not distinguishable" in capsys.readouterr().out


def _bounds(out: str) -> tuple[float, float]:
    lo, hi = out.split("[", 1)[1].split("]", 1)[0].split(", ")
    return float(lo), float(hi)


def test_a_higher_level_widens_the_ci(tmp_path, capsys):
    a = [write_run(tmp_path, f"a{s}", s, [90, 70, 85, 60]) for s in (0, 1)]
    b = [write_run(tmp_path, f"b{s}", s, [80, 75, 70, 65]) for s in (0, 1)]
    main([*map(str, a), "--against", *map(str, b)])
    lo95, hi95 = _bounds(capsys.readouterr().out)
    main([*map(str, a), "--against", *map(str, b), "--level", "0.99"])
    out = capsys.readouterr().out
    lo99, hi99 = _bounds(out)
    assert "(99% CI)" in out and lo99 <= lo95 and hi99 >= hi95
    assert hi99 - lo99 > hi95 - lo95
    with pytest.raises(ValueError, match="level"):
        main([*map(str, a), "--against", *map(str, b), "--level", "95"])


def test_runs_on_different_recordings_are_refused(tmp_path):
    a = write_run(tmp_path, "a", 0, [90, 95, 92, 94])
    b = tmp_path / "b"
    b.mkdir()
    other = json.loads((a / "metrics.json").read_text())
    other["validation"]["scored"] = [100, 100, 100, 99]
    (b / "metrics.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="same recordings"):
        main([str(a), "--against", str(b)])
