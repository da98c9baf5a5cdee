"""Trust checks: they pass on an honest evaluation and fail where they should (masked gradients,
non-monotone attacks, out-of-budget points), and the default evaluation of a masked model is
close to AutoAttack, not to plain PGD."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import benchmark  # noqa: F401
from benchmark.data import datasets
from benchmark.run import trust
from benchmark.attacks import ATTACKS, register, run_attack
from benchmark.run.evaluate import attack_outcome
from benchmark.registry import ThreatSpec
from helpers import train_tiny_mlp

torch.set_num_threads(1)


class QuantisedInput(torch.nn.Module):
    """Gradient masking by input quantisation: round() has zero gradient everywhere."""

    def __init__(self, base: torch.nn.Module, levels: int = 4):
        super().__init__()
        self.base, self.levels = base, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(torch.round(x * self.levels) / self.levels)


def lp(eps: float, attack: str = "apgd-mm", norm: str = "Linf") -> ThreatSpec:
    return ThreatSpec(id=f"test-{attack}-{eps}", kind="lp", attack=attack, eps=eps, norm=norm)


@pytest.fixture(scope="module")
def model_and_data():
    m = train_tiny_mlp(epochs=6, hidden=64, depth=2, lr=2e-3, batch=64)
    x, y = datasets.load_id("digits", "test")
    return m.eval(), x[:48], y[:48]


def test_flag_threshold_and_power_of_the_paired_test():
    """The deep checks flag when their attack breaks significantly more than 1% of the examples
    they re-attack: 1 of up to 5, 2 of 6 to 35, 3 of 36 to 64; a larger sample has more power."""
    assert [trust.flags_at(m) for m in (1, 5, 6, 8, 16, 32, 35, 36, 64)] == [1, 1, 2, 2, 2, 2, 2, 3, 3]
    for m in (8, 16, 32, 64):
        k = trust.flags_at(m)
        assert trust.binomial_sf(k, m, trust.CHECK_RATE) < trust.ALPHA <= trust.binomial_sf(k - 1, m, trust.CHECK_RATE)
    assert trust.power(16, 0.2) == pytest.approx(1 - 0.8 ** 16 - 16 * 0.2 * 0.8 ** 15)
    assert trust.power(8, 0.2) < trust.power(16, 0.2) < trust.power(32, 0.2)
    assert trust.power(16, 0.1) < trust.power(16, 0.3)


def test_deep_sample_draws_still_robust_examples_spread_over_the_cells():
    robust = np.zeros(60, bool)
    robust[[1, 2, 3, 4, 5, 6, 7, 8, 21, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49]] = True
    bounds = [(0, 20), (20, 40), (40, 60)]
    idx = trust.deep_sample(robust, 9, seed=3, bounds=bounds)
    assert len(idx) == 9 and robust[idx].all() and list(idx) == sorted(set(idx))
    per_cell = [int(((idx >= a) & (idx < b)).sum()) for a, b in bounds]
    assert per_cell == [4, 1, 4]  # the middle cell has one candidate: its share goes to the others
    assert np.array_equal(idx, trust.deep_sample(robust, 9, seed=3, bounds=bounds))  # seeded
    assert not np.array_equal(idx, trust.deep_sample(robust, 9, seed=4, bounds=bounds))
    assert len(trust.deep_sample(robust, 100, seed=3, bounds=bounds)) == robust.sum()  # all, when fewer
    assert len(trust.deep_sample(np.zeros(10, bool), 5, seed=0)) == 0


def test_deep_checks_re_attack_only_examples_the_attack_left_robust(model_and_data):
    """An example the cell's attack broke cannot be broken again: neither the eps/2 re-attack nor
    Square spends queries on it, and a batch with nothing robust re-attacks nothing."""
    seen: list[list[int]] = []
    name = "test-records-what-it-attacks"
    if name not in ATTACKS:
        @register(name)
        def _recording(model, x, y, threat, *, seed=0, index=None):
            seen.append([int(i) for i in index])
            return run_attack(model, x, y, threat, seed=seed, attack="apgd-ce", index=index)

    m, x, y = model_and_data
    t = lp(0.08, name)
    out = attack_outcome(m, x, y, t, seed=0, checks=False)
    robust = out.clean_correct & out.robust_correct
    assert 4 < robust.sum() < out.clean_correct.sum()
    seen.clear()
    deep = trust.deep_checks(m, x, y, t, out.clean_correct, out.robust_correct, seed=0, attack=name, sample=4)
    assert len(seen) == 1 and len(seen[0]) == 4 and robust[seen[0]].all()  # the eps/2 re-attack
    for check in ("budget_monotone", "black_box"):
        assert deep[check]["sample"] == seen[0] and deep[check]["n"] == 4
        assert deep[check]["of_robust"] == robust.sum()
    seen.clear()
    none = trust.deep_checks(m, x, y, t, out.clean_correct, np.zeros(len(x), bool), seed=0, attack=name)
    assert seen == [] and all(c["ok"] and c["n"] == 0 and c["note"] for c in none.values())


def test_honest_evaluation_passes_all_checks(model_and_data):
    m, x, y = model_and_data
    t = lp(0.05, "apgd-mm")
    out = attack_outcome(m, x, y, t, seed=0)
    assert out.robust_correct.sum() <= out.clean_correct.sum()
    ch = trust.cell_checks(m, x, y, _adv_of(m, x, y, t, out), t, out.clean_correct, out.robust_correct,
                           deep=True, seed=0)
    assert {"budget_monotone", "black_box", "gradients", "in_budget"} <= set(ch)
    failed = [k for k, v in ch.items() if not v["ok"]]
    assert failed == [], ch


def _adv_of(m, x, y, t, out) -> torch.Tensor:
    """x_adv for the clean-correct examples (as the evaluator builds it)."""
    x_adv = x.clone()
    idx = torch.from_numpy(np.flatnonzero(out.clean_correct))
    x_adv[idx] = run_attack(m, x[idx], y[idx], t, seed=0)
    return x_adv


def test_out_of_budget_fails(model_and_data):
    m, x, y = model_and_data
    t = lp(0.05)
    cc = np.ones(len(x), bool)
    ch = trust.cell_checks(m, x, y, (x + 0.2).clamp(0, 1), t, cc, cc)
    assert not ch["in_budget"]["ok"]


def test_non_monotone_attack_is_flagged(model_and_data):
    """An attack that gives up at the full budget but works at eps/2 must fail budget monotonicity."""
    name = "test-gives-up-at-large-eps"
    if name not in ATTACKS:
        @register(name)
        def _lazy(model, x, y, threat, *, seed=0):
            return x.clone() if threat.eps > 0.15 else run_attack(model, x, y, threat, seed=seed, attack="apgd-ce")

    m, x, y = model_and_data
    t = lp(0.2, name)
    out = attack_outcome(m, x, y, t, seed=0, checks=False)
    ch = trust.cell_checks(m, x, y, x, t, out.clean_correct, out.robust_correct, deep=True, attack=name)
    bm = ch["budget_monotone"]
    assert not bm["ok"], bm
    assert bm["broken_at_half_eps"] >= bm["flags_at"] and len(bm["broken"]) == bm["broken_at_half_eps"]
    assert set(bm["broken"]) <= set(bm["sample"]) and out.robust_correct[bm["sample"]].all()


def test_masked_gradients_are_flagged_and_default_evaluation_matches_autoattack(model_and_data):
    base, x, y = model_and_data
    x, y = x[:32], y[:32]  # AutoAttack on a masked model is slow (nothing gets fooled early)
    m = QuantisedInput(base).eval()
    eps = 0.1
    # plain PGD: gradients are zero, so it reports (almost) clean accuracy and only the trust checks can tell
    t_pgd = lp(eps, "pgd")
    pgd_out = attack_outcome(m, x, y, t_pgd, seed=0, checks=False)
    pgd_adv = _adv_of(m, x, y, t_pgd, pgd_out)
    ch = trust.cell_checks(m, x, y, pgd_adv, t_pgd, pgd_out.clean_correct, pgd_out.robust_correct,
                           deep=True, attack="pgd")
    assert not ch["gradients"]["ok"] and ch["gradients"]["zero_frac"] > 0.9
    assert not ch["black_box"]["ok"], ch["black_box"]
    assert ch["black_box"]["robust_acc_estimate"] < pgd_out.robust_correct.mean() - 0.2

    # the default attack: flagged too, and its number is close to AutoAttack's, not PGD's
    t_mm = lp(eps, "apgd-mm")
    mm_out = attack_outcome(m, x, y, t_mm, seed=0)
    assert not mm_out.checks["gradients"]["ok"]
    aa_out = attack_outcome(m, x, y, lp(eps, "autoattack"), seed=0, checks=False)
    r_pgd, r_mm, r_aa = (o.robust_correct.mean() for o in (pgd_out, mm_out, aa_out))
    assert r_pgd - r_aa > 0.3, (r_pgd, r_aa)  # the masking is real
    assert abs(r_mm - r_aa) <= 0.1, (r_mm, r_aa, r_pgd)  # within 3 of 32 examples; PGD is ~20 away
