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


# --------------------------------------------------------------------------- scales, clipping, ceiling
from scipy.special import ndtr  # noqa: E402

from benchmark.analysis import trends  # noqa: E402
from benchmark.analysis.stats import bootstrap_weighted_means  # noqa: E402

# raw golden: X4/Y4 divided by 10 (fractions)
RAW_X = [0.0, 0.1, 0.2, 0.3]
RAW_Y = [0.1, 0.3, 0.2, 0.5]
# probit golden: points whose probits are (-1, -1.5), (0, 0), (1, -0.5), (2, 1)
PROBIT_TX = np.array([-1.0, 0.0, 1.0, 2.0])
PROBIT_TY = np.array([-1.5, 0.0, -0.5, 1.0])


def test_raw_fit_golden():
    # Sxx 0.05, Sxy 0.055, Syy 0.0875 -> slope 1.1, intercept 0.275 - 1.1 * 0.15 = 0.11;
    # residuals -0.01, 0.08, -0.13, 0.06 -> SSres 0.027; r = 0.055 / sqrt(0.05 * 0.0875)
    t = trends.fit_trend("g", list("abcd"), RAW_X, RAW_Y, n_boot=200)
    line = t.line
    assert (line.slope, line.intercept) == pytest.approx((1.1, 0.11))
    assert line.r2 == pytest.approx(1 - 0.027 / 0.0875)
    assert line.pearson_r == pytest.approx(0.055 / math.sqrt(0.05 * 0.0875))
    assert line.resid_sd == pytest.approx(math.sqrt(0.027 / 2))
    assert t.scale == "raw" and t.clipped == () and line.n == 4
    lo, hi = t.intercept_ci
    assert lo <= line.intercept <= hi


def test_probit_fit_golden():
    # in probit space: mean x 0.5, Sxx 5, mean y -0.25, Sxy 3.5 -> slope 0.7, intercept -0.6;
    # residuals -0.2, 0.6, -0.6, 0.2 -> SSres 0.8, SStot 3.25
    x, y = ndtr(PROBIT_TX), ndtr(PROBIT_TY)
    t = trends.fit_trend("g", list("abcd"), x, y, scale="probit", n_boot=200)
    line = t.line
    assert (line.slope, line.intercept) == pytest.approx((0.7, -0.6))
    assert line.r2 == pytest.approx(1 - 0.8 / 3.25)
    assert line.pearson_r == pytest.approx(3.5 / math.sqrt(5 * 3.25))
    assert line.resid_sd == pytest.approx(math.sqrt(0.4))
    assert t.scale == "probit" and t.clipped == ()
    # AER is in accuracy units: y - Phi(-0.6 + 0.7 * Phi^-1(x))
    assert t.aer_of("b")[0] == pytest.approx(0.5 - ndtr(-0.6))
    # the raw fit of the same points differs
    assert trends.fit_trend("g", list("abcd"), x, y, n_boot=10).line.slope != pytest.approx(0.7)


def test_logit_roundtrip_and_unknown_scale():
    v = np.array([0.01, 0.2, 0.5, 0.9])
    assert trends.inverse(trends.transform(v, "logit"), "logit") == pytest.approx(v)
    assert trends.transform(0.5, "logit") == pytest.approx(0.0)
    assert trends.transform(np.log(3) / (1 + np.log(3)), "raw") == pytest.approx(np.log(3) / (1 + np.log(3)))
    with pytest.raises(ValueError, match="unknown scale 'probits'"):
        trends.fit_trend("g", list("abc"), [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], scale="probits")


def test_clipping_is_stated_and_equals_the_clipped_values():
    x = [0.2, 0.4, 0.6, 1.0]
    y = [0.0, 0.1, 0.3, 0.5]
    t = trends.fit_trend("g", list("abcd"), x, y, scale="probit", clip_eps=0.01, n_boot=100)
    assert t.clipped == (("a", "y", 0.0), ("d", "x", 1.0))
    same = trends.fit_trend("g", list("abcd"), [0.2, 0.4, 0.6, 0.99], [0.01, 0.1, 0.3, 0.5], scale="probit",
                            clip_eps=0.01, n_boot=100)
    assert (t.line.slope, t.line.intercept, t.line.r2) == pytest.approx(
        (same.line.slope, same.line.intercept, same.line.r2))
    assert same.clipped == ()
    # raw scale never clips
    assert trends.fit_trend("g", list("abcd"), x, y, n_boot=10).clipped == ()


