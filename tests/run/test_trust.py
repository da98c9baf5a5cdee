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


def test_tolerance_formula():
    assert trust.tolerance(64) == pytest.approx(0.02 + 1.645 * (0.02 * 0.98 / 64) ** 0.5)
    assert trust.tolerance(10_000) < trust.tolerance(64) < trust.tolerance(16)


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
    assert not ch["budget_monotone"]["ok"], ch["budget_monotone"]
    assert ch["budget_monotone"]["robust_acc_half_eps"] < ch["budget_monotone"]["robust_acc_eps"]


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
