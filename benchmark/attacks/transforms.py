"""Rotation-translation threat: the worst of k small rotations and shifts (Engstrom et al. 2019).

Spatial transforms are a threat that Lp-trained defenses were never trained for, and a grid (or
random) search over them is a strong attack because the space is only three-dimensional.  This
module also holds the small helpers the other non-Lp attacks share (budget parsing, losses).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F

from . import register
from ._draws import Draws
from ._lp import _bcast

LOSSES = ("ce", "margin")
# Used only for keys a threat entry leaves out: Engstrom et al.'s CIFAR-10 budget (+-30 degrees,
# +-3 pixels of 32).  Registry entries should state their budget explicitly.
DEFAULTS = {"max_rotation": 30.0, "max_translation": 3.0}


# --------------------------------------------------------------------------- shared helpers
def threat_params(threat: Any, kind: str, allowed: Mapping[str, Any]) -> dict[str, Any]:
    """The threat's ``params`` with defaults filled in; unknown keys and wrong kinds raise.

    ``allowed`` maps each key to its default (``None``: the key is required).  The error names
    the threat's file and key, so a typo in a registry entry is found at once.
    """
    where = getattr(threat, "path", "") or getattr(threat, "id", "<threat>")
    if threat.kind != kind:
        raise ValueError(f"{where}: key 'kind': this attack needs a '{kind}' threat, "
                         f"'{threat.id}' is kind '{threat.kind}'")
    params = dict(getattr(threat, "params", {}) or {})
    for key in params:
        if key not in allowed:
            raise ValueError(f"{where}: key 'params.{key}': unknown for a '{kind}' threat "
                             f"(allowed: {', '.join(allowed)})")
    out = {}
    for key, default in allowed.items():
        if key in params:
            out[key] = params[key]
        elif default is None:
            raise ValueError(f"{where}: key 'params.{key}': required for a '{kind}' threat")
        else:
            out[key] = default
    return out


def nonneg(value: Any, where: str, key: str) -> float:
    """A budget number that must be >= 0 (errors name the file and key)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{where}: key 'params.{key}': expected a number >= 0, got {value!r}")
    return float(value)


def per_example_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """The loss an attack maximises, per example: cross-entropy or the logit margin
    ``max_{j != y} z_j - z_y`` (positive exactly when the example is misclassified)."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "margin":
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.clone()
        other.scatter_(1, y[:, None], float("-inf"))
        return other.amax(1) - true
    raise ValueError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")


def signed_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, param_shape: tuple[int, ...],
               init: Callable[[torch.Tensor, Draws, tuple], torch.Tensor],
               render: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               project: Callable[[torch.Tensor], torch.Tensor], steps: int, step_size: float,
               restarts: int = 1, loss: str = "ce",
               penalty: Callable[[torch.Tensor], torch.Tensor] | None = None,
               seed: int = 0, index=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed-gradient ascent of ``loss`` over a per-example perturbation parameter (a flow
    field, block-DCT coefficients, ...), the loop the parametric non-Lp attacks share.

    ``init(active, draws, purpose)`` draws the start for the examples ``active`` (indices into
    ``x``) from their own streams (:mod:`._draws`, keyed by ``seed`` and ``index``),
    ``render(active, param)`` makes their images, ``project`` maps a parameter back into the
    budget; ``penalty(param)`` (per example) is subtracted from the loss.  Keeps per example the
    first fooling point, else the last iterate; a restart attacks only the examples not yet
    fooled.  Returns ``(images, params)``, params of shape ``(len(x), *param_shape)``.
    """
    n = len(x)
    best = x.detach().clone()
    best_param = torch.zeros((n, *param_shape), device=x.device, dtype=x.dtype)
    draws = Draws(seed, index, n)
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    for r in range(max(1, restarts)):
        active = (~fooled).nonzero().squeeze(1)
        if len(active) == 0:
            break
        ya = y[active]
        param = init(active, draws.take(active), ("start", r))
        done = torch.zeros(len(active), dtype=torch.bool, device=x.device)
        for it in range(steps + 1):
            param.requires_grad_(True)
            with torch.enable_grad():
                xa = render(active, param)
                logits = model(xa)
                obj = per_example_loss(logits, ya, loss)
                if penalty is not None:
                    obj = obj - penalty(param)
                (grad,) = torch.autograd.grad(obj.sum(), param)
            with torch.no_grad():
                keep = ~done  # record the first fooling point, and the latest one for the others
                best[active[keep]] = xa.detach()[keep]
                best_param[active[keep]] = param.detach()[keep]
                done |= logits.argmax(1) != ya
                if it == steps or bool(done.all()):
                    break
                mask = _bcast(done, grad)
                step = torch.where(mask, torch.zeros_like(grad), step_size * grad.sign())
                param = project(param.detach() + step)
        fooled[active[done]] = True
    return best, best_param


