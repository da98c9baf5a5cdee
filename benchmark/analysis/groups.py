"""What beats the trend: models grouped by a metadata field, each group's AER against the rest.

The reference benchmark's question: which techniques lie above the ID-vs-OOD trend (extra data,
pre-training, architecture, model size, training method)?  Models are grouped by fields of their
entry's ``meta`` (:data:`FIELDS`; several fields give their combinations).  Per group:

* the number of models and their mean ID and OOD robust accuracy;
* the **mean AER** (OOD robust minus the suite's trend, as on the leaderboard) with a 95%
  bootstrap interval: replicate ``b`` takes every model's AER against bootstrap line ``b`` (which
  resampled the test examples within cells and the models, :func:`trends.aer_replicates`) and
  averages it over a resample of the group's models, so the interval covers the examples, the
  line and which models the group happens to hold;
* the **group against the rest**: mean AER of the group minus that of the other models, with the
  same bootstrap (group and rest resampled separately), a two-sided bootstrap p-value and its
  Holm correction across the groups of one analysis; a group is called above / below the rest
  only when the corrected p is below 0.05;
* the **group's own trend** (least squares over its models alone, same scale and bootstrap) next
  to the suite's: a steeper line means the group gains more OOD robustness per point of ID
  robustness.

A group of one model has no model-resampling noise; its interval then reflects examples and the
line only.  Models without the field (no ``meta``) form the group ``unknown``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..registry import Registry, parse_eps
from . import trends
from .stats import holm

FIELDS = ("training_family", "extra_data", "arch", "size", "threat", "eps", "venue", "year")
TARGETS = {"OOD": ("ood_robust", "OOD robust"), "OOD-D": ("ood_d_robust", "OOD-D robust"),
           "OOD-T": ("ood_t_robust", "OOD-T robust")}
UNKNOWN = "unknown"
SIZE_BINS = ((1e4, "<10K"), (1e5, "10K-100K"), (1e6, "100K-1M"), (1e7, "1M-10M"), (1e8, "10M-100M"),
             (math.inf, ">=100M"))
ALPHA = 0.05  # a group is above / below the rest when its Holm-corrected p is below this
SEED_OFFSET = 22  # the group resamples draw from their own stream, never from the trend's


class GroupError(ValueError):
    """A bad --by field or target; the message lists the known ones."""


def parse_by(text: str) -> tuple[str, ...]:
    by = tuple(f.strip() for f in str(text).split(",") if f.strip())
    if not by:
        raise GroupError(f"--by needs a field; known: {', '.join(FIELDS)}")
    for f in by:
        if f not in FIELDS:
            import difflib

            close = difflib.get_close_matches(f, FIELDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise GroupError(f"unknown field {f!r}{hint}; known: {', '.join(FIELDS)}")
    if len(set(by)) != len(by):
        raise GroupError(f"--by names a field twice: {text!r}")
    return by


def size_bin(params: Any) -> str:
    if not isinstance(params, (int, float)) or isinstance(params, bool):
        return UNKNOWN
    return next(label for top, label in SIZE_BINS if params < top)


def field_value(meta: Mapping[str, Any], name: str) -> str:
    """The group label of one field of an entry's ``meta``."""
    if name == "size":
        return size_bin(meta.get("params"))
    v = meta.get(name)
    if v is None:
        if name == "eps" and meta.get("threat") == "none":
            return "none"
        return UNKNOWN
    if name == "eps":
        return f"{parse_eps(v, '<meta>', 'meta.eps'):.4g}"
    return str(v)


@dataclass(frozen=True)
class Group:
    key: str  # "pgd-at", or "pgd-at / cnn" for several fields
    models: tuple[str, ...]
    id_robust: float  # mean over the group's models
    target: float  # mean of the target (e.g. OOD robust)
    aer: float
    aer_ci: tuple[float, float]
    diff: float  # mean AER of the group minus that of the rest
    diff_ci: tuple[float, float]
    p: float
    p_holm: float
    trend: trends.Trend  # the group's own line

    @property
    def n(self) -> int:
        return len(self.models)

    @property
    def verdict(self) -> str:
        """``above`` / ``below`` the rest when the Holm-corrected p is below :data:`ALPHA` (so no
        more than one field's worth of false claims at 5% however many groups), else ``-``."""
        if not (math.isfinite(self.p_holm) and self.p_holm < ALPHA and math.isfinite(self.diff)):
            return "-"
        return "above" if self.diff > 0 else "below" if self.diff < 0 else "-"


