"""Trust checks run with every evaluation and stored in the result under ``"checks"``, and what
the evaluator does about what they find.

Each check is ``{"ok": bool, ...details}``.  A failed check flags the model on the leaderboard.
Cheap checks run on every cell; the ``deep`` ones (budget monotonicity, black-box Square
comparison) re-attack a sample and run on every Lp cell (ID, dataset shifts, threat shifts).
Checks act on what they find (:func:`settle`): an example a check's attack breaks is counted as
broken (the stored robust accuracy is the best of all attacks run, and ``broken_by`` says which
attack broke each example); a cell whose black-box check fails, and every still-robust example
whose gradient is exactly zero, are attacked again by Square at AutoAttack's standard budget
(the escalation), so a model with masked gradients is never stored at its gradient-attack number.
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
ESCALATION_QUERIES = 5000  # Square's budget in AutoAttack-standard: the escalation's
ESCALATION_CHUNK = 500  # examples per Square call in the escalation (fixed: outcomes never depend on --batch-size)
SQUARE_ONLY_RATE = 0.01  # examples only Square may break (of the sample) before the cell is flagged
ALPHA = 0.05  # level of the one-sided binomial test on the examples only Square broke
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
    if deep:
        checks.update(deep_checks(model, x, y, threat, clean_correct, robust_correct, seed=seed, attack=attack,
                                  attack_args=attack_args, sample=sample, square_queries=square_queries))
    return checks


def deep_checks(model, x: torch.Tensor, y: torch.Tensor, threat, clean_correct: np.ndarray,
                robust_correct: np.ndarray, *, seed: int = 0, attack: str | None = None,
                attack_args: dict[str, Any] | None = None, sample: int = DEEP_SAMPLE,
                square_queries: int = SQUARE_QUERIES) -> dict[str, Any]:
    """The checks that re-attack a seeded sample of the clean-correct examples (Lp threats only):
    ``budget_monotone`` and ``black_box``.  The evaluator runs them once per batch of cells (the
    severities of a dataset shift share one sample) and gives each cell its part (:func:`part_of`)."""
    if threat.kind != "lp" or threat.eps <= 0:
        return {}
    idx = deep_sample(clean_correct, sample, seed)
    if not len(idx):
        return {}
    return {"budget_monotone": budget_monotone_check(model, x, y, threat, robust_correct, idx, seed=seed,
                                                     attack=attack, attack_args=attack_args),
            "black_box": black_box_check(model, x, y, threat, clean_correct, robust_correct, idx,
                                         seed=seed, queries=square_queries)}


def part_of(deep: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """The deep checks of a batch of cells as seen by the cell holding examples ``start:stop``
    of the batch: the batch's verdict and figures (``scope: batch``), and the cell's own part of
    the sample and of the broken examples, in its own indices (``sample``, ``broken``)."""
    out = {}
    for name, check in deep.items():
        c = dict(check)
        c["scope"] = "batch"
        c["broken"] = [i - start for i in check.get("broken", []) if start <= i < stop]
        c["sample"] = [i - start for i in check.get("sample", []) if start <= i < stop]
        out[name] = c
    return out


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
                   attack_args: dict[str, Any] | None, index: np.ndarray | None = None) -> np.ndarray:
    from ..attacks import run_attack

    x_adv = run_attack(model, x, y, threat, seed=seed, attack=attack, index=index, **(attack_args or {}))
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).cpu().numpy()


def budget_monotone_check(model, x, y, threat, robust_correct: np.ndarray, idx: np.ndarray, *, seed: int,
                          attack: str | None = None, attack_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The same attack at eps/2 must not find *fewer* robust examples than at eps (beyond the
    tolerance): a weaker threat that looks harder means the attack is not converging.  ``broken``
    lists the examples (cell indices) broken at eps/2 but not at eps: the eps/2 point lies in the
    eps ball too, so the evaluator counts them as broken."""
    half = dataclasses.replace(threat, eps=threat.eps / 2)
    t = torch.from_numpy(idx).to(x.device)
    rob_half = _attack_sample(model, x[t], y[t], half, seed=seed, attack=attack, attack_args=attack_args, index=idx)
    acc_half, acc_full = float(rob_half.mean()), float(robust_correct[idx].mean())
    tol = tolerance(len(idx))
    broken = idx[robust_correct[idx].astype(bool) & ~rob_half.astype(bool)]
    return {"ok": acc_half >= acc_full - tol, "n": len(idx), "robust_acc_half_eps": round(acc_half, 4),
            "robust_acc_eps": round(acc_full, 4), "tolerance": round(tol, 4), "broken": [int(i) for i in broken],
            "sample": [int(i) for i in idx]}


