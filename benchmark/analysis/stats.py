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

Cells of the lean protocol (:mod:`benchmark.run.design`) say which test images they hold
(``images``): each shift holds its own share.  Their outcomes are paired by image, and the
images fall into strata, those held by the same set of cells (under the reference design one
stratum, every image in every cell; under the lean one each shift's share): the interval is that
of a stratified sample (:func:`_pooled`), so a shift's mean over its own share gets the wider
interval its fewer images give, and OOD-D, a mean over disjoint shares, the narrower one its
distinct images give.

AER intervals need each model's sampling noise as well as the scatter of the models:
:func:`bootstrap_weighted_means` resamples test examples (the same draw for every cell of a
size and every model, since they evaluate the same images; lean cells: images within their
strata), and the trend fit resamples models on top of it.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

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


def _groups(arrays: Sequence[np.ndarray], images: Sequence[np.ndarray | None] | None) -> dict[Any, list[int]]:
    """Cells paired with each other: ``("n", size)`` for cells without ``images`` (paired by example
    index, as the reference design's cells of one size are), ``("images",)`` for cells with them
    (paired by test image)."""
    out: dict[Any, list[int]] = {}
    for i, a in enumerate(arrays):
        key = ("n", a.size) if images is None or images[i] is None else ("images",)
        out.setdefault(key, []).append(i)
    return out


def _pooled(arrays: Sequence[np.ndarray], w: np.ndarray, images: Sequence[np.ndarray],
            members: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per test image, its share of the weighted mean (``w_c * outcome / n_c`` summed over the cells
    that hold it), and its stratum: images held by the same set of cells; images no cell holds
    are left out."""
    size = 1 + max(int(np.max(images[i])) for i in members)
    z = np.zeros(size)
    held = np.zeros((len(members), size), dtype=bool)
    for j, i in enumerate(members):
        idx = np.asarray(images[i], dtype=int)
        if idx.size != arrays[i].size:
            raise ValueError(f"cell {i}: {arrays[i].size} outcomes but {idx.size} image indices")
        z[idx] += w[i] * arrays[i] / arrays[i].size
        held[j, idx] = True
    seen = held.any(axis=0)
    _, strata = np.unique(held[:, seen].T, axis=0, return_inverse=True)
    return z[seen], strata.reshape(-1)


def _stratified_se(z: np.ndarray, strata: np.ndarray) -> float:
    """Standard error of ``z.sum()`` over a stratified sample of images: sum over strata of
    m * var(z) (sample variance), which is the paired per-example formula for one stratum."""
    var = 0.0
    for s in np.unique(strata):
        zs = z[strata == s]
        if zs.size > 1:
            var += zs.size * float(zs.var(ddof=1))
    return math.sqrt(var)


def weighted_mean_interval(outcomes: Sequence[np.ndarray], weights: Sequence[float],
                           z: float = Z95, *, images: Sequence[np.ndarray | None] | None = None,
                           ) -> tuple[float, float, float]:
    """Weighted mean of per-cell accuracies with a normal-approximation interval.

    ``outcomes`` are the per-example 0/1 outcomes of each cell, ``weights`` sum to 1.  One
    model's cells share their test images, so their outcomes are strongly correlated: treating
    them as independent would give intervals several times too narrow.  Cells of equal size are
    paired by example index (the standard error of the per-example weighted sum); groups of
    different sizes are combined as if perfectly correlated (their standard errors add), a
    conservative bound since sd(A + B) <= sd(A) + sd(B).  ``images`` (per cell, or None): the
    test images a lean cell holds; such cells are paired by image, stratified by the set of cells
    that hold an image (:func:`_pooled`), and their standard error is added to the others'.
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
    for key, members in sorted(_groups(arrays, images).items()):
        if key[0] == "images":
            se += _stratified_se(*_pooled(arrays, w, images, members))
        elif key[1] > 1:
            per_example = w[members] @ np.vstack([arrays[i] for i in members])  # paired by index
            se += float(per_example.std(ddof=1) / math.sqrt(key[1]))
    return (value, max(0.0, value - z * se), min(1.0, value + z * se))


def bootstrap_weighted_means(parts: Sequence[tuple], *, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of weighted means of per-example outcomes, resampling examples.

    ``parts[j]`` is ``(outcomes, weights)`` as for :func:`weighted_mean_interval`, or
    ``(outcomes, weights, images)`` with lean cells' test images.  Replicate ``b`` draws, for
    each cell size ``n``, one vector of ``n`` example indices with replacement (generator seeded
    by ``(seed, n)``) and uses it for every cell of that size in every part: cells of one size
    are paired by example index.  Lean cells are paired by test image: one draw per replicate
    resamples the images within each stratum (images held by the same shares of the design,
    found over every part) and serves every part.  Returns ``(n_boot, len(parts))``; a part with
    nothing to average is NaN throughout.
    """
    parts = [(p[0], p[1], p[2] if len(p) > 2 else None) for p in parts]
    sizes = sorted({np.asarray(o).size for outs, _, ims in parts for i, o in enumerate(outs)
                    if ims is None or ims[i] is None} - {0})
    draws = {n: np.random.default_rng([seed, n]).integers(0, n, size=(n_boot, n)) for n in sizes}
    counts, strata = _image_draws([im for _, _, ims in parts if ims is not None for im in ims if im is not None],
                                  n_boot, seed)
    out = np.full((n_boot, len(parts)), np.nan)
    for j, (outs, weights, images) in enumerate(parts):
        if len(outs) != len(weights):
            raise ValueError(f"part {j}: {len(outs)} outcome vectors but {len(weights)} weights")
        arrays = [np.asarray(o, dtype=float) for o in outs]
        if not arrays or any(a.size == 0 for a in arrays):
            continue
        w = np.asarray(weights, dtype=float)
        total = np.zeros(n_boot)
        for key, members in sorted(_groups(arrays, images).items()):
            if key[0] == "images":
                share = np.zeros(counts.shape[1])
                for i in members:  # each image's share of the mean (as _pooled), over every image index
                    share[np.asarray(images[i], dtype=int)] += w[i] * arrays[i] / arrays[i].size
                total += counts @ share
                continue
            per_example = w[members] @ np.vstack([arrays[i] for i in members])  # weighted sum per example
            total += per_example[draws[key[1]]].mean(axis=1)
        out[:, j] = total
    return out


def _image_draws(images: Sequence[np.ndarray], n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n_boot, size)`` multiplicities of each test image in each replicate (resampled within
    its stratum: the images held by the same distinct image sets), and the strata."""
    if not images:
        return np.zeros((n_boot, 0)), np.zeros(0, dtype=int)
    distinct = {np.asarray(im, dtype=int).tobytes(): np.asarray(im, dtype=int) for im in images}
    size = 1 + max(int(im.max()) for im in distinct.values() if im.size)
    held = np.zeros((len(distinct), size), dtype=bool)
    for j, im in enumerate(distinct.values()):
        held[j, im] = True
    _, strata = np.unique(held.T, axis=0, return_inverse=True)
    strata = strata.reshape(-1)
    rng = np.random.default_rng([seed, 1, size])  # apart from the per-size draws, seeded (seed, n)
    counts = np.zeros((n_boot, size), dtype=np.float32)
    rows = np.arange(n_boot)[:, None]
    for s in np.unique(strata):
        members = np.flatnonzero((strata == s) & held.any(axis=0))
        if members.size:
            np.add.at(counts, (rows, members[rng.integers(0, members.size, size=(n_boot, members.size))]), 1)
    return counts, strata


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
