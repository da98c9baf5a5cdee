"""Projected gradient descent (Madry et al. 2018) on the cross-entropy loss, Linf / L2 / L1."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from ._lp import ascent_step, project, random_start


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
        steps: int = 20, step_size: float | None = None, restarts: int = 1, random_init: bool = True,
        seed: int = 0, early_stop: bool = True) -> torch.Tensor:
    """Plain PGD with random restarts.  Keeps, per example, the first adversarial point found.

    Also used by the zoo trainer for adversarial training (``early_stop=False``).
    """
    if eps == 0 or steps == 0:
        return x.detach().clone()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    gen = torch.Generator().manual_seed(seed)
    best = x.detach().clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(max(1, restarts)):
        active = ~fooled if early_stop else torch.ones_like(fooled)
        if not active.any():
            break
        xa, ya = x[active], y[active]
        adv = random_start(xa, eps, norm, gen) if random_init else xa.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(adv), ya, reduction="sum")
                (grad,) = torch.autograd.grad(loss, adv)
            adv = project(adv.detach() + ascent_step(grad, alpha, norm), xa, eps, norm)
        with torch.no_grad():
            wrong = model(adv).argmax(1) != ya
        idx = active.nonzero().squeeze(1)
        if early_stop:
            best[idx[wrong]] = adv[wrong]
            fooled[idx[wrong]] = True
        else:
            best[idx] = adv
    return best


@register("pgd")
def pgd_attack(model, x, y, threat, *, seed: int = 0, steps: int = 20, restarts: int = 1,
               step_size: float | None = None):
    if threat.kind != "lp":
        raise ValueError(f"pgd needs an lp threat, '{threat.id}' is kind '{threat.kind}'")
    return pgd(model, x, y, eps=threat.eps, norm=threat.norm, steps=steps, restarts=restarts,
               step_size=step_size, seed=seed)
