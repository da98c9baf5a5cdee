"""JPEG threat: an Linf-bounded perturbation of the 8x8 block-DCT coefficients (Kang et al. 2019).

JPEG stores an image as the DCT coefficients of 8x8 blocks (of luma and chroma for colour
images).  Bounding the change of each coefficient, not of each pixel, gives perturbations made of
whole-block cosine patterns: the artefacts of compression, and far outside the pixel Linf ball
(each pixel can move by up to 16x the budget).  The map is linear and orthonormal, so PGD runs
in coefficient space exactly.  Images must have height and width divisible by 8.
"""
from __future__ import annotations

import functools
import math

import torch

from . import register
from .transforms import nonneg, signed_pgd, threat_params

BLOCK = 8
DEFAULT_EPS = 0.1  # only for entries that leave the budget out (calibrated on digits)
# ITU-R BT.601 full-range RGB -> YCbCr (the JPEG colour transform), without the offsets
_RGB2YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


@functools.lru_cache(maxsize=4)
def dct_matrix(n: int = BLOCK) -> torch.Tensor:
    """The orthonormal DCT-II matrix D (rows are basis vectors): coefficients of a block are D B D^T."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


def _blocks(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, c, h // BLOCK, BLOCK, w // BLOCK, BLOCK).transpose(3, 4)  # (N, C, hb, wb, 8, 8)


def _unblocks(b: torch.Tensor) -> torch.Tensor:
    n, c, hb, wb, _, _ = b.shape
    return b.transpose(3, 4).reshape(n, c, hb * BLOCK, wb * BLOCK)


def to_coeffs(x: torch.Tensor) -> torch.Tensor:
    """Images -> block-DCT coefficients of (Y, Cb, Cr) for 3 channels, of the grey level for 1."""
    if x.shape[1] == 3:
        x = torch.einsum("ij,njhw->nihw", _RGB2YCC.to(x), x)
    d = dct_matrix().to(x)
    return _unblocks(d @ _blocks(x) @ d.T)


def from_coeffs(z: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_coeffs` (no clipping)."""
    d = dct_matrix().to(z)
    x = _unblocks(d.T @ _blocks(z) @ d)
    if x.shape[1] == 3:
        x = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB2YCC).to(x), x)
    return x


def jpeg_linf(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 20,
              step_size: float | None = None, restarts: int = 1, loss: str = "ce", seed: int = 0, index=None,
              return_delta: bool = False):
    """PGD on a coefficient perturbation ``delta`` with ``|delta|_inf <= eps``; the image is
    ``clip(from_coeffs(to_coeffs(x) + delta))``.  Keeps per example the first fooling point.
    With ``return_delta`` also returns that ``delta``."""
    h, w = x.shape[-2:]
    if h % BLOCK or w % BLOCK:
        raise ValueError(f"the jpeg attack needs image sides divisible by {BLOCK}, got {h}x{w}")
    if eps == 0 or steps == 0:
        best = x.detach().clone()
        return (best, torch.zeros_like(best)) if return_delta else best
    z0 = to_coeffs(x.detach())
    best, best_delta = signed_pgd(
        model, x, y, param_shape=tuple(x.shape[1:]),
        init=lambda active, draws, purpose: (draws.rand(x.shape[1:], *purpose, like=x) * 2 - 1) * eps,
        render=lambda active, delta: from_coeffs(z0[active] + delta).clamp(0.0, 1.0),
        project=lambda delta: delta.clamp(-eps, eps),
        steps=steps, step_size=step_size if step_size is not None else 2.5 * eps / steps,
        restarts=restarts, loss=loss, seed=seed, index=index)
    return (best, best_delta) if return_delta else best


@register("jpeg")
def jpeg_attack(model, x, y, threat, *, seed: int = 0, index=None, steps: int = 20, step_size: float | None = None,
                restarts: int = 1, loss: str = "ce") -> torch.Tensor:
    """Budget (``threat.params``): ``eps``, the largest change of any orthonormal 8x8 block-DCT
    coefficient (of luma/chroma for colour images), in the units of images in [0, 1]; a pixel
    can move by up to 16 eps.  Settings: ``steps``, ``step_size`` (default 2.5 eps / steps),
    ``restarts``, ``loss`` ce or margin.  Left out, ``eps`` is 0.1."""
    p = threat_params(threat, "jpeg", {"eps": DEFAULT_EPS})
    return jpeg_linf(model, x, y, eps=nonneg(p["eps"], threat.path or threat.id, "eps"), steps=steps,
                     step_size=step_size, restarts=restarts, loss=loss, seed=seed, index=index)
