"""Trust checks act on what they find: a digits CNN behind a quantiser plus a small high-frequency
sine term (gradients are non-zero but useless, so the gradient attack's number is a gross
overestimate) must never be stored at its gradient-attack number: the black-box check flags the
cell, the evaluator escalates to Square at AutoAttack's standard budget on every still-robust
example and stores the best of all attacks, with the flag kept and the escalation recorded."""
from __future__ import annotations

import numpy as np
import torch

import benchmark  # noqa: F401
from benchmark.data import datasets
from benchmark.models.load import load_model
from benchmark.registry import DEFAULT_REGISTRY, Registry
from benchmark.run import trust
from benchmark.run.evaluate import attack_outcome

torch.set_num_threads(1)


class QuantisedSine(torch.nn.Module):
    """``base(round(x * levels) / levels + amp * sin(freq * x))``: the rounding has zero gradient,
    the sine term a non-zero one that points nowhere useful at the scale of the budget."""

    def __init__(self, base: torch.nn.Module, levels: int = 8, amp: float = 0.02, freq: float = 500.0):
        super().__init__()
        self.base, self.levels, self.amp, self.freq = base, levels, amp, freq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.round(x * self.levels) / self.levels
        return self.base(q + self.amp * torch.sin(self.freq * x))


def test_masked_model_is_escalated_and_stored_at_best_of_attacks():
    reg = Registry(DEFAULT_REGISTRY)
    base = load_model(reg.model("cnn-standard"), reg)
    masked = QuantisedSine(base).eval()
    x, y = datasets.load_id("digits", "test")
    x, y = x[:96], y[:96]
    threat = reg.threat("digits-linf")

    plain = attack_outcome(base, x, y, threat, seed=0)  # the same net, honest gradients
    grad_only = attack_outcome(masked, x, y, threat, seed=0, checks=False)
    out = attack_outcome(masked, x, y, threat, seed=0)
    r_plain, r_grad, r_out = (float(o.robust_correct.mean()) for o in (plain, grad_only, out))
    # the masking is real: the gradient attack's number is far above the honest one
    assert r_grad - r_plain > 0.3, (r_grad, r_plain)
    # flagged, flag kept, escalated, and the stored number is the best of all attacks
    assert out.checks["black_box"]["ok"] is False
    assert out.escalation is not None and "black_box" in out.escalation["reasons"]
    assert out.escalation["queries"] == trust.ESCALATION_QUERIES
    assert r_out <= r_plain + 0.1, (r_out, r_plain, r_grad)
    assert set(out.broken_by) >= {"apgd-mm", "square-escalation"}
    broken = sorted(i for v in out.broken_by.values() for i in v)
    assert broken == sorted(np.flatnonzero(out.clean_correct & ~out.robust_correct).tolist())  # each once
    assert len(set(broken)) == len(broken)
    print(f"robust accuracy: plain net {r_plain:.3f}, masked gradient attack {r_grad:.3f}, "
          f"masked stored {r_out:.3f}")


def test_examples_a_check_breaks_are_counted_as_broken():
    """settle() counts examples broken by a check's attack and says which attack broke them."""
    reg = Registry(DEFAULT_REGISTRY)
    model = load_model(reg.model("cnn-standard"), reg)
    x, y = datasets.load_id("digits", "test")
    x, y = x[:8], y[:8]
    threat = reg.threat("digits-linf")
    cc = np.ones(8, bool)
    rc = np.ones(8, bool)
    rc[0] = False
    checks = {"budget_monotone": {"ok": True, "broken": [2]}, "black_box": {"ok": True, "broken": [2, 5]}}
    robust, broken_by, esc = trust.settle(model, x, y, threat, cc, rc, checks, attack="apgd-mm", seed=0)
    assert broken_by["apgd-mm"] == [0] and broken_by["eps/2-rerun"] == [2] and broken_by["square-check"] == [5]
    assert robust.tolist() == [False, True, False, True, True, False, True, True]


def test_black_box_flags_on_examples_only_square_broke():
    """The one-sided test counts the examples only Square broke, whatever the marginal accuracies:
    4 of 64 is significant at 1%, 1 of 64 is not."""
    assert trust.binomial_sf(4, 64, trust.SQUARE_ONLY_RATE) < trust.ALPHA
    assert trust.binomial_sf(1, 64, trust.SQUARE_ONLY_RATE) > trust.ALPHA
    assert trust.binomial_sf(0, 64, 0.01) == 1.0
