"""Statistics: confidence intervals on accuracies, exact paired tests (McNemar, Holm).

Two kinds of interval are used on the leaderboard:

* one cell (e.g. ID clean accuracy): the Wilson score interval of k correct out of n, which
  behaves well near 0 and 1 where the normal approximation does not;
* a weighted mean over cells (e.g. OOD-D robust = mean over shifts of the mean over
  severities): a normal approximation over examples.  When every cell has the same n, the
  per-example outcomes are paired by example index (the cells of a suite evaluate the same
  subset of indices), so the standard error is that of the per-example weighted mean of the
  bits; this accounts for the strong correlation between cells of one model.  With unequal n,
  cells are treated as independent binomials.

AER intervals need each model's sampling noise as well as the scatter of the models:
:func:`bootstrap_weighted_means` resamples test examples (the same draw for every cell of a
size and every model, since they evaluate the same images), and the trend fit resamples models
on top of it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (95% by default)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def weighted_mean_interval(outcomes: Sequence[np.ndarray], weights: Sequence[float],
                           z: float = Z95) -> tuple[float, float, float]:
    """Weighted mean of per-cell accuracies with a normal-approximation interval.

    ``outcomes`` are the per-example 0/1 outcomes of each cell, ``weights`` sum to 1.  One
    model's cells share their test images, so their outcomes are strongly correlated: treating
    them as independent would give intervals several times too narrow.  Cells of equal size are
    paired by example index (the standard error of the per-example weighted sum); groups of
    different sizes are combined as if perfectly correlated (their standard errors add), a
    conservative bound since sd(A + B) <= sd(A) + sd(B).
    Returns (mean, lo, hi), clipped to [0, 1]; NaNs when there is nothing to average.
    """
    if len(outcomes) != len(weights):
        raise ValueError(f"{len(outcomes)} outcome vectors but {len(weights)} weights")
    if not outcomes:
        return (float("nan"), float("nan"), float("nan"))
    w = np.asarray(weights, dtype=float)
    arrays = [np.asarray(o, dtype=float) for o in outcomes]
    if any(a.size == 0 for a in arrays):
        return (float("nan"), float("nan"), float("nan"))
    means = np.array([a.mean() for a in arrays])
    value = float(w @ means)
    se = 0.0
    for size in sorted({a.size for a in arrays}):
        members = [i for i, a in enumerate(arrays) if a.size == size]
        if size > 1:
            per_example = w[members] @ np.vstack([arrays[i] for i in members])  # paired by index
            se += float(per_example.std(ddof=1) / math.sqrt(size))
    return (value, max(0.0, value - z * se), min(1.0, value + z * se))


def bootstrap_weighted_means(parts: Sequence[tuple[Sequence[np.ndarray], Sequence[float]]], *, n_boot: int,
                             seed: int) -> np.ndarray:
    """Bootstrap replicates of weighted means of per-example outcomes, resampling examples.

    ``parts[j]`` is ``(outcomes, weights)`` as for :func:`weighted_mean_interval`.  Replicate ``b``
    draws, for each cell size ``n``, one vector of ``n`` example indices with replacement
    (generator seeded by ``(seed, n)``) and uses it for every cell of that size in every part:
    cells of one size are paired by example index.  Returns ``(n_boot, len(parts))``; a part
    with nothing to average is NaN throughout.
    """
    sizes = sorted({np.asarray(o).size for outs, _ in parts for o in outs} - {0})
    draws = {n: np.random.default_rng([seed, n]).integers(0, n, size=(n_boot, n)) for n in sizes}
    out = np.full((n_boot, len(parts)), np.nan)
    for j, (outs, weights) in enumerate(parts):
        if len(outs) != len(weights):
            raise ValueError(f"part {j}: {len(outs)} outcome vectors but {len(weights)} weights")
        arrays = [np.asarray(o, dtype=float) for o in outs]
        if not arrays or any(a.size == 0 for a in arrays):
            continue
        w = np.asarray(weights, dtype=float)
        total = np.zeros(n_boot)
        for n in sorted({a.size for a in arrays}):
            members = [i for i, a in enumerate(arrays) if a.size == n]
            per_example = w[members] @ np.vstack([arrays[i] for i in members])  # weighted sum per example
            total += per_example[draws[n]].mean(axis=1)
        out[:, j] = total
    return out


# --------------------------------------------------------------------------- paired tests
def binom_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic, no normal approximation)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / (1 << n)  # exact integers, one rounding


def mcnemar_exact(worse: int, better: int, alternative: str = "two-sided") -> float:
    """Exact McNemar test on the discordant pairs of two paired 0/1 outcome vectors.

    ``worse``: pairs correct before and wrong now; ``better``: wrong before and correct now.
    Under the null (no change) each discordant pair is equally likely to go either way, so the
    count ``worse`` is Binomial(worse + better, 1/2).  ``alternative``: ``"greater"`` tests
    "more got worse than better" (one-sided), ``"two-sided"`` any systematic direction.
    Returns the p-value (1.0 without discordant pairs).
    """
    n = worse + better
    if n == 0:
        return 1.0
    if alternative == "greater":
        return binom_tail(worse, n)
    if alternative != "two-sided":
        raise ValueError(f"alternative must be 'greater' or 'two-sided', got {alternative!r}")
    return min(1.0, 2.0 * binom_tail(max(worse, better), n))


def discordant(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    """(correct before and wrong after, wrong before and correct after) of paired 0/1 outcomes."""
    a, b = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need equal lengths, got {a.size} and {b.size}")
    return int((a & ~b).sum()), int((~a & b).sum())


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in input order.
    Rejecting where the adjusted p < alpha controls the family-wise error rate at alpha."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
