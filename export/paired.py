"""Paired comparisons of two models scored on the same recordings: the difference of their
pooled accuracies with a 95% bootstrap CI that resamples recordings (paired: the same draw for
both) and, for each model, its seeds. A comparison is a win only when the CI's lower bound is
above zero (or above the bar a target sets)."""

import numpy as np

BOOTSTRAP = 4000


def paired_difference(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    scored: np.ndarray,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """A minus B in percentage points, and the bounds of its `level` CI. correct_* [seeds,
    recordings] (each model its own seeds), scored [recordings]: steps scored per recording."""
    if not 0 < level < 1:
        raise ValueError(f"the CI's level must be between 0 and 1, got {level:g}")
    correct_a, correct_b = np.asarray(correct_a, float), np.asarray(correct_b, float)
    scored = np.asarray(scored, float)
    if correct_a.shape[1] != scored.shape[0] or correct_b.shape[1] != scored.shape[0]:
        raise ValueError("both models must be scored on the same recordings")
    rng = np.random.default_rng(seed)
    n = scored.shape[0]
    diffs = np.empty(BOOTSTRAP)
    for i in range(BOOTSTRAP):
        rec = rng.integers(0, n, n)
        sa = rng.integers(0, len(correct_a), len(correct_a))
        sb = rng.integers(0, len(correct_b), len(correct_b))
        total = scored[rec].sum()
        acc_a = correct_a[np.ix_(sa, rec)].sum() / (len(sa) * total)
        acc_b = correct_b[np.ix_(sb, rec)].sum() / (len(sb) * total)
        diffs[i] = acc_a - acc_b
    point = correct_a.sum() / (len(correct_a) * scored.sum())
    point -= correct_b.sum() / (len(correct_b) * scored.sum())
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(diffs, [tail, 100 - tail])
    return 100 * float(point), 100 * float(lo), 100 * float(hi)


def verdict(lo: float, hi: float, bar: float = 0.0) -> str:
    """ "met" only when the CI's lower bound clears the bar; otherwise why not."""
    if lo > bar:
        return "met"
    if lo > 0:
        return "not met (better, but not by the bar)"
    if hi < 0:
        return "not met (worse)"
    return "not met (not distinguishable)"