@dataclass(frozen=True)
class GroupAnalysis:
    suite: str
    by: tuple[str, ...]
    target: str  # OOD | OOD-D | OOD-T
    scale: str
    trend: trends.Trend  # the suite's
    groups: tuple[Group, ...]  # by mean AER, highest first
    membership: Mapping[str, str] = field(default_factory=dict)  # model -> group key
    n_boot: int = trends.N_BOOT
    seed: int = trends.SEED

    def to_json(self) -> dict[str, Any]:
        def f(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        def line(t: trends.Trend) -> dict[str, Any]:
            return {"slope": f(t.line.slope), "slope_ci": [f(v) for v in t.slope_ci],
                    "intercept": f(t.line.intercept), "intercept_ci": [f(v) for v in t.intercept_ci],
                    "r2": f(t.line.r2), "n": t.line.n}

        return {"suite": self.suite, "by": list(self.by), "target": self.target, "scale": self.scale,
                "n_boot": self.n_boot, "seed": self.seed, "trend": line(self.trend),
                "groups": [{"group": g.key, "n_models": g.n, "models": list(g.models), "id_robust": f(g.id_robust),
                            "target": f(g.target), "aer": f(g.aer), "aer_ci": [f(v) for v in g.aer_ci],
                            "vs_rest": f(g.diff), "vs_rest_ci": [f(v) for v in g.diff_ci], "p": f(g.p),
                            "p_holm": f(g.p_holm), "verdict": g.verdict, "trend": line(g.trend)}
                           for g in self.groups]}


def _resampled_means(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row-wise means of ``a`` (replicates x models) over a resample of its columns per row."""
    n = a.shape[1]
    idx = rng.integers(0, n, size=a.shape)
    return np.take_along_axis(a, idx, axis=1).mean(axis=1)


def _ci(v: np.ndarray) -> tuple[float, float]:
    v = v[np.isfinite(v)]
    return (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v.size else (math.nan, math.nan)


def analyze(registry: Registry, models: Any, trend: trends.Trend, by: Sequence[str], *, target: str = "OOD",
            noise: Mapping[str, np.ndarray] | None = None, suite: str = "") -> GroupAnalysis:
    """Group the models of ``trend`` (fitted on the complete models' summary ``models``, a
    DataFrame indexed by model id) by the ``meta`` fields ``by``.

    ``noise`` is :func:`benchmark.analysis.aggregate.example_bootstrap` for ``models`` (columns in
    its order), the replicates the trend was fitted with; without it only models are resampled.
    """
    by = tuple(by)
    for f in by:
        if f not in FIELDS:
            raise GroupError(f"unknown field {f!r}; known: {', '.join(FIELDS)}")
    if target not in TARGETS:
        raise GroupError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    col = TARGETS[target][0]
    names = list(trend.models)
    order = list(models.index)
    cols = [order.index(m) for m in names]
    xb = yb = None
    if noise is not None and "id_robust" in noise and col in noise and names:
        xb, yb = noise["id_robust"][:, cols], noise[col][:, cols]
    reps = trends.aer_replicates(trend, xb, yb)
    membership = {}
    for m in names:
        spec = registry.entries["models"].get(m)
        meta = spec.meta if spec is not None and spec.meta else {}
        membership[m] = " / ".join(field_value(meta, f) for f in by)
    keys = sorted(set(membership.values()))
    raw: list[dict[str, Any]] = []
    for gi, key in enumerate(keys):
        idx = [i for i, m in enumerate(names) if membership[m] == key]
        rest = [i for i in range(len(names)) if membership[names[i]] != key]
        members = tuple(names[i] for i in idx)
        aer = float(np.mean(trend.aer[idx]))
        diff = float(np.mean(trend.aer[idx]) - np.mean(trend.aer[rest])) if rest else math.nan
        aer_ci = diff_ci = (math.nan, math.nan)
        p = math.nan
        if reps.shape[0]:
            g_b = _resampled_means(reps[:, idx], np.random.default_rng([trend.seed, SEED_OFFSET, gi, 0]))
            aer_ci = _ci(g_b)
            if rest:
                r_b = _resampled_means(reps[:, rest], np.random.default_rng([trend.seed, SEED_OFFSET, gi, 1]))
                d_b = g_b - r_b
                diff_ci = _ci(d_b)
                p = max(min(1.0, 2 * min(float((d_b <= 0).mean()), float((d_b >= 0).mean()))), 1.0 / d_b.size)
        gx = trend.x[idx]
        gy = trend.y[idx]
        gboot = {}
        if xb is not None and yb is not None:
            gboot = {"x_boot": xb[:, idx], "y_boot": yb[:, idx]}
        own = trends.fit_trend(f"group:{key}", members, gx, gy, n_boot=trend.n_boot, seed=trend.seed,
                               scale=trend.scale, clip_eps=trend.line.clip_eps, **gboot)
        raw.append(dict(key=key, models=members, id_robust=float(np.mean(gx)), target=float(np.mean(gy)), aer=aer,
                        aer_ci=aer_ci, diff=diff, diff_ci=diff_ci, p=p, trend=own))
    tested = [i for i, g in enumerate(raw) if math.isfinite(g["p"])]
    adjusted = holm([raw[i]["p"] for i in tested]) if tested else []
    p_holm = {i: a for i, a in zip(tested, adjusted)}
    groups = [Group(p_holm=p_holm.get(i, math.nan), **g) for i, g in enumerate(raw)]
    groups.sort(key=lambda g: (-g.aer if math.isfinite(g.aer) else math.inf, g.key))
    return GroupAnalysis(suite, by, target, trend.scale, trend, tuple(groups), membership, trend.n_boot, trend.seed)
