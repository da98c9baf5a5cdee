"""Trend fits, AER and the intervals of benchmark.analysis.stats, against hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from benchmark.analysis.stats import weighted_mean_interval, wilson
from benchmark.analysis.trends import fit_trend, ols

X4 = [0.0, 1.0, 2.0, 3.0]
Y4 = [1.0, 3.0, 2.0, 5.0]


def test_ols_hand_computed():
    # mean x 1.5, mean y 2.75, Sxx 5, Sxy 5.5 -> slope 1.1, intercept 1.1;
    # residuals -0.1, 0.8, -1.3, 0.6 -> SSres 2.7, SStot 8.75 -> R^2 = 1 - 2.7/8.75
    line = ols(X4, Y4)
    assert line.slope == pytest.approx(1.1)
    assert line.intercept == pytest.approx(1.1)
    assert line.r2 == pytest.approx(1 - 2.7 / 8.75)
    assert line.n == 4


def test_ols_exact_line_and_scipy_agree():
    line = ols([0.1, 0.3, 0.5], [0.05, 0.25, 0.45])
    assert (line.slope, line.intercept, line.r2) == pytest.approx((1.0, -0.05, 1.0))
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, 12)
    y = 0.6 * x + 0.1 + rng.normal(0, 0.05, 12)
    ref = sps.linregress(x, y)
    got = ols(x, y)
    assert (got.slope, got.intercept, got.r2) == pytest.approx((ref.slope, ref.intercept, ref.rvalue ** 2))


def test_ols_degenerate_gives_nan():
    assert math.isnan(ols([0.5], [0.2]).slope)
    assert math.isnan(ols([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]).slope)
    with pytest.raises(ValueError, match="shape"):
        ols([1, 2], [1, 2, 3])


def test_aer_sign_and_sum():
    t = fit_trend("OOD", ["a", "b", "c", "d"], X4, Y4, n_boot=500)
    # model b (y=3 at x=1, fitted 2.2) lies above the line, c (y=2, fitted 3.3) below
    assert t.aer_of("b")[0] == pytest.approx(0.8)
    assert t.aer_of("c")[0] == pytest.approx(-1.3)
    assert float(t.aer.sum()) == pytest.approx(0.0, abs=1e-12)  # OLS residuals sum to zero
    assert all(math.isnan(v) for v in t.aer_of("unknown"))


def test_bootstrap_intervals_contain_point_estimates_and_are_reproducible():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 0.7, 15)
    y = 0.5 * x + 0.05 + rng.normal(0, 0.03, 15)
    models = [f"m{i}" for i in range(15)]
    t = fit_trend("OOD", models, x, y)
    lo, hi = t.slope_ci
    assert lo <= t.line.slope <= hi
    assert lo > 0  # a clear positive trend: the interval excludes 0
    assert np.all(t.aer_ci[:, 0] <= t.aer + 1e-12) and np.all(t.aer + 1e-12 >= t.aer_ci[:, 0])
    assert np.all(t.aer <= t.aer_ci[:, 1] + 1e-12)
    again = fit_trend("OOD", models, x, y)
    assert again.slope_ci == t.slope_ci and np.array_equal(again.aer_ci, t.aer_ci)
    other_seed = fit_trend("OOD", models, x, y, seed=1)
    assert other_seed.slope_ci != t.slope_ci


def test_nan_models_are_left_out():
    t = fit_trend("OOD-T", ["a", "b", "c", "d"], [0.1, 0.2, float("nan"), 0.4], [0.1, 0.3, 0.2, float("nan")])
    assert t.models == ("a", "b") and t.line.n == 2
    assert t.line.slope == pytest.approx(2.0)
    single = fit_trend("x", ["a"], [0.3], [0.2])
    assert math.isnan(single.line.slope) and single.notes


def test_wilson_known_values():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(1 - hi) and lo == pytest.approx(0.2366, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_weighted_mean_interval_paired_and_independent():
    a = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1, 1], bool)
    b = np.array([1, 0, 0, 1, 0, 1, 0, 0, 1, 1], bool)
    v, lo, hi = weighted_mean_interval([a, b], [0.5, 0.5])
    assert v == pytest.approx((a.mean() + b.mean()) / 2)
    s = (a.astype(float) + b) / 2
    half = 1.959963984540054 * s.std(ddof=1) / math.sqrt(10)
    assert (lo, hi) == pytest.approx((v - half, v + half))
    # unequal sizes: paired within a size, the groups' standard errors add (conservative)
    c4 = np.array([1, 0, 1, 1], bool)
    v2, lo2, hi2 = weighted_mean_interval([a, b, c4], [0.25, 0.25, 0.5])
    assert v2 == pytest.approx(0.25 * a.mean() + 0.25 * b.mean() + 0.5 * c4.mean())
    se_ab = ((a * 0.25 + b * 0.25).std(ddof=1)) / math.sqrt(10)
    se_c = (c4 * 0.5).std(ddof=1) / math.sqrt(4)
    half2 = 1.959963984540054 * (se_ab + se_c)
    assert (lo2, hi2) == pytest.approx((max(0.0, v2 - half2), min(1.0, v2 + half2)))
    assert v2 + half2 > 1.0 and hi2 == 1.0, "the interval is clipped to [0, 1]"
    # many correlated cells of mixed sizes are no tighter than one of them alone
    rng = np.random.default_rng(0)
    base = rng.random(600) < 0.6
    cells = [base.copy() for _ in range(20)] + [base[:200].copy() for _ in range(40)]
    _, lo4, hi4 = weighted_mean_interval(cells, [1 / 60] * 60)
    _, lo6, hi6 = weighted_mean_interval([base], [1.0])
    _, lo5, hi5 = weighted_mean_interval([base[:200]], [1.0])
    # copies of the same outcomes are not independent evidence: the interval stays as wide as
    # the weighted mix of the single cells' intervals
    assert hi4 - lo4 == pytest.approx((hi6 - lo6) / 3 + 2 * (hi5 - lo5) / 3, rel=1e-6)
    # one cell: the plain mean and an interval inside [0, 1]
    c = np.ones(5, bool)
    v3, lo3, hi3 = weighted_mean_interval([c], [1.0])
    assert v3 == 1.0 and lo3 == hi3 == 1.0
    assert all(math.isnan(x) for x in weighted_mean_interval([], []))
