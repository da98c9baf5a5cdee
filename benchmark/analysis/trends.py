"""Trends: does ID robustness predict OOD robustness?  Least squares across the models of a suite.

Following OODRobustBench, the fit is a straight line of OOD robust accuracy on ID robust
accuracy.  Three scales:

* ``raw``: ordinary least squares of y on x, accuracies as fractions in [0, 1];
* ``probit`` / ``logit``: ordinary least squares of ``F^-1(y)`` on ``F^-1(x)`` with F the normal /
  logistic CDF (the accuracy-on-the-line literature's scale).  Slope, intercept, R^2, Pearson r and
  the residual standard deviation are those of the transformed fit.  ``F^-1`` is infinite at 0 and
  1, so accuracies of exactly 0 or 1 are clipped to ``[eps, 1 - eps]`` (``CLIP_EPS``) and every
  fit lists the points it clipped.

A model's *adversarial effective robustness* (AER) is how far its actual OOD robust accuracy
lies above (+) or below (-) the line, in accuracy units whatever the scale (in probit scale:
``y - F(a + b F^-1(x))``).

Uncertainty comes from a seeded bootstrap: each replicate resamples the models (with
replacement) and refits.  When per-example bootstrap replicates of every model's x and y are
given (:func:`benchmark.analysis.aggregate.example_bootstrap`), replicate ``b`` also uses the
models' values recomputed on resampled test examples, so the intervals include each model's own
sampling noise, not only the scatter of the models.  Pure numpy (scipy for the normal CDF).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # only for annotations: trends itself needs numpy alone
    from .aggregate import Summary
    from ..registry import SuiteSpec

N_BOOT = 2000
SEED = 0
SCALES = ("raw", "probit", "logit")
CLIP_EPS = 1e-3  # probit/logit: accuracies of exactly 0 or 1 become eps / 1 - eps
AGGREGATES = ("OOD", "OOD-D", "OOD-T")


# --------------------------------------------------------------------------- scales
def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; use one of {', '.join(SCALES)}")


def clip(v: np.ndarray | float, scale: str, eps: float = CLIP_EPS) -> np.ndarray:
    """Accuracies as the transformed fit sees them: unchanged in raw scale, else in [eps, 1-eps]."""
    _check_scale(scale)
    v = np.asarray(v, dtype=float)
    return v if scale == "raw" else np.clip(v, eps, 1.0 - eps)


def transform(v: np.ndarray | float, scale: str, eps: float = CLIP_EPS) -> np.ndarray:
    """``F^-1(v)`` for the scale (identity in raw scale), after clipping to [eps, 1 - eps]."""
    v = clip(v, scale, eps)
    if scale == "raw":
        return v
    if scale == "logit":
        return np.log(v) - np.log1p(-v)
    from scipy.special import ndtri

    return ndtri(v)


def inverse(t: np.ndarray | float, scale: str) -> np.ndarray:
    """``F(t)``: back from the transformed scale to accuracies."""
    _check_scale(scale)
    t = np.asarray(t, dtype=float)
    if scale == "raw":
        return t
    if scale == "logit":
        return 1.0 / (1.0 + np.exp(-t))
    from scipy.special import ndtr

    return ndtr(t)


# --------------------------------------------------------------------------- fits
@dataclass(frozen=True)
class Line:
    """A least-squares fit ``F^-1(y) = intercept + slope * F^-1(x)`` (F the identity in raw scale).

    ``r2``, ``pearson_r`` and ``resid_sd`` (residual standard deviation, n - 2 degrees of freedom)
    are those of the fit in its own scale.
    """

    slope: float
    intercept: float
    r2: float
    n: int
    pearson_r: float = float("nan")
    resid_sd: float = float("nan")
    scale: str = "raw"
    clip_eps: float = CLIP_EPS

    def predict(self, x: np.ndarray | float) -> np.ndarray | float:
        """Predicted accuracy at accuracy ``x`` (both in [0, 1] units, whatever the scale)."""
        return inverse(self.intercept + self.slope * transform(x, self.scale, self.clip_eps), self.scale)


NAN_LINE = Line(float("nan"), float("nan"), float("nan"), 0)


def ols(x: Sequence[float], y: Sequence[float]) -> Line:
    """Least squares line through (x, y), no transformation.  Needs >= 2 points with distinct x.

    R^2 is 1 - SS_res / SS_tot (NaN when y is constant); Pearson r is NaN then too.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {x.shape} vs {y.shape}")
    n = int(x.size)
    if n < 2:
        return Line(float("nan"), float("nan"), float("nan"), n)
    dx = x - x.mean()
    dy = y - y.mean()
    sxx = float(dx @ dx)
    if sxx <= 0:
        return Line(float("nan"), float("nan"), float("nan"), n)
    slope = float(dx @ dy) / sxx
    intercept = float(y.mean() - slope * x.mean())
    resid = y - (intercept + slope * x)
    ss_tot = float(dy @ dy)
    ss_res = float(resid @ resid)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    r = float(dx @ dy) / math.sqrt(sxx * ss_tot) if ss_tot > 0 else float("nan")
    resid_sd = math.sqrt(ss_res / (n - 2)) if n > 2 else float("nan")
    return Line(slope, intercept, r2, n, r, resid_sd)


