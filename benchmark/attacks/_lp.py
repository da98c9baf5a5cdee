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
    """Project ``x_adv`` onto {x + d : ||d||_p <= eps} intersected with the [0, 1] box.

    Linf and L2: onto the ball, then clipped (for Linf this is the exact projection onto the
    intersection).  L1: the exact projection onto the intersection (:func:`project_l1_box`);
    projecting onto the ball and clipping afterwards would spend budget on pixels the box then
    cuts off, which makes an L1 attack much weaker (Croce & Hein 2021, "Mind the box")."""
    d = x_adv - x
    if p == "Linf":
        d = d.clamp(-eps, eps)
    elif p == "L2":
        n = _flat_norm(d, "L2").clamp_min(1e-12)
        d = d * _bcast(torch.clamp(eps / n, max=1.0), d)
    elif p == "L1":
        return x + project_l1_box(d, -x, 1 - x, eps)
    else:
        raise ValueError(f"unknown norm {p!r}")
    return (x + d).clamp(0.0, 1.0)


def project_l1_box(d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, eps: float, iters: int = 20) -> torch.Tensor:
    """Euclidean projection of each perturbation onto {||d||_1 <= eps, lo <= d <= hi} (``lo <= 0 <= hi``).

    The solution is ``sign(d) * min(max(|d| - theta, 0), cap)`` (``cap`` the room in the direction
    of ``d``) for the smallest ``theta >= 0`` that meets the budget.  Its L1 norm ``phi(theta)``
    falls monotonically and piecewise linearly in ``theta``: ``iters`` bisection steps bracket the
    root, then one linear step on the piece at the feasible end solves it (kept only if it meets
    the budget, so the result never exceeds eps).  Sort-free: sorting is slow on CPU."""
    shape = d.shape
    f = d.flatten(1)
    a = f.abs()
    cap = torch.where(f >= 0, hi.flatten(1), -lo.flatten(1)).clamp_min(0)
    m = torch.minimum(a, cap)
    over = m.sum(1) > eps
    if over.any():
        ao, co = a[over], cap[over]
        t_lo = torch.zeros(ao.shape[0], dtype=f.dtype, device=f.device)  # phi(t_lo) > eps
        t_hi = ao.amax(1)  # phi(t_hi) <= eps
        for _ in range(iters):
            mid = (t_lo + t_hi) / 2
            heavy = torch.minimum((ao - mid[:, None]).clamp_min(0), co).sum(1) > eps
            t_lo, t_hi = torch.where(heavy, mid, t_lo), torch.where(heavy, t_hi, mid)
        m_hi = torch.minimum((ao - t_hi[:, None]).clamp_min(0), co)
        sloped = ((ao - co < t_hi[:, None]) & (ao >= t_hi[:, None])).sum(1).clamp_min(1)
        theta = torch.maximum(t_hi - (eps - m_hi.sum(1)) / sloped, t_lo)
        m_t = torch.minimum((ao - theta[:, None]).clamp_min(0), co)
        m[over] = torch.where((m_t.sum(1) <= eps)[:, None], m_t, m_hi)
    return (f.sign() * m).view(shape)


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


def sparse_sign_step(grad: torch.Tensor, x_cur: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Steepest L1 ascent inside the [0, 1] box: the sign of the gradient on each example's
    ``k`` largest |gradient| coordinates among those that can still move (a pixel at 0 with a
    negative gradient cannot), divided by how many there are, so the step has L1 norm 1."""
    f, xf = grad.flatten(1), x_cur.flatten(1)
    score = f.abs() * (((f > 0) & (xf < 1)) | ((f < 0) & (xf > 0)))
    kk = k.round().long().clamp(1, f.shape[1])
    top = score.topk(int(kk.max()), dim=1).values  # k is small: cheaper than a full sort
    thr = top.gather(1, kk[:, None] - 1)
    g = f.sign() * ((score >= thr) & (score > 0))
    return (g / g.abs().sum(1, keepdim=True).clamp_min(1)).view_as(grad)


def random_start(x: torch.Tensor, eps: float, p: str, gen, *purpose) -> torch.Tensor:
    """A random point inside the ball (used for random restarts).  ``gen`` is a
    :class:`~._draws.Draws` (per-example streams, ``purpose`` names the draw: evaluation) or a
    ``torch.Generator`` (one stream for the batch: adversarial training of the zoo)."""
    if isinstance(gen, torch.Generator):
        noise = torch.rand(x.shape, generator=gen, device="cpu").to(x.device) * 2 - 1
        r = torch.rand(x.shape[0], generator=gen).to(x.device) if p != "Linf" else None
    else:
        u = gen.rand((x[0].numel() + 1,), "start", *purpose)
        noise = (u[:, :-1].reshape(x.shape) * 2 - 1).to(x)
        r = u[:, -1].to(x)
    if p == "Linf":
        d = noise * eps
    else:
        n = _flat_norm(noise, p).clamp_min(1e-12)
        d = noise / _bcast(n, noise) * _bcast(r * eps, noise)
    return (x + d).clamp(0.0, 1.0)
