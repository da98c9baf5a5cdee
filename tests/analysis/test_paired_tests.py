"""Exact paired tests: McNemar on discordant pairs against scipy's binomial test, Holm's step-down."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from benchmark.analysis.stats import binom_tail, discordant, holm, mcnemar_exact


@pytest.mark.parametrize("worse,better", [(0, 0), (1, 0), (6, 0), (4, 2), (10, 3), (3, 10), (40, 25), (300, 260)])
def test_mcnemar_matches_the_exact_binomial_test(worse, better):
    n = worse + better
    if n == 0:
        assert mcnemar_exact(worse, better) == 1.0
        return
    assert mcnemar_exact(worse, better, "greater") == pytest.approx(
        binomtest(worse, n, 0.5, alternative="greater").pvalue, rel=1e-9)
    assert mcnemar_exact(worse, better) == pytest.approx(binomtest(worse, n, 0.5).pvalue, rel=1e-9)


def test_binomial_tail_is_exact_for_large_n():
    assert binom_tail(0, 5000) == 1.0 and binom_tail(5001, 5000) == 0.0
    assert binom_tail(2600, 5000) == pytest.approx(binomtest(2600, 5000, 0.5, alternative="greater").pvalue, rel=1e-9)


def test_discordant_pairs_and_length_check():
    before = np.array([1, 1, 0, 0, 1], bool)
    after = np.array([0, 1, 1, 0, 0], bool)
    assert discordant(before, after) == (2, 1)
    with pytest.raises(ValueError, match="equal lengths"):
        discordant(before, after[:3])


def test_holm_step_down():
    # hand-computed: sorted 0.01, 0.03, 0.04, 0.5 -> x4, x3 (max with previous), x2, x1
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.9, 0.8, 0.01]) == pytest.approx([1.0, 1.0, 0.03])  # monotone, capped at 1
    assert holm([]) == []