def binomial_sf(k: int, m: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(m, p)."""
    if k <= 0:
        return 1.0
    return float(sum(math.comb(m, j) * p ** j * (1 - p) ** (m - j) for j in range(max(0, k), m + 1)))


def black_box_check(model, x, y, threat, clean_correct: np.ndarray, robust_correct: np.ndarray,
                    idx: np.ndarray, *, seed: int, queries: int = SQUARE_QUERIES,
                    rate: float = SQUARE_ONLY_RATE, alpha: float = ALPHA) -> dict[str, Any]:
    """Square (gradient-free) on the sample.  The examples that only Square broke (robust against
    the gradient attack, broken by Square) are the evidence of masked gradients: the check fails
    when their count is significantly above ``rate`` of the sample (one-sided binomial test at
    ``alpha``), so masking of a few points is caught even when marginal accuracies look alike.
    ``broken`` lists the examples (cell indices) Square broke; the evaluator counts them as broken.
    A failed check carries ``robust_acc_estimate``: the cell's robust accuracy lowered by the
    fraction of the sample that only Square broke (the escalation then attacks the whole cell)."""
    from ..attacks.autoattack import square

    t = torch.from_numpy(idx).to(x.device)
    xs, ys = x[t], y[t]
    x_sq = square(model, xs, ys, eps=threat.eps, norm=threat.norm, queries=queries, seed=seed)
    with torch.no_grad():
        rob_sq = (model(x_sq).argmax(1) == ys).cpu().numpy()
    rob_grad = robust_correct[idx].astype(bool)
    only = rob_grad & ~rob_sq
    only_square = int(only.sum())
    m = len(idx)
    p_value = binomial_sf(only_square, m, rate)
    ok = p_value >= alpha
    out: dict[str, Any] = {"ok": ok, "n": m, "queries": queries, "robust_acc_square": round(float(rob_sq.mean()), 4),
                           "robust_acc_attack": round(float(rob_grad.mean()), 4), "broken_only_by_square": only_square,
                           "p_value": round(p_value, 6), "rate": rate, "alpha": alpha,
                           "broken": [int(i) for i in idx[only]], "sample": [int(i) for i in idx]}
    if not ok:
        est = float(robust_correct.mean()) - float(clean_correct.mean()) * only_square / m
        out["robust_acc_estimate"] = round(max(0.0, est), 4)
        out["note"] = ("Square broke examples the gradient attack could not: gradients look masked; the cell "
                       "is escalated to Square on every still-robust example")
    return out


def zero_gradient(model, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> np.ndarray:
    """Per example: is the input gradient of the margin (z_y - max_other z) exactly zero or
    non-finite?  No gradient attack can move such an example."""
    out = []
    for i in range(0, len(x), chunk):
        xs = x[i:i + chunk].detach().requires_grad_(True)
        ys = y[i:i + chunk]
        with torch.enable_grad():
            z = model(xs)
            u = torch.arange(len(ys), device=z.device)
            other = z.clone()
            other[u, ys] = -float("inf")
            (g,) = torch.autograd.grad((z[u, ys] - other.amax(1)).sum(), xs, allow_unused=True)
        if g is None:
            out.append(np.ones(len(ys), bool))
        else:
            f = g.flatten(1)
            out.append(((f.abs().amax(1) == 0) | ~torch.isfinite(f).all(1)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, bool)


def settle(model, x: torch.Tensor, y: torch.Tensor, threat, clean_correct: np.ndarray, robust_correct: np.ndarray,
           checks: dict[str, Any], *, attack: str, seed: int, queries: int = ESCALATION_QUERIES,
           chunk: int = ESCALATION_CHUNK) -> tuple[np.ndarray, dict[str, list[int]], dict[str, Any] | None]:
    """Act on the checks of one cell: returns ``(robust_correct, broken_by, escalation)``.

    - the examples a check's attack broke (``budget_monotone``'s eps/2 re-attack: inside the
      eps ball too; ``black_box``'s Square) are counted as broken;
    - Lp threats: the still-robust examples whose margin gradient is exactly zero, and, when
      ``black_box`` failed, every still-robust example, are attacked by Square at AutoAttack's
      standard budget (``queries``), in fixed chunks of the cell's examples in order, so the
      outcome does not depend on the evaluation batch size;
    - ``broken_by`` maps each attack to the examples it broke first (the cell's attack, then
      ``eps/2-rerun``, ``square-check``, ``square-escalation``), so the best-of-attacks number is
      traceable.  ``escalation`` records why, on how many examples, and what it broke (None when
      nothing was escalated)."""
    robust = robust_correct.astype(bool).copy()
    broken_by: dict[str, list[int]] = {attack: [int(i) for i in np.flatnonzero(clean_correct.astype(bool) & ~robust)]}
    for check, name in (("budget_monotone", "eps/2-rerun"), ("black_box", "square-check")):
        found = [i for i in (checks.get(check) or {}).get("broken", []) if robust[i]]
        if found:
            robust[found] = False
            broken_by[name] = found
    escalation = None
    if threat.kind == "lp" and threat.eps > 0 and robust.any():
        reasons = []
        targets = np.zeros(len(robust), bool)
        if (checks.get("black_box") or {}).get("ok") is False:
            targets |= robust
            reasons.append("black_box")
        still = np.flatnonzero(robust & ~targets)
        if len(still):
            zero = zero_gradient(model, x[torch.from_numpy(still).to(x.device)], y[torch.from_numpy(still).to(x.device)])
            if zero.any():
                targets[still[zero]] = True
                reasons.append("zero_gradient")
        ii = np.flatnonzero(targets)
        if len(ii):
            from ..attacks.autoattack import square

            broken = []
            for s in range(0, len(ii), chunk):
                part = ii[s:s + chunk]
                t = torch.from_numpy(part).to(x.device)
                x_sq = square(model, x[t], y[t], eps=threat.eps, norm=threat.norm, queries=queries, seed=seed)
                with torch.no_grad():
                    wrong = (model(x_sq).argmax(1) != y[t]).cpu().numpy()
                broken += [int(i) for i in part[wrong]]
            robust[broken] = False
            if broken:
                broken_by["square-escalation"] = broken
            escalation = {"reasons": reasons, "attack": "square", "queries": queries, "chunk": chunk,
                          "n": int(len(ii)), "broken": len(broken),
                          "robust_acc_before": round(float(robust_correct.mean()), 4) if len(robust) else None,
                          "robust_acc_after": round(float(robust.mean()), 4) if len(robust) else None}
    return robust, broken_by, escalation
