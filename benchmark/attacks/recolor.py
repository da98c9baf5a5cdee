"""ReColorAdv (Laidlaw & Feizi, NeurIPS 2019) as OODRobustBench and Laidlaw et al. (2021) bound it.

The threat is one colour function per image, applied to every pixel alike: a grid of control
points over CIELUV (L*, u*, v* scaled to [0, 1] as L/100, (u+100)/200, (v+100)/200), each moved
by at most ``bound`` (default 0.06) per coordinate; a pixel's new colour is its colour plus the
trilinear interpolation of the displacements around it.  Grid resolution 16 (L) x 32 (u) x 32
(v), as ``perceptual-advex``'s ``ReColorAdvAttack``.  The attack maximises the Carlini-Wagner
margin minus ``smooth_weight`` (default 0.0036 / bound) times the function's smoothness
(for every control point and each neighbour along each axis, the length of their displacement
difference) with Adam (learning rate 0.001 at the bound 0.06, scaled with the bound elsewhere)
for ``steps`` iterations (the reference: 100 on CIFAR-10, 200 on ImageNet), after each step
clipping the control points into the [0, 1] cube and within ``bound`` of their place (the
reference also maps them into the sRGB gamut; here the output colours are clipped to it); it
starts from the identity (no random draw).  Grey images (one channel) get the same threat restricted to lightness: a curve
L* -> L* + d(L*) with 16 control points, |d| <= bound, applied to the grey value read as sRGB
(grey has u* = v* = 0).  Written from the papers and the CIE formulas; no code copied.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from ._adam import bounded_adam, scaled_settings
from .transforms import nonneg, threat_params

SMOOTH_PER_BOUND = 0.0036  # the reference's weight of the smoothness term is 0.0036 / bound
LR_PER_BOUND = 0.001 / 0.06  # the reference's Adam learning rate 0.001 at its bound 0.06, scaled with the bound
RESOLUTION = (16, 32, 32)  # control points along L*, u*, v*
# sRGB (D65) <-> CIE XYZ, and the D65 white point's u', v'
RGB_TO_XYZ = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9504]])
XYZ_TO_RGB = torch.linalg.inv(RGB_TO_XYZ.double()).float()  # exact inverse: the identity round-trips
U_WHITE, V_WHITE = 0.1978, 0.4683
EPS = 1e-10


def _linear(c: torch.Tensor) -> torch.Tensor:
    """sRGB gamma decoding."""
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp_min(EPS) + 0.055) / 1.055) ** 2.4)


def _gamma(c: torch.Tensor) -> torch.Tensor:
    """sRGB gamma encoding."""
    return torch.where(c <= 0.0031308, 12.92 * c, 1.055 * c.clamp_min(EPS) ** (1 / 2.4) - 0.055)


def _lightness(y: torch.Tensor) -> torch.Tensor:
    """CIE L* (0..100) of relative luminance Y (white = 1)."""
    return torch.where(y <= (6 / 29) ** 3, (29 / 3) ** 3 * y, 116 * y.clamp_min(EPS) ** (1 / 3) - 16)


def _luminance(lightness: torch.Tensor) -> torch.Tensor:
    return torch.where(lightness <= 8, lightness * (3 / 29) ** 3, ((lightness + 16) / 116) ** 3)


def rgb_to_luv(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) sRGB in [0, 1] -> scaled CIELUV (L/100, (u+100)/200, (v+100)/200)."""
    xyz = torch.einsum("ij,njhw->nihw", RGB_TO_XYZ.to(rgb), _linear(rgb))
    x, y, z = xyz.unbind(1)
    denom = x + 15 * y + 3 * z + EPS
    lightness = _lightness(y)
    u = 13 * lightness * (4 * x / denom - U_WHITE)
    v = 13 * lightness * (9 * y / denom - V_WHITE)
    return torch.stack([lightness / 100, (u + 100) / 200, (v + 100) / 200], 1)


