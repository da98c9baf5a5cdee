"""Trust checks run with every evaluation and stored in the result under ``"checks"``.

Each check is ``{"ok": bool, ...details}``.  A failed check flags the model on the leaderboard.
Cheap checks run on every cell; the ``deep`` ones (budget monotonicity, black-box Square
comparison) re-attack a sample and run only where the evaluator asks (the ID cell of each model).
Each check and its tolerance is documented in docs/attacks.md.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from ..attacks._lp import lp_norm

TOL = 1e-5
DEEP_SAMPLE = 64  # clean-correct examples re-attacked by the deep checks
SQUARE_QUERIES = 500  # black-box check budget (queries per example)
SLACK = 0.02  # allowed disagreement between two attacks beyond sampling noise (2 points)
Z = 1.645  # one-sided 95% normal quantile for the binomial margin


def tolerance(m: int, slack: float = SLACK) -> float:
    """Allowed accuracy gap on a sample of ``m`` paired examples: ``slack`` + a one-sided 95%
    binomial margin for a ``slack`` disagreement rate.  64 examples -> 0.049 (3 examples)."""
    if m <= 0:
        return 1.0
    return slack + Z * math.sqrt(slack * (1 - slack) / m)


def cell_checks(model, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, threat,
                clean_correct: np.ndarray, robust_correct: np.ndarray, *, deep: bool = False, seed: int = 0,
                attack: str | None = None, attack_args: dict[str, Any] | None = None,
                sample: int = DEEP_SAMPLE, square_queries: int = SQUARE_QUERIES) -> dict[str, Any]:
    """All checks of one cell.  ``deep=True`` adds the re-attacking checks for lp threats;
    ``attack``/``attack_args`` must then be what produced ``robust_correct`` (None: the threat's)."""
    checks: dict[str, Any] = {}
    checks["robust_le_clean"] = {"ok": bool((robust_correct <= clean_correct).all())}
    checks["in_range"] = {"ok": bool(x_adv.min() >= -TOL and x_adv.max() <= 1 + TOL)} if len(x_adv) else {"ok": True}
    if threat.kind == "lp":
        worst = float(lp_norm(x_adv - x, threat.norm).max()) if len(x) else 0.0
        checks["in_budget"] = {"ok": worst <= threat.eps * (1 + 1e-4) + TOL, "max_norm": round(worst, 6)}
    elif threat.kind == "lpips" and len(x):  # perceptual threats: LPIPS with the threat's own network
        from ..attacks.perceptual import lpips_to

        worst = float(lpips_to(threat, x, x_adv).max())
        checks["in_budget"] = {"ok": worst <= float(threat.params["bound"]) * (1 + 1e-4) + TOL,
                               "max_lpips": round(worst, 6)}
    with torch.no_grad():
        k = min(64, len(x))
        a, b = model(x[:k]), model(x[:k])
    checks["deterministic"] = {"ok": bool(torch.equal(a, b))}
    checks["gradients"] = gradient_check(model, x, y, clean_correct)
    if deep and threat.kind == "lp" and threat.eps > 0:
        idx = deep_sample(clean_correct, sample, seed)
        if len(idx):
            checks["budget_monotone"] = budget_monotone_check(model, x, y, threat, robust_correct, idx, seed=seed,
                                                              attack=attack, attack_args=attack_args)
            checks["black_box"] = black_box_check(model, x, y, threat, clean_correct, robust_correct, idx,
                                                  seed=seed, queries=square_queries)
    return checks


def deep_sample(clean_correct: np.ndarray, sample: int, seed: int) -> np.ndarray:
    """A seeded random subset of the clean-correct examples (sorted indices)."""
    cc = np.flatnonzero(clean_correct)
    if len(cc) <= sample:
        return cc
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(cc, size=sample, replace=False))


