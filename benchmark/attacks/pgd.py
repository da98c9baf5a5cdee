"""Projected gradient descent (Madry et al. 2018) on the cross-entropy loss, Linf / L2 / L1."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from . import register
from ._draws import Draws
from ._lp import ascent_step, project, random_start


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
        steps: int = 20, step_size: float | None = None, restarts: int = 1, random_init: bool = True,
        seed: int = 0, early_stop: bool = True, index: torch.Tensor | Sequence[int] | None = None,
        gen: torch.Generator | None = None) -> torch.Tensor:
    """Plain PGD with random restarts.  Keeps, per example, the first adversarial point found
    (every iterate is checked, not only the last of a restart); a restart attacks only the
    examples not fooled yet.  Random starts come from per-example streams keyed by ``(seed,
    index)`` (:mod:`._draws`), so an example's outcome does not depend on its batch.

    The zoo trainer uses it for adversarial training with ``early_stop=False`` (the last iterate
    of every example) and ``gen``, one generator for the whole training batch.
    """
    if eps == 0 or steps == 0:
        return x.detach().clone()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    draws = Draws(seed, index, len(x)) if gen is None else None
    best = x.detach().clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for r in range(max(1, restarts)):
        active = ~fooled if early_stop else torch.ones_like(fooled)
        if not active.any():
            break
        idx = active.nonzero().squeeze(1)
        xa, ya = x[idx], y[idx]
        if not random_init:
            adv = xa.clone()
        else:
            adv = random_start(xa, eps, norm, gen if gen is not None else draws.take(idx), "pgd", r)
        for it in range(steps + 1):
            adv.requires_grad_(True)
            with torch.enable_grad():
                logits = model(adv)
                loss = F.cross_entropy(logits, ya, reduction="sum")
                grad = torch.autograd.grad(loss, adv)[0] if it < steps else None
            adv = adv.detach()
            if early_stop:  # keep the first adversarial iterate; those examples stop here
                wrong = logits.detach().argmax(1) != ya
                if wrong.any():
                    best[idx[wrong]] = adv[wrong]
                    fooled[idx[wrong]] = True
                    keep = ~wrong
                    idx, xa, ya, adv = idx[keep], xa[keep], ya[keep], adv[keep]
                    grad = grad[keep] if grad is not None else None
                    if len(idx) == 0:
                        break
            if it == steps:
                break
            adv = project(adv + ascent_step(grad, alpha, norm), xa, eps, norm)
        if not early_stop:
            best[idx] = adv
    return best


@register("pgd")
def pgd_attack(model, x, y, threat, *, seed: int = 0, index=None, steps: int = 20, restarts: int = 1,
               step_size: float | None = None):
    if threat.kind != "lp":
        raise ValueError(f"pgd needs an lp threat, '{threat.id}' is kind '{threat.kind}'")
    return pgd(model, x, y, eps=threat.eps, norm=threat.norm, steps=steps, restarts=restarts,
               step_size=step_size, seed=seed, index=index)
