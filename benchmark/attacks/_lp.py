"""Projections and steepest-ascent steps onto Lp balls intersected with the [0, 1] box."""
from __future__ import annotations

import torch


def _flat_norm(d: torch.Tensor, p: str) -> torch.Tensor:
    f = d.flatten(1)
    if p == "Linf":
        return f.abs().amax(1)
    if p == "L2":
        return f.norm(p=2, dim=1)
    if p == "L1":
        return f.abs().sum(1)
    raise ValueError(f"unknown norm {p!r}")


def lp_norm(d: torch.Tensor, p: str) -> torch.Tensor:
    """Per-example Lp norm of a batch of perturbations."""
    return _flat_norm(d, p)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, p: str) -> torch.Tensor:
    """Project ``x_adv`` onto {x + d : ||d||_p <= eps} (L1: approximately, by shrinkage) then clip."""
    d = x_adv - x
    if p == "Linf":
        d = d.clamp(-eps, eps)
    elif p == "L2":
        n = _flat_norm(d, "L2").clamp_min(1e-12)
        d = d * _bcast(torch.clamp(eps / n, max=1.0), d)
    elif p == "L1":
        d = project_l1(d, eps)
    else:
        raise ValueError(f"unknown norm {p!r}")
    return (x + d).clamp(0.0, 1.0)


def project_l1(d: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact Euclidean projection of each perturbation onto the L1 ball (Duchi et al. 2008)."""
    shape = d.shape
    f = d.flatten(1)
    norms = f.abs().sum(1)
    inside = norms <= eps
    if inside.all():
        return d
    u, _ = f.abs().sort(dim=1, descending=True)
    css = u.cumsum(1)
    k = torch.arange(1, f.shape[1] + 1, device=d.device, dtype=d.dtype)
    cond = u * k > (css - eps)
    rho = cond.float().cumsum(1).argmax(1)  # last index where cond holds
    theta = (css.gather(1, rho[:, None]).squeeze(1) - eps) / (rho + 1).to(d.dtype)
    proj = f.sign() * (f.abs() - theta[:, None]).clamp_min(0)
    out = torch.where(inside[:, None], f, proj)
    return out.view(shape)


def ascent_step(grad: torch.Tensor, step: float, p: str) -> torch.Tensor:
    """Steepest-ascent direction of size ``step`` for the given norm."""
    if p == "Linf":
        return step * grad.sign()
    if p == "L2":
        n = _flat_norm(grad, "L2").clamp_min(1e-12)
        return step * grad / _bcast(n, grad)
    if p == "L1":
        # sparse steepest ascent: move along the top 1% coordinates of |grad|
        f = grad.flatten(1)
        k = max(1, int(0.01 * f.shape[1]))
        thr = f.abs().topk(k, dim=1).values[:, -1:]
        mask = (f.abs() >= thr).to(grad.dtype)
        g = f.sign() * mask
        g = g / g.abs().sum(1, keepdim=True).clamp_min(1e-12)
        return step * g.view_as(grad)
    raise ValueError(f"unknown norm {p!r}")


def random_start(x: torch.Tensor, eps: float, p: str, gen: torch.Generator) -> torch.Tensor:
    """A random point inside the ball (used for random restarts)."""
    noise = torch.rand(x.shape, generator=gen, device="cpu").to(x.device) * 2 - 1
    if p == "Linf":
        d = noise * eps
    else:
        n = _flat_norm(noise, p).clamp_min(1e-12)
        r = torch.rand(x.shape[0], generator=gen).to(x.device)
        d = noise / _bcast(n, noise) * _bcast(r * eps, noise)
    return (x + d).clamp(0.0, 1.0)