def gradient_check(model, x: torch.Tensor, y: torch.Tensor, clean_correct: np.ndarray,
                   max_zero_frac: float = 0.05, k: int = 64) -> dict[str, Any]:
    """Fraction of clean-correct examples whose margin (z_y - max_other z) has an exactly zero or
    non-finite input gradient.  A margin on logits does not saturate like softmax, so a zero there
    means the output does not locally depend on the input: masked gradients (quantised inputs,
    saturated outputs) that no gradient attack can use.  Fails above ``max_zero_frac``."""
    idx = np.flatnonzero(clean_correct)[:k]
    if len(idx) == 0:
        return {"ok": True, "zero_frac": 0.0, "n": 0}
    dev = next(iter(model.parameters()), x).device
    xs = x[torch.from_numpy(idx)].to(dev).detach().requires_grad_(True)
    ys = y[torch.from_numpy(idx)].to(dev)
    with torch.enable_grad():
        z = model(xs)
        u = torch.arange(len(ys), device=dev)
        other = z.clone()
        other[u, ys] = -float("inf")
        margin = z[u, ys] - other.amax(1)
        (g,) = torch.autograd.grad(margin.sum(), xs, allow_unused=True)
    if g is None:
        bad = torch.ones(len(idx), dtype=torch.bool)
    else:
        f = g.flatten(1)
        bad = (f.abs().amax(1) == 0) | ~torch.isfinite(f).all(1)
    frac = float(bad.float().mean())
    return {"ok": frac <= max_zero_frac, "zero_frac": round(frac, 4), "n": len(idx),
            "tolerance": max_zero_frac}


def _attack_sample(model, x: torch.Tensor, y: torch.Tensor, threat, *, seed: int, attack: str | None,
                   attack_args: dict[str, Any] | None) -> np.ndarray:
    from ..attacks import run_attack

    x_adv = run_attack(model, x, y, threat, seed=seed, attack=attack, **(attack_args or {}))
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).cpu().numpy()


def budget_monotone_check(model, x, y, threat, robust_correct: np.ndarray, idx: np.ndarray, *, seed: int,
                          attack: str | None = None, attack_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The same attack at eps/2 must not find *fewer* robust examples than at eps (beyond the
    tolerance): a weaker threat that looks harder means the attack is not converging."""
    half = dataclasses.replace(threat, eps=threat.eps / 2)
    t = torch.from_numpy(idx)
    rob_half = _attack_sample(model, x[t], y[t], half, seed=seed, attack=attack, attack_args=attack_args)
    acc_half, acc_full = float(rob_half.mean()), float(robust_correct[idx].mean())
    tol = tolerance(len(idx))
    return {"ok": acc_half >= acc_full - tol, "n": len(idx), "robust_acc_half_eps": round(acc_half, 4),
            "robust_acc_eps": round(acc_full, 4), "tolerance": round(tol, 4)}


def black_box_check(model, x, y, threat, clean_correct: np.ndarray, robust_correct: np.ndarray,
                    idx: np.ndarray, *, seed: int, queries: int = SQUARE_QUERIES) -> dict[str, Any]:
    """Square (gradient-free) on the sample must not beat the gradient attack by more than the
    tolerance; if it does, gradients are masked and the stored number overstates robustness.
    A failed check carries ``robust_acc_estimate``: the cell's robust accuracy lowered by the
    fraction of the sample that only Square broke (an estimate, to be confirmed by AutoAttack)."""
    from ..attacks.autoattack import square

    t = torch.from_numpy(idx)
    xs, ys = x[t], y[t]
    x_sq = square(model, xs, ys, eps=threat.eps, norm=threat.norm, queries=queries, seed=seed)
    with torch.no_grad():
        rob_sq = (model(x_sq).argmax(1) == ys).cpu().numpy()
    rob_grad = robust_correct[idx].astype(bool)
    only_square = int((rob_grad & ~rob_sq).sum())
    m = len(idx)
    acc_sq, acc_grad = float(rob_sq.mean()), float(rob_grad.mean())
    tol = tolerance(m)
    ok = acc_sq >= acc_grad - tol
    out: dict[str, Any] = {"ok": ok, "n": m, "queries": queries, "robust_acc_square": round(acc_sq, 4),
                           "robust_acc_attack": round(acc_grad, 4), "broken_only_by_square": only_square,
                           "tolerance": round(tol, 4)}
    if not ok:
        est = float(robust_correct.mean()) - float(clean_correct.mean()) * only_square / m
        out["robust_acc_estimate"] = round(max(0.0, est), 4)
        out["note"] = ("Square beat the gradient attack: gradients look masked; the stored robust accuracy "
                       "overstates robustness, robust_acc_estimate is the corrected value")
    return out