def fit_line(x: Sequence[float], y: Sequence[float], scale: str = "raw", eps: float = CLIP_EPS) -> Line:
    """OLS in the given scale: ``F^-1(y)`` on ``F^-1(x)`` (accuracies clipped to [eps, 1 - eps])."""
    line = ols(transform(x, scale, eps), transform(y, scale, eps))
    return dataclasses.replace(line, scale=scale, clip_eps=eps)


@dataclass(frozen=True)
class Trend:
    """A fitted line plus bootstrap intervals and each model's AER (same order as ``models``).

    ``boot_slopes``/``boot_intercepts`` are the bootstrap lines (in the fit's scale);
    ``clipped`` names the points moved to [eps, 1 - eps] as ``(model, "x"|"y", value)``;
    ``example_noise`` says whether the bootstrap also resampled test examples.
    """

    name: str
    line: Line
    slope_ci: tuple[float, float]
    models: tuple[str, ...]
    x: np.ndarray
    y: np.ndarray
    aer: np.ndarray
    aer_ci: np.ndarray  # shape (len(models), 2)
    n_boot: int = N_BOOT
    seed: int = SEED
    notes: tuple[str, ...] = field(default_factory=tuple)
    scale: str = "raw"
    intercept_ci: tuple[float, float] = (float("nan"), float("nan"))
    clipped: tuple[tuple[str, str, float], ...] = ()
    boot_slopes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    boot_intercepts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    example_noise: bool = False

    def aer_of(self, model: str) -> tuple[float, float, float]:
        """(AER, lo, hi) of a model, NaNs when the model is not in the fit."""
        if model not in self.models:
            return (float("nan"),) * 3
        i = self.models.index(model)
        return (float(self.aer[i]), float(self.aer_ci[i, 0]), float(self.aer_ci[i, 1]))

    def aer_significant(self, model: str) -> bool:
        """True when the model's AER interval excludes 0 (the only AERs shown as significant)."""
        _, lo, hi = self.aer_of(model)
        return bool(np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0))

    def predict_interval(self, x: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prediction, lo, hi) at accuracies ``x``: the line and the 2.5/97.5 percentiles of the
        bootstrap lines there (pointwise; NaN bounds when there is no bootstrap)."""
        xs = np.atleast_1d(np.asarray(x, dtype=float))
        pred = np.asarray(self.line.predict(xs), dtype=float)
        if self.boot_slopes.size == 0:
            nan = np.full(xs.shape, np.nan)
            return pred, nan, nan.copy()
        t = transform(xs, self.scale, self.line.clip_eps)
        preds = inverse(self.boot_intercepts[:, None] + self.boot_slopes[:, None] * t[None, :], self.scale)
        return pred, np.percentile(preds, 2.5, axis=0), np.percentile(preds, 97.5, axis=0)


def _ci(v: np.ndarray) -> tuple[float, float]:
    return (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v.size else (float("nan"),) * 2


def _bootstrap_lines(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Slopes and intercepts of ``n_boot`` resamples of the points (vectorised).

    ``x``/``y`` are 1-d (the same values in every replicate) or ``(n_boot, n)`` (replicate ``b``
    draws its points from row ``b``).  Resamples in which every x is equal (no line) are dropped.
    """
    n = x.shape[-1]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    if x.ndim == 1:
        xb, yb = x[idx], y[idx]
    else:
        xb, yb = np.take_along_axis(x, idx, axis=1), np.take_along_axis(y, idx, axis=1)
    dx = xb - xb.mean(axis=1, keepdims=True)
    sxx = (dx * dx).sum(axis=1)
    ok = sxx > 1e-15
    slope = (dx[ok] * (yb[ok] - yb[ok].mean(axis=1, keepdims=True))).sum(axis=1) / sxx[ok]
    intercept = yb[ok].mean(axis=1) - slope * xb[ok].mean(axis=1)
    return slope, intercept, ok


