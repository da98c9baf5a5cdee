"""Non-Lp threat attacks (rotation-translation, spatial flow, colour, JPEG) and the digits threat entries.

A tiny MLP is trained on the real digits for about a second; every attack runs through the
registry path (`run_attack` with a ThreatSpec).  Invariants: same shape, in [0, 1], inside the
budget, zero budget gives clean accuracy, more budget never raises robust accuracy, seeded.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmark.data import datasets
from benchmark.attacks import get_attack, run_attack
from benchmark.attacks.color import adjust, color_attack_fn
from benchmark.attacks.jpeg import from_coeffs, jpeg_linf, to_coeffs
from benchmark.attacks.spatial import flow_magnitude, spatial_flow, warp
from benchmark.attacks.transforms import candidates, rotate_translate, rotation_translation
from benchmark.registry import DEFAULT_REGISTRY, FrozenMap, Registry, ThreatSpec
from helpers import frozen_mlp_and_correct_test_images

N_TEST = 120


@pytest.fixture(scope="module")
def setup():
    """A small MLP trained on the digits train split, and clean-correct test examples."""
    return frozen_mlp_and_correct_test_images(N_TEST)


def threat(kind: str, attack: str, **params) -> ThreatSpec:
    return ThreatSpec(id=f"test-{attack}", kind=kind, attack=attack, params=FrozenMap(params))


def robust_acc(model, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


# threat, a zero budget, and budgets in increasing order
CASES = {
    "rotation-translation": (
        lambda **p: threat("rotation-translation", "rotation-translation", **p),
        {"max_rotation": 0, "max_translation": 0},
        [{"max_rotation": 5, "max_translation": 0.5}, {"max_rotation": 10, "max_translation": 1},
         {"max_rotation": 20, "max_translation": 2}],
    ),
    "pixel-flow": (
        lambda **p: threat("pixel-flow", "pixel-flow", **p),
        {"max_flow": 0},
        [{"max_flow": 0.1}, {"max_flow": 0.4}, {"max_flow": 1.0}],
    ),
    "brightness-contrast": (
        lambda **p: threat("brightness-contrast", "brightness-contrast", **p),
        {"brightness": 0, "contrast": 0},
        [{"brightness": 0.05, "contrast": 0.1}, {"brightness": 0.2, "contrast": 0.5},
         {"brightness": 0.4, "contrast": 0.9}],
    ),
    "jpeg": (
        lambda **p: threat("jpeg", "jpeg", **p),
        {"eps": 0},
        [{"eps": 0.02}, {"eps": 0.1}, {"eps": 0.3}],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shape_range_zero_budget_and_monotone(setup, name):
    model, x, y = setup
    make, zero, budgets = CASES[name]
    x0 = run_attack(model, x, y, make(**zero), seed=0)
    assert x0.shape == x.shape and x0.dtype == x.dtype
    assert torch.equal(x0, x), "a zero budget must leave the images unchanged"
    assert robust_acc(model, x0, y) == 1.0  # only clean-correct examples are attacked
    accs = []
    for b in budgets:
        xa = run_attack(model, x, y, make(**b), seed=0)
        assert xa.shape == x.shape
        assert xa.min() >= 0 and xa.max() <= 1
        accs.append(robust_acc(model, xa, y))
    assert all(a >= b for a, b in zip(accs, accs[1:])), f"{name}: robust accuracy rose with budget: {accs}"
    assert accs[-1] < 0.5, f"{name}: the largest budget should break a standard model, got {accs}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic_given_seed(setup, name):
    model, x, y = setup
    make, _, budgets = CASES[name]
    t = make(**budgets[1])
    a = run_attack(model, x, y, t, seed=3)
    b = run_attack(model, x, y, t, seed=3)
    assert torch.equal(a, b)


def test_rotation_translation_returns_an_allowed_transform(setup):
    model, x, y = setup
    xa, chosen = rotation_translation(model, x, y, max_rotation=10, max_translation=1, return_params=True)
    grid = candidates(10, 1)
    assert len(grid) == 45 and torch.equal(grid[0], torch.zeros(3))
    for row in chosen:  # every chosen transform is a grid point, inside the budget
        assert ((grid - row).abs().amax(1) < 1e-6).any()
    assert chosen[:, 0].abs().max() <= 10 and chosen[:, 1:].abs().max() <= 1
    moved = (xa != x).flatten(1).any(1)
    redo = rotate_translate(x[moved], chosen[moved, 0], chosen[moved, 1], chosen[moved, 2])
    assert torch.allclose(redo, xa[moved], atol=1e-6)


def test_random_search_stays_in_budget(setup):
    model, x, y = setup
    cands = candidates(12, 1.5, search="random", k=30, seed=5)
    assert cands[:, 0].abs().max() <= 12 and cands[:, 1:].abs().max() <= 1.5
    assert torch.equal(cands, candidates(12, 1.5, search="random", k=30, seed=5))
    assert not torch.equal(cands, candidates(12, 1.5, search="random", k=30, seed=6))


def test_rotate_translate_geometry():
    """A whole-pixel shift moves a dot by whole pixels; 90 degrees maps the grid onto itself."""
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 4, 10] = 1.0
    shifted = rotate_translate(x, 0.0, 2.0, -1.0)
    assert shifted[0, 0, 3, 12] == pytest.approx(1.0, abs=1e-5)
    assert shifted.sum() == pytest.approx(1.0, abs=1e-4)
    turned = rotate_translate(x, 90.0, 0.0, 0.0)
    assert turned.amax() == pytest.approx(1.0, abs=1e-5) and turned.sum() == pytest.approx(1.0, abs=1e-4)


def test_spatial_flow_respects_the_bound(setup):
    model, x, y = setup
    xa, flow = spatial_flow(model, x, y, max_flow=0.4, steps=10, smooth_weight=0.01, return_flow=True)
    assert flow_magnitude(flow).max() <= 0.4 + 1e-5
    assert torch.allclose(warp(x, flow), xa, atol=1e-6)
    assert torch.equal(warp(x, torch.zeros_like(flow)), x)  # zero flow is the identity


def test_color_respects_the_ranges(setup):
    model, x, y = setup
    xa, b, c = color_attack_fn(model, x, y, brightness=(-0.1, 0.2), contrast=(0.7, 1.2), return_params=True)
    assert b.min() >= -0.1 - 1e-6 and b.max() <= 0.2 + 1e-6
    assert c.min() >= 0.7 - 1e-6 and c.max() <= 1.2 + 1e-6
    assert torch.allclose(adjust(x, b, c), xa, atol=1e-6)


def test_jpeg_coefficients_are_orthonormal_and_bounded(setup):
    model, x, y = setup
    z = torch.rand(2, 3, 16, 24)
    assert torch.allclose(from_coeffs(to_coeffs(z)), z, atol=1e-5)
    g = torch.rand(2, 1, 16, 16)
    assert to_coeffs(g).norm() == pytest.approx(g.norm().item(), rel=1e-5)  # orthonormal: a rotation
    xa, delta = jpeg_linf(model, x, y, eps=0.05, return_delta=True)
    assert delta.abs().max() <= 0.05 + 1e-7
    assert torch.allclose(from_coeffs(to_coeffs(x) + delta).clamp(0, 1), xa, atol=1e-6)
    assert (xa - x).abs().max() <= 0.05 * 16  # each 8x8 basis pattern has |value| <= 1/4


def test_bad_params_name_the_file_and_key(setup):
    model, x, y = setup
    bad = dataclasses.replace(threat("pixel-flow", "pixel-flow", max_flo=0.5), path="registry/threats/x.yaml")
    with pytest.raises(ValueError, match=r"x\.yaml.*params\.max_flo"):
        run_attack(model, x, y, bad)
    wrong_kind = threat("lp", "brightness-contrast")
    with pytest.raises(ValueError, match="needs a 'brightness-contrast' threat"):
        run_attack(model, x, y, wrong_kind)
    with pytest.raises(ValueError, match="params.contrast"):
        run_attack(model, x, y, threat("brightness-contrast", "brightness-contrast", contrast=[1.2, 1.5]))


def test_digits_threat_entries_load_and_name_registered_attacks():
    reg = Registry(DEFAULT_REGISTRY, check_files=False)
    ids = ["digits-linf-large", "digits-l2", "digits-l1", "digits-rotation-translation",
           "digits-pixel-flow", "digits-brightness-contrast", "digits-jpeg"]
    for tid in ids:
        t = reg.threat(tid)
        assert t.description, f"{tid} needs a description"
        if t.kind != "lp":
            assert get_attack(t.attack) is not None
    assert reg.threat("digits-linf-large").eps > reg.threat("digits-linf").eps


def test_digits_non_lp_entries_run(setup):
    """Each registered non-Lp digits entry runs with its own settings and lowers accuracy."""
    model, x, y = setup
    reg = Registry(DEFAULT_REGISTRY, check_files=False)
    for tid in ["digits-rotation-translation", "digits-pixel-flow", "digits-brightness-contrast", "digits-jpeg"]:
        xa = run_attack(model, x[:40], y[:40], reg.threat(tid), seed=0)
        assert xa.shape == x[:40].shape and 0 <= xa.min() and xa.max() <= 1
        assert robust_acc(model, xa, y[:40]) < 1.0, f"{tid} fooled nothing"


def test_evaluator_runs_a_non_lp_threat(setup):
    """The evaluator's path (clean pass, attack on clean-correct examples, trust checks) works for
    a non-Lp threat, and robust <= clean per example."""
    from benchmark.run.evaluate import attack_outcome

    model, _, _ = setup
    x, y = datasets.load_id("digits", "test")
    reg = Registry(DEFAULT_REGISTRY, check_files=False)
    out = attack_outcome(model, x[:60], y[:60], reg.threat("digits-pixel-flow"), seed=0)
    assert (out.robust_correct <= out.clean_correct).all()
    assert out.robust_correct.sum() < out.clean_correct.sum()
    assert out.checks["in_range"]["ok"]
