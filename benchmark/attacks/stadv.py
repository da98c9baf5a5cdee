"""StAdv (Xiao et al., ICLR 2018) as OODRobustBench and Laidlaw et al. (ICLR 2021) bound it.

Every output pixel samples the input at its own position plus a flow vector (bilinear).  The
threat is the one of ``perceptual-advex``'s ``StAdvAttack`` (its ``mister_ed`` ``FullSpatial``
transform), geometry included: each flow coordinate is bounded by ``bound`` (default 0.05) in
``grid_sample``'s normalised coordinates with ``align_corners=False`` (the reference calls
``affine_grid``/``grid_sample`` without it), where the image spans [-1, 1] from its outer edge
to its outer edge, so 0.05 is 0.05 W / 2 pixels (0.8 px on 32x32, 0.4 px on 16x16); sampling
positions are clipped to [-1, 1], the outer edges, and outside the image ``grid_sample`` reads
zeros, so a border pixel moved outwards mixes in the zero padding, as in the reference.  The
attack maximises the Carlini-Wagner margin minus ``smooth_weight`` (default 0.0025 / bound)
times StAdv's flow loss (the edge value repeated at the border, as the reference) with Adam
(learning rate 0.01 at the bound 0.05, scaled with the bound elsewhere; optionally decayed,
``lr_final``) for ``steps`` iterations (the reference: 100 on CIFAR-10, 200 on ImageNet),
clipping the flow into the box after each step.  It starts from the zero flow (the clean image);
restarts (``restarts``) start the still-robust examples from a random flow.  Written from the
papers; no code copied.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from ._adam import bounded_adam, scaled_settings
from .transforms import nonneg, threat_params

SMOOTH_PER_BOUND = 0.0025  # the reference's weight of the flow loss is 0.0025 / bound
LR_PER_BOUND = 0.01 / 0.05  # the reference's Adam learning rate 0.01 at its bound 0.05, scaled with the bound


def identity_grid(n: int, h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel centres in normalised coordinates with ``align_corners=False`` (the image's outer
    edges at -1 and 1, as ``affine_grid`` makes them in the reference), (N, H, W, 2) as (x, y)."""
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=device, dtype=dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1)[None].expand(n, h, w, 2)


def flow_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Warp ``x`` by ``flow`` (N, H, W, 2), offsets (x, y) in normalised coordinates; bilinear
    with ``align_corners=False`` and zeros outside the image, as the reference's ``grid_sample``:
    a border pixel moved towards the edge mixes in the zero padding (up to half at the edge,
    where :func:`project_flow` stops it).  The zero flow returns ``x`` up to rounding."""
    n, _, h, w = x.shape
    grid = identity_grid(n, h, w, x.device, x.dtype) + flow
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0.0, 1.0)


def flow_loss(flow: torch.Tensor) -> torch.Tensor:
    """StAdv's smoothness term per example: for every pixel and each of its 4 neighbours,
    sqrt(||flow_p - flow_q||^2 + 1e-10), summed; a border pixel's missing neighbour is the pixel
    itself (the edge value repeated, a zero difference), as in the reference's implementation
    (its shift matrices map the first and last row and column onto themselves, not around)."""
    f = flow.permute(0, 3, 1, 2)  # (N, 2, H, W)
    total = torch.zeros(len(f), device=f.device, dtype=f.dtype)
    for dim in (2, 3):
        d = f.diff(dim=dim).pow(2).sum(1)  # (N, H-1, W) or (N, H, W-1): each pair, counted from both sides
        edges = 2 * (f[0, 0].numel() // f.shape[dim])  # the pixels at either end: 1e-10 ** 0.5 each
        total = total + 2 * (d + 1e-10).sqrt().flatten(1).sum(1) + edges * 1e-5
    return total


def project_flow(flow: torch.Tensor, bound: float) -> torch.Tensor:
    """Each coordinate into [-bound, bound], and every sampling position inside the image's outer
    edges (identity + flow in [-1, 1]), as the reference clips its grid before projecting (with
    ``align_corners=False`` the border pixels can reach the edge only when ``bound`` exceeds
    half a pixel, 1 / W: not on 16x16 at 0.05, on 32x32 and larger)."""
    n, h, w, _ = flow.shape
    ident = identity_grid(1, h, w, flow.device, flow.dtype)
    return flow.clamp(-bound, bound).clamp(min=-1 - ident, max=1 - ident)


def stadv(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, bound: float = 0.05, steps: int = 100,
          lr: float | None = None, smooth_weight: float | None = None, lr_final: float = 1.0, restarts: int = 1,
          seed: int = 0, index=None, return_flow: bool = False):
    """The StAdv attack; with ``return_flow`` also returns the flow (N, H, W, 2) with
    ``flow_warp(x, flow)`` equal to the returned images."""
    n, _, h, w = x.shape
    lr, weight = scaled_settings(bound, lr, smooth_weight, lr_per_bound=LR_PER_BOUND,
                                 smooth_per_bound=SMOOTH_PER_BOUND)
    best, flow = bounded_adam(
        model, x, y, zero=torch.zeros(n, h, w, 2, device=x.device, dtype=x.dtype),
        render=lambda active, f: flow_warp(x[active], f), bound=bound, steps=steps, lr=lr, weight=weight,
        smoothness=flow_loss, project=lambda f: project_flow(f, bound), lr_final=lr_final, restarts=restarts,
        seed=seed, index=index)
    return (best, flow) if return_flow else best


@register("stadv")
def stadv_attack(model, x, y, threat, *, seed: int = 0, index=None, steps: int = 100, lr: float | None = None,
                 smooth_weight: float | None = None, lr_final: float = 1.0, restarts: int = 1) -> torch.Tensor:
    """Budget (``threat.params``): ``bound``, the largest flow coordinate in normalised grid units
    (required).  Settings: ``steps`` (the reference: 100 CIFAR-10, 200 ImageNet), Adam ``lr``
    (default bound / 5: the reference's 0.01 at 0.05), ``lr_final`` (the last step's learning
    rate over the first's, half-cosine in between; 1 as the reference), ``smooth_weight``
    (default 0.0025 / bound), ``restarts`` (later runs from a random flow, on the still-robust
    examples only).  Deterministic with one run: ``seed`` draws the restarts' starts."""
    p = threat_params(threat, "stadv", {"bound": None})
    return stadv(model, x, y, bound=nonneg(p["bound"], threat.path or threat.id, "bound"), steps=steps, lr=lr,
                 smooth_weight=smooth_weight, lr_final=lr_final, restarts=restarts, seed=seed, index=index)
