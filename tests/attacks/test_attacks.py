"""APGD / apgd-mm / AutoAttack adapter: invariants on a small model trained in the test."""
from __future__ import annotations

import pytest
import torch

import benchmark  # noqa: F401  (aliases pyautoattack as autoattack)
from benchmark.attacks import get_attack, run_attack
from benchmark.attacks._lp import lp_norm, project, project_l1, project_l1_box
from benchmark.attacks.apgd import _checkpoints, _schedule, apgd, minimum_margin, scaled_margin, targeted_dlr_loss
from benchmark.registry import ThreatSpec

torch.set_num_threads(1)
BUDGETS = {"Linf": 0.1, "L2": 1.0, "L1": 4.0}


def lp(eps: float, norm: str = "Linf", attack: str = "apgd-mm", **args) -> ThreatSpec:
    return ThreatSpec(id=f"test-{norm}-{eps}", kind="lp", attack=attack, eps=eps, norm=norm, attack_args=args)




def robust_acc(model, x_adv, y) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_projection_stays_in_ball_and_box(norm):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 16, 16, generator=g)
    far = x + 3 * torch.randn(16, 1, 16, 16, generator=g)
    eps = BUDGETS[norm]
    p = project(far, x, eps, norm)
    assert float(lp_norm(p - x, norm).max()) <= eps * (1 + 1e-5)
    assert p.min() >= 0 and p.max() <= 1
    inside = project(x + 0.5 * (p - x), x, eps, norm)  # a point inside the set is a fixed point
    assert torch.allclose(inside, x + 0.5 * (p - x), atol=1e-6)


def test_l1_projection_is_exact():
    """Duchi et al.: the projection lands on the sphere and is the closest point (vs random feasible points)."""
    g = torch.Generator().manual_seed(2)
    d = torch.randn(8, 50, generator=g)
    p = project_l1(d, 3.0)
    assert torch.allclose(p.abs().sum(1), torch.full((8,), 3.0), atol=1e-4)
    for _ in range(20):
        q = project_l1(p + 0.1 * torch.randn(8, 50, generator=g), 3.0)
        assert ((d - p).norm(dim=1) <= (d - q).norm(dim=1) + 1e-5).all()


def _l1_box_reference(d, lo, hi, eps):
    """Projection onto {||v||_1 <= eps, lo <= v <= hi}, in float64 by root finding on the threshold."""
    import numpy as np
    from scipy.optimize import brentq

    a, cap = np.abs(d), np.where(d >= 0, hi, -lo).clip(0)
    phi = lambda t: np.minimum(np.clip(a - t, 0, None), cap).sum() - eps
    t = 0.0 if phi(0.0) <= 0 else brentq(phi, 0.0, a.max(), xtol=1e-12)
    return np.sign(d) * np.minimum(np.clip(a - t, 0, None), cap)


