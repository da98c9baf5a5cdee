"""Adam ascent on a per-example perturbation parameter: the optimiser StAdv and ReColorAdv use.

The reference implementations (the ``mister_ed`` PGD that ``perceptual-advex`` wraps) optimise
the flow field / colour grid with Adam on the unsigned gradient of the Carlini-Wagner margin
minus a weighted smoothness penalty, clipping the parameter back into its box after each step.
Adam's update is elementwise and its state is kept per example here, so an example's path does
not depend on the other examples in the batch.  Examples stop at the first parameter that fools
the model (kept as their answer); the others end at their last iterate.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ._restarts import uniform_start, with_restarts
from .transforms import per_example_loss

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as the reference uses them
ADAM_EPS = 1e-8


def adam_ascent(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, init: torch.Tensor,
                render: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                project: Callable[[torch.Tensor], torch.Tensor],
                penalty: Callable[[torch.Tensor], torch.Tensor] | None, steps: int, lr: float,
                loss: str = "margin", lr_final: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximise ``loss(model(render(active, p))) - penalty(p)`` per example with Adam, the
    learning rate going from ``lr`` to ``lr_final * lr`` along a half cosine (constant at 1).

    ``init`` is the start (N, ...) (deterministic: the identity transform); ``render(active, p)``
    makes the images of the examples ``active`` (indices into ``x``) from their parameters;
    ``project`` maps a parameter back into the budget.  Returns ``(images, params)``.
    """
    n = len(x)
    best = x.detach().clone()
    best_p = init.detach().clone()
    active = torch.arange(n, device=x.device)
    p = init.detach().clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    b1, b2 = BETAS
    for it in range(steps + 1):
        p.requires_grad_(True)
        with torch.enable_grad():
            xa = render(active, p)
            logits = model(xa)
            obj = per_example_loss(logits, y[active], loss)
            if penalty is not None:
                obj = obj - penalty(p)
            (grad,) = torch.autograd.grad(obj.sum(), p) if it < steps else (None,)
        with torch.no_grad():
            best[active] = xa.detach()
            best_p[active] = p.detach()
            fooled = logits.argmax(1) != y[active]
            if it == steps:
                break
            keep = ~fooled
            if not keep.any():
                break
            active, p, m, v, grad = active[keep], p.detach()[keep], m[keep], v[keep], grad[keep]
            t = it + 1
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            lr_t = lr * (lr_final + (1 - lr_final) * 0.5 * (1 + math.cos(math.pi * it / max(1, steps - 1))))
            step = lr_t * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + ADAM_EPS)
            p = project(p + step)
    return best, best_p


def scaled_settings(bound: float, lr: float | None, smooth_weight: float | None, *, lr_per_bound: float,
                    smooth_per_bound: float) -> tuple[float, float]:
    """Adam's learning rate and the smoothness weight, defaulting to the reference's values scaled
    with the budget: ``lr_per_bound * bound`` and ``smooth_per_bound / bound`` (no smoothness term
    for a zero budget)."""
    lr = lr_per_bound * bound if lr is None else lr
    weight = smooth_per_bound / bound if smooth_weight is None and bound else (smooth_weight or 0.0)
    return lr, weight


def bounded_adam(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, zero: torch.Tensor,
                 render: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], bound: float, steps: int,
                 lr: float, weight: float, smoothness: Callable[[torch.Tensor], torch.Tensor],
                 project: Callable[[torch.Tensor], torch.Tensor] | None = None, lr_final: float = 1.0,
                 restarts: int = 1, seed: int = 0, index: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`adam_ascent` from the identity ``zero`` with every parameter clipped to
    [-bound, bound] (or mapped by ``project``) and ``weight * smoothness`` subtracted; a zero
    budget returns ``x``.  Restart ``r >= 1`` starts the examples no earlier run fooled at a
    parameter drawn uniformly in [-bound, bound] (from their own streams: ``seed``, ``index``)
    and replaces an answer only with one that fools the model."""
    if bound == 0 or steps == 0 or len(x) == 0:
        return x.detach().clone(), zero
    project = project or (lambda p: p.clamp(-bound, bound))
    penalty = (lambda p: weight * smoothness(p)) if weight else None

    def attempt(active: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        init = project(bound * uniform_start(seed, index, len(x), active, tuple(zero.shape[1:]), r, like=zero)) \
            if r else zero
        return adam_ascent(model, x[active], y[active], init=init, render=lambda a, p: render(active[a], p),
                           project=project, penalty=penalty, steps=steps, lr=lr, lr_final=lr_final)

    return with_restarts(model, x, y, attempt, restarts, params=True)