def test_ceiling_on_an_exact_line():
    x = np.array([0.1, 0.3, 0.5, 0.7])
    t = trends.fit_trend("OOD", list("abcd"), x, 0.1 + 0.4 * x, n_boot=100)
    c = trends.ceiling(t)
    assert c.at_full == pytest.approx((0.5, 0.5, 0.5))  # an exact line: every bootstrap line is the same
    assert c.best_model == "d" and c.best_x == pytest.approx(0.7) and c.at_best[0] == pytest.approx(0.38)
    assert trends.ceiling(trends.fit_trend("x", ["a"], [0.3], [0.2])) is None


def test_example_noise_widens_aer_intervals_and_is_seeded():
    rng = np.random.default_rng(3)
    n_models, n_ex, n_boot = 8, 200, 400
    p = np.linspace(0.1, 0.7, n_models)
    id_bits = [rng.random(n_ex) < q for q in p]
    ood_bits = [rng.random(n_ex) < q * 0.6 for q in p]
    x = np.array([b.mean() for b in id_bits])
    y = np.array([b.mean() for b in ood_bits])
    boot = bootstrap_weighted_means([([b], [1.0]) for b in id_bits] + [([b], [1.0]) for b in ood_bits],
                                    n_boot=n_boot, seed=0)
    models = [f"m{i}" for i in range(n_models)]
    plain = trends.fit_trend("OOD", models, x, y, n_boot=n_boot)
    noisy = trends.fit_trend("OOD", models, x, y, n_boot=n_boot, x_boot=boot[:, :n_models],
                             y_boot=boot[:, n_models:])
    assert noisy.example_noise and not plain.example_noise
    assert np.array_equal(noisy.aer, plain.aer)  # the point estimates do not change
    width = lambda t: t.aer_ci[:, 1] - t.aer_ci[:, 0]  # noqa: E731
    assert (width(noisy) > width(plain)).mean() >= 0.75 and width(noisy).mean() > 1.5 * width(plain).mean()
    again = trends.fit_trend("OOD", models, x, y, n_boot=n_boot, x_boot=boot[:, :n_models],
                             y_boot=boot[:, n_models:])
    assert np.array_equal(again.aer_ci, noisy.aer_ci)
    sig = [m for m in models if noisy.aer_significant(m)]
    for m in sig:
        _, lo, hi = noisy.aer_of(m)
        assert lo > 0 or hi < 0
    with pytest.raises(ValueError, match="bootstrap values of shape"):
        trends.fit_trend("OOD", models, x, y, n_boot=10, x_boot=boot[:, :n_models], y_boot=boot[:, n_models:])


def test_bootstrap_weighted_means_pairs_cells_of_a_size():
    a = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1], bool)
    c = np.array([1, 1, 0, 1], bool)
    out = bootstrap_weighted_means([([a], [1.0]), ([a, a], [0.5, 0.5]), ([np.ones(4, bool)], [1.0]),
                                    ([a, c], [0.5, 0.5]), ([], [])], n_boot=500, seed=1)
    assert out.shape == (500, 5)
    assert np.array_equal(out[:, 0], out[:, 1])  # the same examples drawn for every cell of a size
    assert (out[:, 2] == 1.0).all()
    assert out[:, 0].std() > 0 and abs(out[:, 0].mean() - a.mean()) < 0.03
    assert np.isnan(out[:, 4]).all()
    # groups of different sizes draw independently; the mean is the weighted mean of the cells
    assert abs(out[:, 3].mean() - (a.mean() + c.mean()) / 2) < 0.03
    assert np.array_equal(out, bootstrap_weighted_means([([a], [1.0]), ([a, a], [0.5, 0.5]),
                                                         ([np.ones(4, bool)], [1.0]), ([a, c], [0.5, 0.5]),
                                                         ([], [])], n_boot=500, seed=1), equal_nan=True)
