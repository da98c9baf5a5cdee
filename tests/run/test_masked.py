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
from helpers import QuantisedSine

torch.set_num_threads(1)


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
    assert trust.binomial_sf(4, 64, trust.CHECK_RATE) < trust.ALPHA
    assert trust.binomial_sf(1, 64, trust.CHECK_RATE) > trust.ALPHA
    assert trust.binomial_sf(0, 64, 0.01) == 1.0


def test_masked_model_is_caught_and_escalated_on_dataset_shift_cells(monkeypatch):
    """The severities of a dataset shift share one deep-check sample (of still-robust examples,
    spread over the severities): the masked net is flagged there too, every severity's cell is
    escalated and stored at the best of all attacks, close to the honest net's number (with a
    fifth of Square's escalation queries: the test above runs the full budget)."""
    monkeypatch.setattr(trust, "ESCALATION_QUERIES", trust.ESCALATION_QUERIES // 5)
    from benchmark.run import plan
    from benchmark.run.evaluate import batch_outcomes

    reg = Registry(DEFAULT_REGISTRY)
    base = load_model(reg.model("cnn-standard"), reg)
    masked = QuantisedSine(base).eval()
    cells = plan.plan_suite(reg, "digits", models="cnn-standard", shifts="gaussian_noise", threats="digits-linf",
                            n_examples=16)
    (batch,) = plan.batches(cells)
    assert len(batch) == 5 and all(c.role == "dataset" for c in batch)
    plain = dict(batch_outcomes(batch, base))
    caught = dict(batch_outcomes(batch, masked))
    # robust against the gradient attack alone: clean-correct minus what it broke
    grad_only = sum(int(o.clean_correct.sum()) - len(o.broken_by.get("apgd-mm", [])) for o in caught.values())
    assert grad_only - sum(int(o.robust_correct.sum()) for o in plain.values()) > 0.3 * 80  # the masking is real
    sample = []
    for cell in batch:
        out = caught[cell]
        bb = out.checks["black_box"]
        assert bb["ok"] is False and bb["scope"] == "batch" and bb["n"] == trust.SHIFT_SAMPLE
        sample += bb["sample"]
        assert out.escalation is not None and "black_box" in out.escalation["reasons"], cell.describe()
        assert out.robust_correct.mean() <= plain[cell].robust_correct.mean() + 0.15, cell.describe()
    assert len(sample) == trust.SHIFT_SAMPLE and len(set(len(caught[c].checks["black_box"]["sample"])
                                                         for c in batch)) <= 2  # spread over the severities
    n = sum(len(o.robust_correct) for o in caught.values())
    print(f"gaussian_noise, 5 x 16 images: plain net {sum(o.robust_correct.sum() for o in plain.values()) / n:.3f}, "
          f"masked gradient attack {grad_only / n:.3f}, masked stored "
          f"{sum(o.robust_correct.sum() for o in caught.values()) / n:.3f}")
