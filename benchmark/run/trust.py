"""Trust checks run with every evaluation and stored in the result under ``"checks"``, and what
the evaluator does about what they find.

Each check is ``{"ok": bool, ...details}``.  A failed check flags the model on the leaderboard.
Cheap checks run on every cell; the ``deep`` ones re-attack a sample of the examples the cell's
attack left robust (the only ones that can tell anything): budget monotonicity and the black-box
Square comparison on every Lp cell (ID, dataset shifts, threat shifts), convergence (the stronger
run of the cell's own attack: 4x its iterations, 2 restarts) on every other cell; each flags when
its attack breaks significantly more than :data:`CHECK_RATE` of its sample.
Checks act on what they find (:func:`settle`): an example a check's attack breaks is counted as
broken (the stored robust accuracy is the best of all attacks run, and ``broken_by`` says which
attack broke each example); a cell whose black-box check fails, and every still-robust example
whose gradient is exactly zero, are attacked again by Square at AutoAttack's standard budget
(the escalation), so a model with masked gradients is never stored at its gradient-attack number;
a non-Lp cell whose convergence check fails is attacked again by the stronger run on every
still-robust example, so a threat is never stored at an attack that stopped short.
Each check and its tolerance is documented in docs/attacks.md.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import torch

from ..attacks._lp import lp_norm
from ..models.defenses import judge  # verdicts: a randomized model's majority of draws

TOL = 1e-5
DEEP_SAMPLE = 32  # still-robust examples re-attacked by the deep checks of a one-cell batch (ID, threat shifts)
SHIFT_SAMPLE = 16  # ... of a dataset shift's batch (its severities together), spread evenly over its cells
SQUARE_QUERIES = 500  # black-box check budget (queries per example) on the ID cell
SHIFT_SQUARE_QUERIES = 250  # ... on dataset- and threat-shift cells (docs/attacks.md: what it trades)
ESCALATION_QUERIES = 5000  # Square's budget in AutoAttack-standard: the escalation's
ESCALATION_CHUNK = 500  # examples per Square call in the escalation (fixed: outcomes never depend on --batch-size)
CHECK_RATE = 0.01  # share of the re-attacked examples a check's attack may break before the cell is flagged
ALPHA = 0.05  # level of the one-sided binomial test on the examples a check's attack broke


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
                square_queries: int = SQUARE_QUERIES,
                bounds: Sequence[tuple[int, int]] | None = None) -> dict[str, Any]:
    """The checks that re-attack a seeded sample of the examples the cell's attack left robust:
    ``budget_monotone`` and ``black_box`` for Lp threats, ``convergence`` for the others.  Only
    those examples can tell anything: an example the attack broke cannot be broken again.  The evaluator runs them once
    per batch of cells (the severities of a dataset shift share one sample, drawn evenly over
    the cells: ``bounds``, each cell's ``(start, stop)`` in the batch) and gives each cell its
    part (:func:`part_of`)."""
    if threat.kind == "lp" and threat.eps <= 0:
        return {}
    robust = clean_correct.astype(bool) & robust_correct.astype(bool)
    idx = deep_sample(robust, sample, seed, bounds)
    if threat.kind != "lp":
        return {"convergence": convergence_check(model, x, y, threat, robust, idx, seed=seed, attack=attack,
                                                 attack_args=attack_args)}
    return {"budget_monotone": budget_monotone_check(model, x, y, threat, robust, idx, seed=seed, attack=attack,
                                                     attack_args=attack_args),
            "black_box": black_box_check(model, x, y, threat, clean_correct, robust, idx, seed=seed,
                                         queries=square_queries)}


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


def deep_sample(candidates: np.ndarray, sample: int, seed: int,
                bounds: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """A seeded random subset of the ``candidates`` (sorted indices), at most ``sample`` of them,
    spread evenly over the cells ``bounds`` (round robin: a cell with fewer candidates than its
    share leaves the rest to the others).  Cell ``i`` draws with ``(seed, i)``, so the sample
    depends only on the batch's outcomes, never on how they were computed."""
    bounds = list(bounds) if bounds else [(0, len(candidates))]
    pools = [start + np.flatnonzero(candidates[start:stop]) for start, stop in bounds]
    quota = [0] * len(pools)
    left = sample
    while left > 0 and any(q < len(p) for q, p in zip(quota, pools)):
        for i, p in enumerate(pools):
            if left > 0 and quota[i] < len(p):
                quota[i] += 1
                left -= 1
    picks = [p if q == len(p) else np.random.default_rng([seed, i]).choice(p, size=q, replace=False)
             for i, (p, q) in enumerate(zip(pools, quota))]
    return np.sort(np.concatenate(picks)).astype(np.int64) if picks else np.zeros(0, np.int64)


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
    return (judge(model, x_adv).argmax(1) == y).cpu().numpy()


def binomial_sf(k: int, m: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(m, p)."""
    if k <= 0:
        return 1.0
    return float(sum(math.comb(m, j) * p ** j * (1 - p) ** (m - j) for j in range(max(0, k), m + 1)))


def flags_at(m: int, rate: float = CHECK_RATE, alpha: float = ALPHA) -> int:
    """The fewest examples (of ``m`` re-attacked) a check's attack must break for the one-sided
    binomial test to reject "at most ``rate``" at level ``alpha`` (``m + 1``: it never can)."""
    return next((k for k in range(1, m + 1) if binomial_sf(k, m, rate) < alpha), m + 1)


def power(m: int, p: float, rate: float = CHECK_RATE, alpha: float = ALPHA) -> float:
    """The chance that a check on ``m`` re-attacked examples flags when its attack breaks each of
    them with probability ``p``."""
    return binomial_sf(flags_at(m, rate, alpha), m, p)


def _verdict(robust: np.ndarray, idx: np.ndarray, broken_mask: np.ndarray, rate: float, alpha: float) -> dict[str, Any]:
    m, k = len(idx), int(broken_mask.sum())
    p_value = binomial_sf(k, m, rate)
    return {"ok": p_value >= alpha, "n": m, "of_robust": int(robust.sum()), "p_value": round(p_value, 6),
            "flags_at": flags_at(m, rate, alpha), "rate": rate, "alpha": alpha,
            "broken": [int(i) for i in idx[broken_mask]], "sample": [int(i) for i in idx]}


NOTHING_ROBUST = "the attack left no example robust: nothing to re-attack"


def budget_monotone_check(model, x, y, threat, robust_correct: np.ndarray, idx: np.ndarray, *, seed: int,
                          attack: str | None = None, attack_args: dict[str, Any] | None = None,
                          rate: float = CHECK_RATE, alpha: float = ALPHA) -> dict[str, Any]:
    """The same attack at eps/2 on the sample ``idx`` of examples it left robust at eps (others
    are dropped): a weaker threat that breaks what the full one could not means the attack does
    not converge.  Fails when those examples (``broken_at_half_eps``) are significantly more than
    ``rate`` of the sample (one-sided binomial test at ``alpha``).  ``broken`` lists them (cell
    indices): the eps/2 point lies in the eps ball too, so the evaluator counts them as broken."""
    idx = idx[robust_correct[idx].astype(bool)]
    if not len(idx):
        return {"ok": True, "n": 0, "of_robust": int(robust_correct.sum()), "broken_at_half_eps": 0,
                "broken": [], "sample": [], "note": NOTHING_ROBUST}
    half = dataclasses.replace(threat, eps=threat.eps / 2)
    t = torch.from_numpy(idx).to(x.device)
    rob_half = _attack_sample(model, x[t], y[t], half, seed=seed, attack=attack, attack_args=attack_args, index=idx)
    broken = ~rob_half.astype(bool)
    return {**_verdict(robust_correct.astype(bool), idx, broken, rate, alpha),
            "broken_at_half_eps": int(broken.sum())}


def stronger(threat, attack: str | None = None, attack_args: dict[str, Any] | None = None
             ) -> tuple[str, dict[str, Any] | None]:
    """``(attack, settings)`` of the stronger run of what a cell ran (``attack``/``attack_args``:
    the run's override, None: the threat's): :func:`..attacks._restarts.stronger_args` of its
    settings; settings None when the attack has none to scale.  A user's ``python:`` attack is
    held to the same rule through its signature."""
    from ..attacks import get_attack
    from ..attacks._restarts import stronger_args

    name = attack or threat.attack
    args = dict(threat.attack_args) if attack is None or attack == threat.attack else {}
    args.update(attack_args or {})
    return name, stronger_args(get_attack(name, path=getattr(threat, "path", "") or "--attack", key="attack"), args)


def convergence_check(model, x, y, threat, robust_correct: np.ndarray, idx: np.ndarray, *, seed: int,
                      attack: str | None = None, attack_args: dict[str, Any] | None = None,
                      rate: float = CHECK_RATE, alpha: float = ALPHA) -> dict[str, Any]:
    """The stronger run of the cell's attack (:func:`stronger`: 4x its iterations, 2 restarts) on
    the sample ``idx`` of examples it left robust (others are dropped): if the same threat,
    attacked harder, breaks significantly more than ``rate`` of them (``broken_by_stronger``;
    one-sided binomial test at ``alpha``), the attack had not converged: the check fails and the
    evaluator escalates the cell to the stronger run (:func:`settle`).  ``broken`` lists them
    (cell indices); they are counted as broken either way."""
    robust = robust_correct.astype(bool)
    idx = idx[robust[idx]]
    name, args = stronger(threat, attack, attack_args)
    base = {"attack": name, "stronger_args": args}
    if args is None:
        return {"ok": True, "n": 0, "of_robust": int(robust.sum()), "broken_by_stronger": 0, "broken": [],
                "sample": [], **base, "note": f"attack '{name}' takes no iteration count, restarts or grid: "
                "nothing makes it stronger"}
    if not len(idx):
        return {"ok": True, "n": 0, "of_robust": int(robust.sum()), "broken_by_stronger": 0, "broken": [],
                "sample": [], **base, "note": NOTHING_ROBUST}
    t = torch.from_numpy(idx).to(x.device)
    rob = _attack_sample(model, x[t], y[t], threat, seed=seed, attack=attack, attack_args=args, index=idx)
    broken = ~rob.astype(bool)
    out = {**_verdict(robust, idx, broken, rate, alpha), "broken_by_stronger": int(broken.sum()), **base}
    if not out["ok"]:
        out["note"] = ("the stronger run broke examples the cell's attack left robust: it had not converged; the cell "
                       "is escalated to the stronger run on every still-robust example")
    return out


def black_box_check(model, x, y, threat, clean_correct: np.ndarray, robust_correct: np.ndarray,
                    idx: np.ndarray, *, seed: int, queries: int = SQUARE_QUERIES,
                    rate: float = CHECK_RATE, alpha: float = ALPHA) -> dict[str, Any]:
    """Square (gradient-free) on the sample ``idx`` of examples the gradient attack left robust
    (others are dropped).  The examples Square breaks there (``broken_only_by_square``) are the
    evidence of masked gradients: the check fails when they are significantly more than ``rate``
    of the sample (one-sided binomial test at ``alpha``), so masking of a few points is caught.
    ``broken`` lists them (cell indices); the evaluator counts them as broken.  A failed check
    carries ``robust_acc_estimate``: the robust accuracy with the share of the robust examples
    that Square broke in the sample removed (the escalation then attacks the whole cell)."""
    from ..attacks.autoattack import square

    robust = robust_correct.astype(bool)
    idx = idx[robust[idx]]
    if not len(idx):
        return {"ok": True, "n": 0, "of_robust": int(robust.sum()), "queries": queries, "broken_only_by_square": 0,
                "broken": [], "sample": [], "note": NOTHING_ROBUST}
    t = torch.from_numpy(idx).to(x.device)
    xs, ys = x[t], y[t]
    x_sq = square(model, xs, ys, eps=threat.eps, norm=threat.norm, queries=queries, seed=seed)
    only = (judge(model, x_sq).argmax(1) != ys).cpu().numpy()
    out: dict[str, Any] = {**_verdict(robust, idx, only, rate, alpha), "queries": queries,
                           "broken_only_by_square": int(only.sum())}
    if not out["ok"]:
        est = float(robust.mean()) * (1 - float(only.mean()))
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
           checks: dict[str, Any], *, attack: str, seed: int, queries: int | None = None,
           chunk: int = ESCALATION_CHUNK, attack_arg: str | None = None
           ) -> tuple[np.ndarray, dict[str, list[int]], dict[str, Any] | None]:
    """Act on the checks of one cell: returns ``(robust_correct, broken_by, escalation)``.

    - the examples a check's attack broke (``budget_monotone``'s eps/2 re-attack: inside the
      eps ball too; ``black_box``'s Square) are counted as broken;
    - Lp threats: the still-robust examples whose margin gradient is exactly zero, and, when
      ``black_box`` failed, every still-robust example, are attacked by Square at AutoAttack's
      standard budget (``queries``, :data:`ESCALATION_QUERIES` by default), in fixed chunks of the cell's examples in order, so the
      outcome does not depend on the evaluation batch size;
    - ``broken_by`` maps each attack to the examples it broke first (the cell's attack, then
      ``eps/2-rerun``, ``square-check``, ``square-escalation``; ``stronger-check``,
      ``stronger-escalation`` for the others), so the best-of-attacks number is traceable;
    - other threats: when ``convergence`` failed, every still-robust example is attacked by the
      stronger run it names (``attack_arg``: the run's attack override, None for the threat's).

    ``escalation`` records why, on how many examples, and what it broke (None when nothing was
    escalated)."""
    queries = ESCALATION_QUERIES if queries is None else queries
    robust = robust_correct.astype(bool).copy()
    broken_by: dict[str, list[int]] = {attack: [int(i) for i in np.flatnonzero(clean_correct.astype(bool) & ~robust)]}
    for check, name in (("budget_monotone", "eps/2-rerun"), ("black_box", "square-check"),
                        ("convergence", "stronger-check")):
        found = [i for i in (checks.get(check) or {}).get("broken", []) if robust[i]]
        if found:
            robust[found] = False
            broken_by[name] = found
    escalation = None
    conv = checks.get("convergence") or {}
    # escalated even when the check's sample held every still-robust example (the stronger run then ran on all of
    # them already): the cell stores the stronger run's number either way
    if conv.get("ok") is False and conv.get("stronger_args") is not None:
        # the check's sample already had the stronger run (same seed, same positions: the same outcome, as
        # every example's numbers are its own), so only the rest of the still-robust examples are attacked
        checked_already = np.zeros(len(robust), bool)
        checked_already[np.asarray(conv.get("sample", []), dtype=np.int64)] = True
        ii = np.flatnonzero(robust & ~checked_already)
        broken = []
        if len(ii):
            t = torch.from_numpy(ii).to(x.device)
            rob = _attack_sample(model, x[t], y[t], threat, seed=seed, attack=attack_arg,
                                 attack_args=conv["stronger_args"], index=ii)
            broken = [int(i) for i in ii[~rob.astype(bool)]]
        robust[broken] = False
        if broken:
            broken_by["stronger-escalation"] = broken
        escalation = {"reasons": ["convergence"], "attack": conv["attack"], "attack_args": conv["stronger_args"],
                      "n": int(len(ii)), "n_checked": int(checked_already.sum()),
                      "broken": len(broken),
                      "robust_acc_before": round(float(robust_correct.mean()), 4),
                      "robust_acc_after": round(float(robust.mean()), 4)}
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
                wrong = (judge(model, x_sq).argmax(1) != y[t]).cpu().numpy()
                broken += [int(i) for i in part[wrong]]
            robust[broken] = False
            if broken:
                broken_by["square-escalation"] = broken
            escalation = {"reasons": reasons, "attack": "square", "queries": queries, "chunk": chunk,
                          "n": int(len(ii)), "broken": len(broken),
                          "robust_acc_before": round(float(robust_correct.mean()), 4) if len(robust) else None,
                          "robust_acc_after": round(float(robust.mean()), 4) if len(robust) else None}
    return robust, broken_by, escalation