# --------------------------------------------------------------------------- the transform
def rotate_translate(x: torch.Tensor, angle_deg: torch.Tensor | float, tx: torch.Tensor | float,
                     ty: torch.Tensor | float) -> torch.Tensor:
    """Rotate each image about its centre by ``angle_deg`` (clockwise as displayed, rows pointing
    down), then shift it by ``(tx, ty)`` pixels (right, down); bilinear, black fill outside.

    Arguments are scalars or per-example tensors of shape (N,).  The pixel-space rotation is
    mapped to normalised coordinates so non-square images rotate rigidly.
    """
    n, _, h, w = x.shape
    dev, dt = x.device, x.dtype

    def col(v: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(v, dtype=dt, device=dev)
        return t.expand(n) if t.dim() == 0 else t

    a, tx, ty = col(angle_deg) * (math.pi / 180), col(tx), col(ty)
    cos, sin = torch.cos(a), torch.sin(a)
    # affine_grid maps output coordinates to input ones, so write down the inverse transform:
    # input = R(-a) (output - t), in normalised units (u = 2 px / W, v = 2 py / H).
    txn, tyn = 2 * tx / w, 2 * ty / h
    r = w / h
    theta = torch.stack([
        torch.stack([cos, sin / r, -(cos * txn + sin / r * tyn)], 1),
        torch.stack([-sin * r, cos, -(-sin * r * txn + cos * tyn)], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp(0.0, 1.0)


def candidates(max_rotation: float, max_translation: float, *, search: str = "grid", rotations: int = 5,
               translations: int = 3, k: int = 100, seed: int = 0) -> torch.Tensor:
    """The transforms the attack tries, as rows ``(angle_deg, tx, ty)``; the identity comes first.

    ``grid``: ``rotations`` angles evenly in [-R, R] times ``translations`` x ``translations``
    shifts evenly in [-T, T]^2.  ``random``: ``k`` uniform draws from the box (seeded).
    """
    if search == "grid":
        ang = torch.linspace(-max_rotation, max_rotation, rotations) if max_rotation > 0 else torch.zeros(1)
        tr = torch.linspace(-max_translation, max_translation, translations) if max_translation > 0 \
            else torch.zeros(1)
        rows = torch.cartesian_prod(ang, tr, tr)
    elif search == "random":
        gen = torch.Generator().manual_seed(seed)
        u = torch.rand(k, 3, generator=gen, dtype=torch.float64) * 2 - 1
        rows = (u * torch.tensor([max_rotation, max_translation, max_translation], dtype=torch.float64)).float()
    else:
        raise ValueError(f"unknown search {search!r} (choose 'grid' or 'random')")
    rows = torch.unique(rows, dim=0)
    ident = (rows == 0).all(1)
    return torch.cat([torch.zeros(1, 3), rows[~ident]])


def worst_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cands: Iterable[torch.Tensor],
             apply, *, loss: str = "ce", early_stop: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example, the candidate that fools the model first (``early_stop``), else the one with
    the highest loss.  ``apply(x_sub, cand)`` makes the transformed images.  Returns the chosen
    images and the chosen candidate index per example."""
    best = x.detach().clone()
    best_loss = torch.full((len(x),), float("-inf"), device=x.device)
    choice = torch.zeros(len(x), dtype=torch.long, device=x.device)
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    with torch.no_grad():
        for i, cand in enumerate(cands):
            active = (~fooled).nonzero().squeeze(1) if early_stop else torch.arange(len(x), device=x.device)
            if len(active) == 0:
                break
            xt = apply(x[active], cand)
            logits = model(xt)
            lo = per_example_loss(logits, y[active], loss)
            wrong = logits.argmax(1) != y[active]
            better = (lo > best_loss[active]) | wrong
            if early_stop:
                fooled[active[wrong]] = True
            take = active[better]
            best[take] = xt[better]
            best_loss[take] = lo[better]
            choice[take] = i
    return best, choice


def rotation_translation(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, max_rotation: float,
                         max_translation: float, search: str = "grid", rotations: int = 5, translations: int = 3,
                         k: int = 100, loss: str = "ce", seed: int = 0,
                         return_params: bool = False):
    """Worst-of-k rotation-translation attack.  With ``return_params`` also returns the chosen
    ``(angle_deg, tx, ty)`` per example (N, 3)."""
    cands = candidates(max_rotation, max_translation, search=search, rotations=rotations,
                       translations=translations, k=k, seed=seed).to(x.device)

    def apply(xs: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if bool((c == 0).all()):
            return xs.clone()  # the identity is exact, so a zero budget gives clean accuracy
        return rotate_translate(xs, c[0], c[1], c[2])

    x_adv, choice = worst_of(model, x, y, cands, apply, loss=loss)
    return (x_adv, cands[choice]) if return_params else x_adv


@register("rotation-translation")
def rotation_translation_attack(model, x, y, threat, *, seed: int = 0, index=None, search: str = "grid",
                                rotations: int = 5,
                                translations: int = 3, k: int = 100, loss: str = "ce") -> torch.Tensor:
    """Budget (``threat.params``): ``max_rotation`` in degrees (angles in [-R, R]) and
    ``max_translation`` in pixels (each of the horizontal and vertical shifts in [-T, T]).
    The image is rotated about its centre, shifted, and filled with black outside.  Keys left
    out default to Engstrom et al.'s CIFAR-10 budget (30 degrees, 3 pixels).
    Settings: ``search`` grid (``rotations`` x ``translations``^2 points) or random (``k`` draws,
    the same for every example: they depend on ``seed`` only, never on the batch).
    """
    p = threat_params(threat, "rotation-translation", DEFAULTS)
    where = threat.path or threat.id
    return rotation_translation(
        model, x, y, max_rotation=nonneg(p["max_rotation"], where, "max_rotation"),
        max_translation=nonneg(p["max_translation"], where, "max_translation"), search=search,
        rotations=rotations, translations=translations, k=k, loss=loss, seed=seed)
