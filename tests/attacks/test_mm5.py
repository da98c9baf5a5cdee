"""``mm5`` (the reference benchmark's Lp attack) and the side-by-side calibration of several fast
attacks against AutoAttack."""
from __future__ import annotations

import pytest
import torch

from benchmark.attacks import run_attack
from benchmark.attacks._lp import lp_norm
from benchmark.attacks.mm5 import mm, targeted_margin_loss
from benchmark.registry import ThreatSpec
from benchmark.run import calibrate
from helpers import frozen_mlp_and_correct_test_images


@pytest.fixture(scope="module")
def trained():
    return frozen_mlp_and_correct_test_images(100)


def robust(model, xa, y) -> torch.Tensor:
    with torch.no_grad():
        return model(xa).argmax(1) == y


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 1.0)])
def test_mm5_stays_in_the_ball_and_zero_budget_is_clean(trained, norm, eps):
    model, x, y = trained
    t = ThreatSpec(id="t", kind="lp", attack="mm5", norm=norm, eps=eps)
    xa = run_attack(model, x, y, t, seed=0)
    assert float(lp_norm(xa - x, norm).max()) <= eps * (1 + 1e-5) and xa.min() >= 0 and xa.max() <= 1
    assert robust(model, xa, y).float().mean() < robust(model, x, y).float().mean() - 0.3
    t0 = ThreatSpec(id="t0", kind="lp", attack="mm5", norm=norm, eps=0.0)
    assert torch.equal(run_attack(model, x, y, t0, seed=0), x)


def test_more_targets_only_add_successes(trained):
    """Targets run in order of the clean logits on the still-robust examples, from one seeded
    generator: the first k targets of mm5 are exactly a k-target run, so more never helps the model."""
    model, x, y = trained
    r = [robust(model, mm(model, x, y, eps=0.05, norm="Linf", steps=10, targets=k), y) for k in (1, 3, 5)]
    assert (r[1] <= r[0]).all() and (r[2] <= r[1]).all()
    assert r[2].sum() < r[0].sum()


def test_targeted_margin_loss():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    y, t = torch.tensor([0, 1]), torch.tensor([2, 0])
    assert torch.equal(targeted_margin_loss(logits, y, t), torch.tensor([-1.0, -5.0]))


def test_calibration_renders_extra_fast_attacks():
    rows = [calibrate.Row("m", "t", "Linf", 0.1, 100, 0.9, 0.31, 0.30, 1.0, 30.0, extra=(("mm5", 0.33, 0.5),)),
            calibrate.Row("m", "u", "L2", 1.0, 100, 0.9, 0.20, 0.20, 1.0, 30.0, extra=(("mm5", 0.20, 0.5),))]
    s = calibrate.summary(rows, "mm5")
    assert s["mean_gap"] == pytest.approx(1.5) and s["max_gap"] == pytest.approx(3.0)
    assert s["time_ratio"] == pytest.approx(1 / 60)
    assert calibrate.summary(rows)["mean_gap"] == pytest.approx(0.5)
    text = calibrate.render(rows, "shiftbench calibrate --fast apgd-mm,mm5")
    assert "| mm5 % | mm5 gap (pp) | mm5 s |" in text and "| 33.0 | +3.00 | 0.5 |" in text
    assert "**mm5**: mean gap +1.50 pp, max gap +3.00 pp" in text


def test_calibrate_model_runs_each_fast_attack_on_the_same_examples(trained):
    model, x, y = trained
    t = ThreatSpec(id="t", kind="lp", attack="apgd-mm", norm="Linf", eps=0.1)
    x, y = x[:20], y[:20]
    (row,) = calibrate.calibrate_model(model, "tiny", x, y, [t], fast=("mm5", "pgd"), fast_args={"steps": 10})
    assert row.fast_name == "mm5" and [e[0] for e in row.extra] == ["pgd"]
    ok = robust(model, x, y)
    direct = {a: robust(model, run_attack(model, x[ok], y[ok], t, seed=0, attack=a, **kw), y[ok]).sum().item() / 20
              for a, kw in (("mm5", {"steps": 10}), ("pgd", {}))}
    assert row.fast == pytest.approx(direct["mm5"]) and row.extra[0][1] == pytest.approx(direct["pgd"])
    assert row.clean == pytest.approx(ok.float().mean().item()) and row.aa <= row.clean