def luv_to_rgb(luv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_luv`; colours outside the sRGB gamut are clipped to [0, 1]."""
    lightness, u, v = luv[:, 0] * 100, luv[:, 1] * 200 - 100, luv[:, 2] * 200 - 100
    up = u / (13 * lightness + EPS) + U_WHITE
    vp = v / (13 * lightness + EPS) + V_WHITE
    y = _luminance(lightness)
    x = y * 9 * up / (4 * vp + EPS)
    z = y * (12 - 3 * up - 20 * vp) / (4 * vp + EPS)
    lin = torch.einsum("ij,njhw->nihw", XYZ_TO_RGB.to(luv), torch.stack([x, y, z], 1).clamp(0, 1.1))
    return _gamma(lin.clamp(0, 1)).clamp(0.0, 1.0)


def recolor_apply(x: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Apply colour functions: ``disp`` (N, 3, 16, 32, 32) displacements of the control points
    for colour images, (N, 1, 1, 16) for grey ones.  Zero displacements return ``x`` up to the
    rounding of the colour-space round trip."""
    n, c, h, w = x.shape
    if c == 1:  # a lightness curve for grey images
        lightness = _lightness(_linear(x)) / 100  # (N, 1, H, W) in [0, 1]
        grid = torch.stack([lightness.flatten(1) * 2 - 1, torch.zeros_like(lightness.flatten(1))], -1)[:, None]
        shift = F.grid_sample(disp, grid, mode="bilinear", padding_mode="border", align_corners=True)
        new = (lightness + shift.view(n, 1, h, w)).clamp(0, 1) * 100
        return _gamma(_luminance(new).clamp(0, 1)).clamp(0.0, 1.0)
    if c != 3:
        raise ValueError(f"recolor: expected images with 1 or 3 channels, got {c}")
    luv = rgb_to_luv(x)
    # grid_sample's 5-D coordinates are (W, H, D) = (v, u, L), each mapped from [0, 1] to [-1, 1]
    coords = luv.flip(1).permute(0, 2, 3, 1).reshape(n, 1, 1, h * w, 3) * 2 - 1
    shift = F.grid_sample(disp, coords, mode="bilinear", padding_mode="border", align_corners=True)
    return luv_to_rgb(luv + shift.view(n, 3, h, w))


def zero_params(x: torch.Tensor) -> torch.Tensor:
    n, c = x.shape[:2]
    shape = (n, 1, 1, RESOLUTION[0]) if c == 1 else (n, 3, *RESOLUTION)
    return torch.zeros(shape, device=x.device, dtype=x.dtype)


def control_points(disp: torch.Tensor) -> torch.Tensor:
    """The identity positions of the control points, shaped like ``disp`` (broadcastable)."""
    if disp.shape[1] == 1:
        return torch.linspace(0, 1, disp.shape[-1], device=disp.device, dtype=disp.dtype).view(1, 1, 1, -1)
    axes = [torch.linspace(0, 1, r, device=disp.device, dtype=disp.dtype) for r in disp.shape[2:]]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), 0)[None]  # (1, 3, L, u, v)


def project_params(disp: torch.Tensor, bound: float) -> torch.Tensor:
    """Each control point within ``bound`` of its identity position per coordinate, and inside
    the [0, 1] colour cube (the reference clips its control points into the cube, then projects)."""
    ident = control_points(disp)
    return disp.clamp(-bound, bound).clamp(min=-ident, max=1 - ident)


def smoothness(disp: torch.Tensor) -> torch.Tensor:
    """Per example, for every control point and each of its neighbours along each grid axis
    (both sides, the border replicated, as the reference counts them), the Euclidean length of
    the difference of their displacements, summed."""
    total = torch.zeros(len(disp), device=disp.device, dtype=disp.dtype)
    for axis in range(2, disp.dim()):
        if disp.shape[axis] < 2:
            continue
        d = disp.diff(dim=axis)
        border = disp.numel() // len(disp) // disp.shape[1] // disp.shape[axis] * 2  # the replicated ends
        total = total + 2 * (d.pow(2).sum(1) + EPS).sqrt().flatten(1).sum(1) + border * EPS ** 0.5
    return total


def recolor(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, bound: float = 0.06, steps: int = 100,
            lr: float | None = None, smooth_weight: float | None = None, lr_final: float = 1.0, restarts: int = 1,
            seed: int = 0, index=None, return_params: bool = False):
    """The ReColorAdv attack; with ``return_params`` also returns the displacements, with
    ``recolor_apply(x, params)`` equal to the returned images."""
    lr, weight = scaled_settings(bound, lr, smooth_weight, lr_per_bound=LR_PER_BOUND,
                                 smooth_per_bound=SMOOTH_PER_BOUND)
    best, disp = bounded_adam(
        model, x, y, zero=zero_params(x), render=lambda active, d: recolor_apply(x[active], d), bound=bound,
        steps=steps, lr=lr, weight=weight, smoothness=smoothness, project=lambda d: project_params(d, bound),
        lr_final=lr_final, restarts=restarts, seed=seed, index=index)
    return (best, disp) if return_params else best


@register("recolor")
def recolor_attack(model, x, y, threat, *, seed: int = 0, index=None, steps: int = 100, lr: float | None = None,
                   smooth_weight: float | None = None, lr_final: float = 1.0, restarts: int = 1) -> torch.Tensor:
    """Budget (``threat.params``): ``bound``, the largest displacement of a control point per
    scaled CIELUV coordinate (required).  Settings: ``steps`` (the reference: 100 CIFAR-10, 200
    ImageNet), Adam ``lr`` (default bound / 60: the reference's 0.001 at 0.06), ``smooth_weight``
    (default 0.0036 / bound), ``lr_final`` and ``restarts`` (as :func:`.stadv.stadv_attack`).
    Deterministic with one run: ``seed`` draws the restarts' starts."""
    p = threat_params(threat, "recolor", {"bound": None})
    return recolor(model, x, y, bound=nonneg(p["bound"], threat.path or threat.id, "bound"), steps=steps, lr=lr,
                   smooth_weight=smooth_weight, lr_final=lr_final, restarts=restarts, seed=seed, index=index)
