"""Converged non-Lp threats: restarts that never lose a success, the stronger run every threat is
held to (:func:`benchmark.attacks._restarts.stronger_args`), the ``convergence`` trust check that
escalates an under-iterated threat and leaves a converged one alone, and the calibration of a
non-Lp threat against its stronger run.  A tiny MLP on real digits; seconds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.attacks import ATTACKS, get_attack, register, run_attack
from benchmark.attacks._restarts import stronger_args
from benchmark.registry import DEFAULT_REGISTRY, FrozenMap, Registry, ThreatSpec
from benchmark.run import calibrate, trust
from benchmark.run.evaluate import attack_outcome
from helpers import frozen_mlp_and_correct_test_images

REG = Registry(DEFAULT_REGISTRY, check_files=False)
NETWORK = REG.threat("digits-ppgd").params["network"]


@pytest.fixture(scope="module")
def setup():
    return frozen_mlp_and_correct_test_images(60)


def threat(attack: str, bound: float, **args) -> ThreatSpec:
    kind = {"ppgd": "lpips", "lpa": "lpips"}.get(attack, attack)
    params = {"bound": bound, "network": NETWORK} if kind == "lpips" else {"bound": bound}
    return ThreatSpec(id=f"test-{attack}", kind=kind, attack=attack, params=FrozenMap(params),
                      attack_args=FrozenMap(args), path=REG.threat("digits-ppgd").path if kind == "lpips" else "")


def robust(model, xa, y) -> np.ndarray:
    with torch.no_grad():
        return (model(xa).argmax(1) == y).numpy()


def test_stronger_run_scales_iterations_restarts_and_grids():
    assert stronger_args(get_attack("ppgd"), {"steps": 10, "cg_steps": 5}) == {"steps": 40, "cg_steps": 5,
                                                                               "restarts": 2}
    assert stronger_args(get_attack("lpa"), {"steps": 10, "binary_steps": 2, "restarts": 3}) == {
        "steps": 40, "binary_steps": 2, "restarts": 3}
    assert stronger_args(get_attack("stadv"), {}) == {"steps": 400, "restarts": 2}  # the signature's default 100
    rt = stronger_args(get_attack("rotation-translation"), {"search": "grid", "rotations": 5, "translations": 3})
    assert rt == {"search": "grid", "rotations": 17, "translations": 5}  # every old grid point kept
    assert stronger_args(get_attack("brightness-contrast"), {"grid": 5, "steps": 10}) == {"grid": 17, "steps": 40}

    def settingless(model, x, y, threat, *, seed=0):
        return x

    assert stronger_args(settingless, {}) is None


CASES = {  # cheap settings of each attack at a budget the tiny MLP partly resists
    "ppgd": (0.1, {"steps": 4, "cg_steps": 3}),
    "lpa": (0.1, {"steps": 4, "binary_steps": 2}),
    "stadv": (0.05, {"steps": 6}),
    "recolor": (0.15, {"steps": 6, "lr": 0.03}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_restarts_never_lose_a_success(setup, name):
    """A restart attacks only the still-robust examples and keeps only fooling images: every example
    one run breaks stays broken with a second run, and the second run breaks some that the first
    did not (its random start is a real second chance)."""
    model, x, y = setup
    bound, args = CASES[name]
    t = threat(name, bound, **args)
    one = robust(model, run_attack(model, x, y, t, seed=0, index=np.arange(len(x))), y)
    two_adv = run_attack(model, x, y, t, seed=0, index=np.arange(len(x)), restarts=3)
    two = robust(model, two_adv, y)
    assert not (two & ~one).any(), f"{name}: a restart lost {int((two & ~one).sum())} successes"
    assert two_adv.min() >= 0 and two_adv.max() <= 1
    assert 0 < one.sum() < len(y), f"{name}: the case should leave some examples robust: {one.mean()}"


def test_lpa_keeps_a_fooling_iterate_found_outside_the_ball(setup):
    """``project_fooled``: an iterate that fools the model outside the LPIPS ball is projected at
    once and kept if it still fools: never fewer successes than waiting for the last projection."""
    model, x, y = setup
    t = threat("lpa", 0.1, steps=4, binary_steps=1)
    plain = robust(model, run_attack(model, x, y, t, seed=0), y)
    kept_adv = run_attack(model, x, y, t, seed=0, project_fooled=True)
    from benchmark.attacks.perceptual import lpips_to

    assert float(lpips_to(t, x, kept_adv).max()) <= 0.1 + 1e-4
    assert robust(model, kept_adv, y).sum() <= plain.sum()


def _mine(model, x, y, threat, *, seed=0, index=None, steps=1, restarts=1):
    """A user's own attack (registered like a ``python:`` one): StAdv with its own settings."""
    return run_attack(model, x, y, threat, seed=seed, index=index, attack="stadv", steps=steps, restarts=restarts)


