"""Pixel-flow threat (``pixel-flow``): a per-pixel displacement field bounded in pixels.

Not StAdv as the reference benchmark measures it (that is :mod:`.stadv`: a per-coordinate bound
in normalised grid units, Adam, the flow-smoothness term); this is our own variant, kept as an
extra threat.

Each output pixel samples the input at its own position plus a flow vector.  Pixel values are
never changed, only moved, so the perturbation is large in every Lp norm yet looks like a
slight local warp: a threat shift that Lp training does not cover.  Unlike StAdv's unbounded
Lagrangian form, the budget here is a hard bound on every flow vector's length (projected
gradient ascent on the flow), with StAdv's smoothness penalty as an optional regulariser.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .transforms import nonneg, signed_pgd, threat_params

DEFAULT_MAX_FLOW = 0.5  # pixels; only for entries that leave the budget out


def base_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel centres in grid_sample's normalised coordinates (align_corners=False), (1, H, W, 2)."""
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1)[None]


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Warp images by a flow field (N, 2, H, W) in pixels: channel 0 moves right, channel 1 down
    (the sampling offset).  Bilinear, border-replicating, output clipped to [0, 1]."""
    n, _, h, w = x.shape
    scale = torch.tensor([2.0 / w, 2.0 / h], device=x.device, dtype=x.dtype)
    grid = base_grid(h, w, x.device, x.dtype) + flow.permute(0, 2, 3, 1) * scale
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).clamp(0.0, 1.0)


def flow_magnitude(flow: torch.Tensor) -> torch.Tensor:
    """Length in pixels of every flow vector, (N, H, W)."""
    return flow.pow(2).sum(1).sqrt()


def project_flow(flow: torch.Tensor, max_flow: float) -> torch.Tensor:
    """Shrink every flow vector longer than ``max_flow`` pixels back onto the bound."""
    mag = flow_magnitude(flow).clamp_min(1e-12)
    return flow * torch.clamp(max_flow / mag, max=1.0)[:, None]


def smoothness(flow: torch.Tensor) -> torch.Tensor:
    """StAdv's flow loss per example: sum over 4-neighbour pairs of the flow difference length."""
    dx = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    dy = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    return (dx.pow(2).sum(1) + 1e-8).sqrt().flatten(1).sum(1) + (dy.pow(2).sum(1) + 1e-8).sqrt().flatten(1).sum(1)


def spatial_flow(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, max_flow: float, steps: int = 20,
                 step_size: float | None = None, smooth_weight: float = 0.0, restarts: int = 1,
                 random_init: bool = True, loss: str = "ce", seed: int = 0, index=None,
                 return_flow: bool = False):
    """Projected signed-gradient ascent on a flow field bounded by ``max_flow`` pixels per vector.

    Keeps, per example, the first flow that fools the model (later restarts attack only the
    rest); an example never fooled keeps its last iterate.  With ``return_flow`` also returns the
    flow (N, 2, H, W) such that ``warp(x, flow)`` is ``x_adv``.
    """
    n, _, h, w = x.shape
    if max_flow == 0 or steps == 0:
        best = x.detach().clone()
        return (best, torch.zeros(n, 2, h, w, device=x.device, dtype=x.dtype)) if return_flow else best

    def init(active: torch.Tensor, draws, purpose: tuple) -> torch.Tensor:
        if not random_init:
            return torch.zeros(len(active), 2, h, w, device=x.device, dtype=x.dtype)
        flow = (draws.rand((2, h, w), *purpose, like=x) * 2 - 1) * max_flow
        return project_flow(flow, max_flow)

    best, best_flow = signed_pgd(
        model, x, y, param_shape=(2, h, w), init=init, render=lambda active, flow: warp(x[active], flow),
        project=lambda flow: project_flow(flow, max_flow),
        steps=steps, step_size=step_size if step_size is not None else 2.5 * max_flow / steps,
        restarts=restarts, loss=loss, seed=seed, index=index,
        penalty=(lambda flow: smooth_weight * smoothness(flow)) if smooth_weight else None)
    return (best, best_flow) if return_flow else best


@register("pixel-flow")
def spatial_flow_attack(model, x, y, threat, *, seed: int = 0, index=None, steps: int = 20, step_size: float | None = None,
                        smooth_weight: float = 0.0, restarts: int = 1, random_init: bool = True,
                        loss: str = "ce") -> torch.Tensor:
    """Budget (``threat.params``): ``max_flow``, the largest displacement in pixels any single
    pixel may sample from (the Euclidean length of its flow vector).  Settings: ``steps`` of
    signed gradient ascent of size ``step_size`` (default 2.5 max_flow / steps), ``restarts``,
    ``smooth_weight`` (StAdv's tau; 0 turns the smoothness penalty off), ``loss`` ce or margin.
    Left out, ``max_flow`` is 0.5 pixels (calibrated on digits, see docs/threats.md).
    """
    p = threat_params(threat, "pixel-flow", {"max_flow": DEFAULT_MAX_FLOW})
    return spatial_flow(model, x, y, max_flow=nonneg(p["max_flow"], threat.path or threat.id, "max_flow"),
                        steps=steps, step_size=step_size, smooth_weight=smooth_weight, restarts=restarts,
                        random_init=random_init, loss=loss, seed=seed, index=index)