def fit_trend(name: str, models: Sequence[str], x: Sequence[float], y: Sequence[float], *,
              n_boot: int = N_BOOT, seed: int = SEED, scale: str = "raw", clip_eps: float = CLIP_EPS,
              x_boot: np.ndarray | None = None, y_boot: np.ndarray | None = None) -> Trend:
    """Fit ``y`` (OOD robust) on ``x`` (ID robust) across models in ``scale``, with bootstrap intervals.

    Models with a NaN in x or y are left out.  AER = y - predicted (accuracy units); its interval
    is the 2.5/97.5 percentiles over the bootstrap replicates of ``y_b - line_b(x_b)``, where
    ``(x_b, y_b)`` are the model's values in replicate ``b``: its own values, or, with ``x_boot``
    and ``y_boot`` (arrays ``(n_boot, len(models))`` of per-example bootstrap values), the
    resampled ones, so the interval includes the model's sampling noise.
    """
    _check_scale(scale)
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if not (len(models) == x.size == y.size):
        raise ValueError(f"trend {name!r}: {len(models)} models, {x.size} x values, {y.size} y values")
    noise = x_boot is not None and y_boot is not None
    if noise:
        x_boot, y_boot = np.asarray(x_boot, dtype=float), np.asarray(y_boot, dtype=float)
        if x_boot.shape != (n_boot, x.size) or y_boot.shape != (n_boot, x.size):
            raise ValueError(f"trend {name!r}: bootstrap values of shape {x_boot.shape}/{y_boot.shape}, "
                             f"expected {(n_boot, x.size)}")
    keep = np.isfinite(x) & np.isfinite(y)
    names = tuple(m for m, k in zip(models, keep) if k)
    x, y = x[keep], y[keep]
    clipped: list[tuple[str, str, float]] = []
    if scale != "raw":
        for axis, vals in (("x", x), ("y", y)):
            clipped += [(m, axis, float(v)) for m, v in zip(names, vals) if v < clip_eps or v > 1 - clip_eps]
    common = dict(n_boot=n_boot, seed=seed, scale=scale, clipped=tuple(sorted(clipped)), example_noise=noise)
    line = fit_line(x, y, scale, clip_eps)
    nan2 = (float("nan"), float("nan"))
    if not np.isfinite(line.slope):
        note = f"{x.size} model(s) with distinct ID robust accuracy needed >= 2"
        return Trend(name, line, nan2, names, x, y, np.full(x.size, np.nan), np.full((x.size, 2), np.nan),
                     notes=(note,), **common)
    aer = y - line.predict(x)
    if noise:
        xs, ys = x_boot[:, keep], y_boot[:, keep]
    else:
        xs, ys = x, y
    tx, ty = transform(xs, scale, clip_eps), transform(ys, scale, clip_eps)
    slopes, intercepts, ok = _bootstrap_lines(tx, ty, n_boot, seed)
    if slopes.size == 0:
        return Trend(name, line, nan2, names, x, y, aer, np.full((x.size, 2), np.nan), **common)
    if noise:  # replicate b: each model's own resampled values against line b
        pred = inverse(intercepts[:, None] + slopes[:, None] * tx[ok], scale)
        aer_b = ys[ok] - pred
    else:
        aer_b = y[None, :] - inverse(intercepts[:, None] + slopes[:, None] * tx[None, :], scale)
    aer_ci = np.stack([np.percentile(aer_b, 2.5, axis=0), np.percentile(aer_b, 97.5, axis=0)], axis=1)
    return Trend(name, line, _ci(slopes), names, x, y, aer, aer_ci, intercept_ci=_ci(intercepts),
                 boot_slopes=slopes, boot_intercepts=intercepts, **common)


def aer_replicates(trend: Trend, x_boot: np.ndarray | None = None, y_boot: np.ndarray | None = None) -> np.ndarray:
    """The bootstrap replicates behind ``trend``'s AER intervals, ``(replicates, len(trend.models))``.

    Replays :func:`fit_trend`'s bootstrap (same seed, same model draws): replicate ``b`` is each
    model's value against line ``b``; with ``x_boot``/``y_boot`` (the per-example replicates the
    trend was fitted with, columns in ``trend.models`` order) each model's own resampled values.
    Empty when the trend has no line.
    """
    n = len(trend.models)
    if not np.isfinite(trend.line.slope) or n == 0:
        return np.zeros((0, n))
    eps, scale = trend.line.clip_eps, trend.scale
    if x_boot is not None and y_boot is not None:
        xs, ys = np.asarray(x_boot, dtype=float), np.asarray(y_boot, dtype=float)
    else:
        xs, ys = trend.x, trend.y
    tx, ty = transform(xs, scale, eps), transform(ys, scale, eps)
    slopes, intercepts, ok = _bootstrap_lines(tx, ty, trend.n_boot, trend.seed)
    if tx.ndim == 2:
        return ys[ok] - inverse(intercepts[:, None] + slopes[:, None] * tx[ok], scale)
    return trend.y[None, :] - inverse(intercepts[:, None] + slopes[:, None] * tx[None, :], scale)


