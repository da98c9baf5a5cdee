"""Trends: does ID robustness predict OOD robustness?  OLS across the models of a suite.

Following OODRobustBench, the fit is a straight line of OOD robust accuracy on ID robust
accuracy (raw scale, fractions in [0, 1]).  A model's *adversarial effective robustness*
(AER) is how far its actual OOD robust accuracy lies above (+) or below (-) the line.
Uncertainty comes from a bootstrap over models (a fixed seed, so the leaderboard is
reproducible byte for byte).  Pure numpy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # only for annotations: trends itself needs numpy alone
    from .aggregate import Summary
    from ..registry import SuiteSpec

N_BOOT = 2000
SEED = 0


@dataclass(frozen=True)
class Line:
    """An OLS fit y = intercept + slope * x."""

    slope: float
    intercept: float
    r2: float
    n: int

    def predict(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.intercept + self.slope * np.asarray(x, dtype=float)


@dataclass(frozen=True)
class Trend:
    """A fitted line plus bootstrap intervals and each model's AER (same order as ``models``)."""

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

    def aer_of(self, model: str) -> tuple[float, float, float]:
        """(AER, lo, hi) of a model, NaNs when the model is not in the fit."""
        if model not in self.models:
            return (float("nan"),) * 3
        i = self.models.index(model)
        return (float(self.aer[i]), float(self.aer_ci[i, 0]), float(self.aer_ci[i, 1]))


NAN_LINE = Line(float("nan"), float("nan"), float("nan"), 0)


def ols(x: Sequence[float], y: Sequence[float]) -> Line:
    """Least squares line through (x, y).  Needs >= 2 points with distinct x, else NaNs.

    R^2 is 1 - SS_res / SS_tot (NaN when y is constant).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {x.shape} vs {y.shape}")
    n = int(x.size)
    if n < 2:
        return Line(float("nan"), float("nan"), float("nan"), n)
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if sxx <= 0:
        return Line(float("nan"), float("nan"), float("nan"), n)
    slope = float(dx @ (y - y.mean())) / sxx
    intercept = float(y.mean() - slope * x.mean())
    resid = y - (intercept + slope * x)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else float("nan")
    return Line(slope, intercept, r2, n)


def _bootstrap_lines(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Slopes and intercepts of ``n_boot`` resamples of the points (vectorised).

    Resamples in which every x is equal (no line) are dropped.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    xb, yb = x[idx], y[idx]
    dx = xb - xb.mean(axis=1, keepdims=True)
    sxx = (dx * dx).sum(axis=1)
    ok = sxx > 1e-15
    slope = (dx[ok] * (yb[ok] - yb[ok].mean(axis=1, keepdims=True))).sum(axis=1) / sxx[ok]
    intercept = yb[ok].mean(axis=1) - slope * xb[ok].mean(axis=1)
    return slope, intercept


def fit_trend(name: str, models: Sequence[str], x: Sequence[float], y: Sequence[float], *,
              n_boot: int = N_BOOT, seed: int = SEED) -> Trend:
    """OLS of ``y`` (OOD robust) on ``x`` (ID robust) across models, with bootstrap intervals.

    Models with a NaN in x or y are left out.  AER = y - fitted; its interval is the 2.5/97.5
    percentiles of y_m - (a_b + b_b * x_m) over the bootstrap lines (a_b, b_b).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if not (len(models) == x.size == y.size):
        raise ValueError(f"trend {name!r}: {len(models)} models, {x.size} x values, {y.size} y values")
    keep = np.isfinite(x) & np.isfinite(y)
    names = tuple(m for m, k in zip(models, keep) if k)
    x, y = x[keep], y[keep]
    line = ols(x, y)
    nan2 = (float("nan"), float("nan"))
    if not np.isfinite(line.slope):
        note = f"{x.size} model(s) with distinct ID robust accuracy needed >= 2"
        return Trend(name, line, nan2, names, x, y, np.full(x.size, np.nan), np.full((x.size, 2), np.nan),
                     n_boot, seed, (note,))
    aer = y - line.predict(x)
    slopes, intercepts = _bootstrap_lines(x, y, n_boot, seed)
    if slopes.size == 0:
        return Trend(name, line, nan2, names, x, y, aer, np.full((x.size, 2), np.nan), n_boot, seed)
    slope_ci = (float(np.percentile(slopes, 2.5)), float(np.percentile(slopes, 97.5)))
    aer_b = y[None, :] - (intercepts[:, None] + slopes[:, None] * x[None, :])
    aer_ci = np.stack([np.percentile(aer_b, 2.5, axis=0), np.percentile(aer_b, 97.5, axis=0)], axis=1)
    return Trend(name, line, slope_ci, names, x, y, aer, aer_ci, n_boot, seed)


def fit_summary(summary: Summary, suite: SuiteSpec, *, n_boot: int = N_BOOT, seed: int = SEED) -> dict[str, Trend]:
    """Every trend of a suite, keyed by target name, in a stable order.

    ``summary`` is a :class:`benchmark.analysis.aggregate.Summary`; ``suite`` its SuiteSpec.  Targets:
    ``OOD``, ``OOD-D``, ``OOD-T`` (aggregates), then each dataset shift and each threat shift.
    The predictor is always the model's ID robust accuracy.
    """
    models = summary.models
    names = tuple(models.index) if len(models) else ()
    x = models["id_robust"].to_numpy(dtype=float) if len(models) else np.zeros(0)
    out: dict[str, Trend] = {}
    for name, col in (("OOD", "ood_robust"), ("OOD-D", "ood_d_robust"), ("OOD-T", "ood_t_robust")):
        y = models[col].to_numpy(dtype=float) if len(models) else np.zeros(0)
        out[name] = fit_trend(name, names, x, y, n_boot=n_boot, seed=seed)
    ps = summary.per_shift
    for kind, shifts in (("dataset", suite.dataset_shifts), ("threat", suite.threat_shifts)):
        for s in shifts:
            sel = ps[(ps["kind"] == kind) & (ps["shift"] == s)].set_index("model")["robust"]
            y = np.array([float(sel.get(m, np.nan)) for m in names])
            key = s if s not in out else f"{kind}:{s}"  # a threat shift named like a dataset shift
            out[key] = fit_trend(key, names, x, y, n_boot=n_boot, seed=seed)
    return out