def test_l1_box_projection_matches_reference():
    """The bisection projection onto the L1 ball intersected with the box equals a float64 root-finding
    reference, never exceeds the budget, and stays in the box (also where the box binds)."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(12, 64, generator=g)
    x[:4, :32] = 0.0  # pixels at the edge of the box: half the directions have no room
    d = 0.6 * torch.randn(12, 64, generator=g)
    for eps in (0.5, 3.0, 40.0):  # binding, binding, slack (only the box binds)
        p = project_l1_box(d, -x, 1 - x, eps)
        assert float(p.abs().sum(1).max()) <= eps * (1 + 1e-6)
        assert ((x + p) >= -1e-7).all() and ((x + p) <= 1 + 1e-7).all()
        for i in range(len(d)):
            ref = _l1_box_reference(d[i].double().numpy(), -x[i].double().numpy(), (1 - x[i]).double().numpy(), eps)
            assert torch.allclose(p[i].double(), torch.from_numpy(ref), atol=2e-5), (eps, i)
    # clipping after an L1-ball projection wastes budget the box cuts off; the joint projection does not
    ball_then_clip = (x + project_l1(d, 3.0)).clamp(0, 1) - x
    assert (project_l1_box(d, -x, 1 - x, 3.0).abs().sum(1) >= ball_then_clip.abs().sum(1) - 1e-5).all()


def test_target_schedule_by_rank():
    assert _schedule(20, 3) == [20, 20, 20]
    assert _schedule([12, 8, 5], 5) == [12, 8, 5, 5, 5]  # the last entry repeats
    assert _schedule([12, 8, 5], 2) == [12, 8]
    assert _schedule([], 4) == [] and _schedule([7], 0) == []


def test_scaled_margin_is_dlr_scaled_and_names_the_runner_up():
    z = torch.tensor([[4.0, 1.0, 3.0, 0.0], [0.0, 5.0, 1.0, 2.0]])
    m, t = scaled_margin(z, torch.tensor([0, 2]))
    assert t.tolist() == [2, 1]
    assert torch.allclose(m, torch.tensor([(4 - 3) / (4 - 1), (1 - 5) / (5 - 1)]))
    assert (m[1] < 0).item()  # misclassified: negative margin


def test_polish_only_adds_successes(trained):
    """The polish stage runs on examples still robust after the same seeded stages, so switching it
    on can only turn robust examples into fooled ones, never the reverse."""
    m, x, y = trained
    polished = 0
    for eps in (0.04, 0.06):
        kw = dict(eps=eps, norm="Linf", seed=0, steps=2, targets=1, target_steps=1)  # weak stages before
        a, s_off = minimum_margin(m, x, y, polish_steps=0, **kw)
        b, s_on = minimum_margin(m, x, y, polish_margin=float("inf"), polish_steps=20, **kw)
        with torch.no_grad():
            rob_off, rob_on = m(a).argmax(1) == y, m(b).argmax(1) == y
        assert not (rob_on & ~rob_off).any()
        assert s_off["fooled_polish"] == 0
        assert int((rob_off & ~rob_on).sum()) == s_on["fooled_polish"]
        polished += s_on["fooled_polish"]
    assert polished > 0  # the polish found something the short stages missed


def test_checkpoint_schedule():
    assert _checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_dlr_falls_back_to_margin_with_two_classes():
    z = torch.tensor([[2.0, -1.0]])
    assert torch.allclose(targeted_dlr_loss(z, torch.tensor([0]), torch.tensor([1])), torch.tensor([-3.0]))
    z3 = torch.tensor([[3.0, 1.0, 0.0]])  # 3 classes: denominator z_pi1 - z_pi3
    assert torch.allclose(targeted_dlr_loss(z3, torch.tensor([0]), torch.tensor([1])), torch.tensor([-2.0 / 3.0]))


@pytest.mark.parametrize("attack", ["apgd-ce", "apgd-mm", "pgd"])
def test_eps_zero_gives_clean(trained, attack):
    m, x, y = trained
    x_adv = run_attack(m, x, y, lp(0.0), seed=0, attack=attack)
    assert torch.equal(x_adv, x)
    assert robust_acc(m, x_adv, y) == 1.0  # x, y are clean-correct


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
@pytest.mark.parametrize("attack", ["apgd-ce", "apgd-mm"])
def test_in_budget_in_range_and_deterministic(trained, norm, attack):
    m, x, y = trained
    t = lp(BUDGETS[norm], norm)
    a = run_attack(m, x, y, t, seed=3, attack=attack, steps=20)
    b = run_attack(m, x, y, t, seed=3, attack=attack, steps=20)
    assert torch.equal(a, b)
    assert float(lp_norm(a - x, norm).max()) <= t.eps * (1 + 1e-4) + 1e-6
    assert a.min() >= 0 and a.max() <= 1
    assert robust_acc(m, a, y) < 1.0  # the attack does something on an undefended model


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_larger_budget_never_raises_robust_accuracy(trained, norm):
    m, x, y = trained
    accs = [robust_acc(m, run_attack(m, x, y, lp(f * BUDGETS[norm], norm), seed=0, steps=30), y)
            for f in (0.125, 0.25, 0.5, 1.0)]
    assert accs == sorted(accs, reverse=True), accs
    assert accs[0] > accs[-1]


def test_apgd_mm_at_least_as_strong_as_pgd20(trained):
    m, x, y = trained
    for eps in (0.03, 0.05):
        t = lp(eps)
        r_pgd = robust_acc(m, run_attack(m, x, y, t, seed=0, attack="pgd", steps=20), y)
        r_mm = robust_acc(m, run_attack(m, x, y, t, seed=0, attack="apgd-mm"), y)
        assert r_mm <= r_pgd, (eps, r_mm, r_pgd)


def test_apgd_reports_first_fooled_point(trained):
    m, x, y = trained
    adv, fooled, zero = apgd(m, x, y, eps=0.1, norm="Linf", steps=20)
    with torch.no_grad():
        wrong = m(adv).argmax(1) != y
    assert torch.equal(wrong, fooled)
    assert not zero.any()


def test_unknown_attack_suggests():
    with pytest.raises(KeyError, match="apgd-mm"):
        get_attack("apgd-m")


def test_autoattack_adapter(trained):
    from pyautoattack import checks

    m, x, y = trained
    checks.funcs["grad"] = 7  # stale count left by someone else's model
    x, y = x[:8], y[:8]
    t = lp(0.15, attack="autoattack")  # large enough that APGD-CE finishes the job: keeps the test fast
    x_adv = run_attack(m, x, y, t, seed=0, batch_size=8)
    assert x_adv.shape == x.shape
    assert float(lp_norm(x_adv - x, "Linf").max()) <= 0.15 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(v == 0 for v in checks.funcs.values()), checks.funcs
    r_aa = robust_acc(m, x_adv, y)
    r_pgd = robust_acc(m, run_attack(m, x, y, t, seed=0, attack="pgd", steps=20), y)
    assert r_aa <= r_pgd


def test_calibration_threats_and_summary():
    from benchmark.run import calibrate
    from benchmark.registry import Registry, default_registry_root

    reg = Registry(default_registry_root(), check_files=False)
    ts = calibrate.calibration_threats(reg, reg.suite("digits"))
    assert ts[0].id == reg.suite("digits").id_threat and len(ts) == 3
    assert all(t.kind == "lp" for t in ts) and len({(t.norm, t.eps) for t in ts}) == 3
    rows = [calibrate.Row("m", "t", "Linf", 0.1, 100, 0.9, 0.31, 0.30, 1.0, 30.0),
            calibrate.Row("m", "u", "L2", 1.0, 100, 0.9, 0.20, 0.20, 1.0, 30.0)]
    s = calibrate.summary(rows)
    assert s["mean_gap"] == pytest.approx(0.5) and s["max_gap"] == pytest.approx(1.0)
    assert s["time_ratio"] == pytest.approx(1 / 30)
    text = calibrate.render(rows, "shiftbench calibrate --suite digits")
    assert "NOT met" in text and text.count("\n| m |") == 2


def test_calibration_targets_ignore_float_noise():
    from benchmark.run import calibrate

    rows = [calibrate.Row("m", "t", "Linf", 0.1, 100, 0.95, 0.43, 0.42, 1.8, 69.2),
            *[calibrate.Row("m", "u", "Linf", 0.1, 100, 0.95, 0.13, 0.13, 1.5, 36.4)] * 4]
    assert calibrate.targets_met(calibrate.summary(rows))  # 0.43 - 0.42 is 1.0000000000000009 points