def test_convergence_check_escalates_an_under_iterated_threat_and_not_a_converged_one(setup):
    model, x, y = setup
    if "test-own-stadv" not in ATTACKS:
        register("test-own-stadv")(_mine)
    under = ThreatSpec(id="test-under", kind="stadv", attack="test-own-stadv", params=FrozenMap({"bound": 0.03}),
                       attack_args=FrozenMap({"steps": 1}))
    out = attack_outcome(model, x, y, under, seed=0)
    conv = out.checks["convergence"]
    assert not conv["ok"] and conv["stronger_args"] == {"steps": 4, "restarts": 2}, conv
    assert out.escalation and out.escalation["reasons"] == ["convergence"]
    assert out.robust_correct.sum() < robust(model, run_attack(model, x, y, under, seed=0), y).sum()
    assert set(out.broken_by) >= {"test-own-stadv", "stronger-check"}
    # the escalation skips the check's sample (already run): the stored outcome is exactly the
    # stronger run on every example the cell's attack left robust
    first = robust(model, run_attack(model, x, y, under, seed=0), y)
    left = np.flatnonzero(first)
    strong = robust(model, run_attack(model, x[left], y[left], under, seed=0, index=left.tolist(),
                                      **conv["stronger_args"]), y[left])
    expected = first.copy()
    expected[left[~strong]] = False
    assert np.array_equal(out.robust_correct.astype(bool), expected)
    assert out.escalation["n"] + out.escalation["n_checked"] == conv["of_robust"]

    converged = dataclasses_replace(under, id="test-converged", attack="stadv",
                                    attack_args=FrozenMap({"steps": 30, "restarts": 2}))
    out = attack_outcome(model, x, y, converged, seed=0)
    conv = out.checks["convergence"]
    assert conv["ok"] and conv["n"] > 0 and out.escalation is None, conv
    assert out.robust_correct.sum() <= out.clean_correct.sum()


def dataclasses_replace(t, **kw):
    import dataclasses

    return dataclasses.replace(t, **kw)


def test_calibrate_sets_a_non_lp_threat_beside_its_stronger_run(setup):
    model, x, y = setup
    t = threat("stadv", 0.08, steps=2)
    (row,) = calibrate.calibrate_model(model, "tiny", x, y, [t])
    assert row.aa_version == calibrate.STRONGER and row.fast_name == "stadv" and row.eps == 0.08
    assert row.aa <= row.fast <= row.clean  # an example is robust for the reference only if neither run broke it
    assert row.gap > 1.5, "2 steps should stop short of the stronger run on the tiny MLP"
    text = calibrate.render([row], "shiftbench calibrate")
    assert "| reference % |" in text and "Targets NOT met" in text and not calibrate.all_targets_met([row])
    ok = calibrate.Row("m", "u", "stadv", 0.05, 600, 0.9, 0.501, 0.5, 1.0, 8.0, fast_name="stadv",
                       aa_version=calibrate.STRONGER)
    assert calibrate.all_targets_met([ok]) and "Targets met" in calibrate.render([ok], "c")


def test_a_failed_check_whose_sample_held_every_robust_example_still_counts_as_escalated(setup):
    """When the check's sample is every example the attack left robust, the stronger run has run on
    all of them: the cell is escalated (its number is the stronger run's) with nothing left to attack."""
    model, x, y = setup
    t = threat("stadv", 0.03, steps=1)
    clean = robust(model, x, y)
    rob = robust(model, run_attack(model, x, y, t, seed=0), y)
    left = np.flatnonzero(rob)
    assert len(left) >= 2
    checks = {"convergence": {"ok": False, "attack": "stadv", "stronger_args": {"steps": 4, "restarts": 2},
                              "sample": left.tolist(), "broken": left[:1].tolist()}}
    after, broken_by, escalation = trust.settle(model, x, y, t, clean, rob, checks, attack="stadv", seed=0)
    assert escalation is not None and escalation["reasons"] == ["convergence"]
    assert escalation["n"] == 0 and escalation["n_checked"] == len(left) and escalation["broken"] == 0
    assert after.sum() == len(left) - 1 and broken_by["stronger-check"] == left[:1].tolist()
