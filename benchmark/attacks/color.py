"""Brightness-contrast threat (``brightness-contrast``): an adversarial brightness shift and
contrast scaling per image.  Not ReColorAdv (that is :mod:`.recolor`); kept as an extra threat.

Lighting changes are the most common natural perturbation and are global: every pixel moves
together, so the per-image threat has only two numbers (or two per channel), far from any
small Lp ball.  The space is low-dimensional, so the attack first searches a grid over the whole
box and then refines the best point by projected gradient ascent.
"""
from __future__ import annotations

from typing import Any

import torch

from . import register
from .transforms import per_example_loss, threat_params

# Only for keys an entry leaves out (calibrated on digits, see docs/threats.md).
DEFAULTS = {"brightness": 0.2, "contrast": 0.5, "per_channel": False}


def adjust(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """``clip(x + (c - 1)(x - m) + b)``: scale contrast by ``c`` about the image's mean grey ``m``
    (a constant, as in torchvision's adjust_contrast), then add ``b``.  ``b`` and ``c`` have shape
    (N,) or (N, C); ``b = 0, c = 1`` returns ``x`` exactly."""
    m = x.detach().mean(dim=(1, 2, 3), keepdim=True)
    b = brightness.view(len(x), -1, 1, 1)
    c = contrast.view(len(x), -1, 1, 1)
    return (x + (c - 1) * (x - m) + b).clamp(0.0, 1.0)


def _range(value: Any, where: str, key: str, centre: float) -> tuple[float, float]:
    """A range written ``[lo, hi]`` or as a number ``d`` meaning ``[centre - d, centre + d]``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = centre - float(value), centre + float(value)
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        lo, hi = float(value[0]), float(value[1])
    else:
        raise ValueError(f"{where}: key 'params.{key}': expected [lo, hi] or a number, got {value!r}")
    if not lo <= centre <= hi:
        raise ValueError(f"{where}: key 'params.{key}': the range [{lo}, {hi}] must contain {centre} "
                         "(no change), so that the threat contains the clean image")
    if key == "contrast" and lo < 0:
        raise ValueError(f"{where}: key 'params.contrast': a negative contrast inverts the image; use lo >= 0")
    return lo, hi


def color_attack_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                    brightness: tuple[float, float], contrast: tuple[float, float], per_channel: bool = False,
                    grid: int = 5, steps: int = 10, loss: str = "ce", seed: int = 0,
                    return_params: bool = False):
    """Grid search over the (brightness, contrast) box, then ``steps`` of projected signed
    gradient ascent from the best grid point.  Keeps per example the first point that fools the
    model, else the one with the highest loss.  With ``return_params`` also returns ``(b, c)``,
    each (N, C') with C' = C if ``per_channel`` else 1, such that ``adjust(x, b, c)`` is x_adv."""
    n, ch = len(x), (x.shape[1] if per_channel else 1)
    blo, bhi = brightness
    clo, chi = contrast
    b_best = torch.zeros(n, ch, device=x.device, dtype=x.dtype)
    c_best = torch.ones(n, ch, device=x.device, dtype=x.dtype)
    best = x.detach().clone()
    if blo == bhi == 0 and clo == chi == 1:
        return (best, b_best, c_best) if return_params else best
    best_loss = torch.full((n,), float("-inf"), device=x.device)
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)

    def consider(active: torch.Tensor, b: torch.Tensor, c: torch.Tensor, logits: torch.Tensor, xa: torch.Tensor):
        lo = per_example_loss(logits, y[active], loss).detach()
        wrong = logits.argmax(1) != y[active]
        better = (lo > best_loss[active]) | wrong
        take = active[better]
        best[take], best_loss[take] = xa.detach()[better], lo[better]
        b_best[take], c_best[take] = b.detach()[better], c.detach()[better]
        fooled[active[wrong]] = True

    # 1) grid over the box (corners included); the identity first, so clean errors cost nothing
    bs = torch.linspace(blo, bhi, grid) if bhi > blo else torch.tensor([blo])
    cs = torch.linspace(clo, chi, grid) if chi > clo else torch.tensor([clo])
    pts = torch.cat([torch.tensor([[0.0, 1.0]]), torch.cartesian_prod(bs, cs)])
    with torch.no_grad():
        for bv, cv in pts.tolist():
            active = (~fooled).nonzero().squeeze(1)
            if len(active) == 0:
                break
            b = torch.full((len(active), ch), bv, device=x.device, dtype=x.dtype)
            c = torch.full((len(active), ch), cv, device=x.device, dtype=x.dtype)
            xa = adjust(x[active], b, c)
            consider(active, b, c, model(xa), xa)
    # 2) projected signed gradient ascent from the best grid point
    active = (~fooled).nonzero().squeeze(1)
    if len(active) == 0 or steps == 0:
        return (best, b_best, c_best) if return_params else best
    sb, sc = (bhi - blo) / 8, (chi - clo) / 8
    b, c = b_best[active].clone(), c_best[active].clone()
    for _ in range(steps):
        b.requires_grad_(True)
        c.requires_grad_(True)
        with torch.enable_grad():
            xa = adjust(x[active], b, c)
            logits = model(xa)
            gb, gc = torch.autograd.grad(per_example_loss(logits, y[active], loss).sum(), (b, c))
        with torch.no_grad():
            b = (b + sb * gb.sign()).clamp(blo, bhi)
            c = (c + sc * gc.sign()).clamp(clo, chi)
            xa = adjust(x[active], b, c)
            consider(active, b, c, model(xa), xa)
            keep = ~fooled[active]
            if not keep.any():
                break
            active, b, c = active[keep], b[keep], c[keep]
    return (best, b_best, c_best) if return_params else best


@register("brightness-contrast")
def color_attack(model, x, y, threat, *, seed: int = 0, index=None, grid: int = 5, steps: int = 10,
                 loss: str = "ce") -> torch.Tensor:
    """Budget (``threat.params``): ``brightness`` [lo, hi] added to every pixel (a number d means
    [-d, d]), ``contrast`` [lo, hi] scaling about the image's mean grey (a number d means
    [1 - d, 1 + d]), ``per_channel`` (default false: one pair per image; true: one per channel,
    which also shifts the colour balance).  Keys left out: brightness 0.2, contrast 0.5, one pair
    per image.  Settings: ``grid`` points per axis, ``steps``, ``loss``."""
    p = threat_params(threat, "brightness-contrast", DEFAULTS)
    where = threat.path or threat.id
    if not isinstance(p["per_channel"], bool):
        raise ValueError(f"{where}: key 'params.per_channel': expected true or false, got {p['per_channel']!r}")
    return color_attack_fn(model, x, y, brightness=_range(p["brightness"], where, "brightness", 0.0),
                           contrast=_range(p["contrast"], where, "contrast", 1.0), per_channel=p["per_channel"],
                           grid=grid, steps=steps, loss=loss, seed=seed)