@dataclass(frozen=True)
class Ceiling:
    """What a trend predicts at 100% ID robust accuracy and at the best model's ID robustness."""

    trend: str
    scale: str
    at_full: tuple[float, float, float]  # (prediction, lo, hi) at x = 1 (1 - eps in probit/logit)
    best_model: str
    best_x: float
    at_best: tuple[float, float, float]


def ceiling(trend: Trend) -> Ceiling | None:
    """The trend's ceiling, or None when there is no line."""
    if not np.isfinite(trend.line.slope) or not trend.models:
        return None
    i = int(np.argmax(trend.x))
    xs = np.array([1.0, float(trend.x[i])])
    pred, lo, hi = trend.predict_interval(xs)
    return Ceiling(trend.name, trend.scale, (float(pred[0]), float(lo[0]), float(hi[0])), trend.models[i],
                   float(trend.x[i]), (float(pred[1]), float(lo[1]), float(hi[1])))


# --------------------------------------------------------------------------- a suite
def family_means(summary: Summary, families: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """family -> model -> mean robust accuracy over the family's dataset shifts (each a mean over
    its severities); NaN for a model that lacks one of the family's shifts."""
    ps = summary.per_shift
    d = ps[ps["kind"] == "dataset"]
    lookup = {(r.model, r.shift): float(r.robust) for r in d.itertuples()}
    out: dict[str, dict[str, float]] = {}
    for fam in sorted(set(families.values())):
        members = [s for s, f in families.items() if f == fam]
        out[fam] = {m: float(np.mean([lookup.get((m, s), np.nan) for s in members])) for m in summary.models.index}
    return out


def fit_summary(summary: Summary, suite: SuiteSpec, *, n_boot: int = N_BOOT, seed: int = SEED,
                scale: str = "raw", noise: Mapping[str, np.ndarray] | None = None,
                families: Mapping[str, str] | None = None) -> dict[str, Trend]:
    """Every trend of a suite, keyed by target name, in a stable order.

    ``summary`` is a :class:`benchmark.analysis.aggregate.Summary`; ``suite`` its SuiteSpec.  Targets:
    ``OOD``, ``OOD-D``, ``OOD-T`` (aggregates), then ``family:<name>`` per shift family when
    ``families`` (dataset shift id -> family) is given, then each dataset shift and each threat
    shift.  The predictor is always the model's ID robust accuracy.  ``noise`` (from
    :func:`benchmark.analysis.aggregate.example_bootstrap`, same ``n_boot``) makes the aggregates'
    intervals include per-example noise; the other targets resample models only.
    """
    models = summary.models
    names = tuple(models.index) if len(models) else ()
    x = models["id_robust"].to_numpy(dtype=float) if len(models) else np.zeros(0)
    out: dict[str, Trend] = {}
    for name, col in (("OOD", "ood_robust"), ("OOD-D", "ood_d_robust"), ("OOD-T", "ood_t_robust")):
        y = models[col].to_numpy(dtype=float) if len(models) else np.zeros(0)
        boot = {}
        if noise is not None and len(models) and col in noise and "id_robust" in noise:
            boot = {"x_boot": noise["id_robust"], "y_boot": noise[col]}
        out[name] = fit_trend(name, names, x, y, n_boot=n_boot, seed=seed, scale=scale, **boot)
    if families:
        for fam, vals in family_means(summary, families).items():
            key = f"family:{fam}"
            out[key] = fit_trend(key, names, x, np.array([vals[m] for m in names]), n_boot=n_boot, seed=seed,
                                 scale=scale)
    ps = summary.per_shift
    for kind, shifts in (("dataset", suite.dataset_shifts), ("threat", suite.threat_shifts)):
        for s in shifts:
            sel = ps[(ps["kind"] == kind) & (ps["shift"] == s)].set_index("model")["robust"]
            y = np.array([float(sel.get(m, np.nan)) for m in names])
            key = s if s not in out else f"{kind}:{s}"  # a threat shift named like a dataset shift
            out[key] = fit_trend(key, names, x, y, n_boot=n_boot, seed=seed, scale=scale)
    return out
