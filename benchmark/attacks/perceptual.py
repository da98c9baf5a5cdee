"""Perceptual attacks under an LPIPS bound (Laidlaw, Singla & Feizi, ICLR 2021): PPGD and LPA.

Both attack the set {x' in [0, 1]^d : LPIPS(x, x') <= bound} with LPIPS measured by a fixed
feature network (:mod:`.lpips`; the threat's ``params.network``).  Written from the paper; the
settings are those of ``perceptual-advex`` as OODRobustBench calls it (bound 0.5, 40 iterations,
Newton's projection, margin loss capped at kappa = 1).

**PPGD** (perceptual projected gradient descent).  Each step linearises the feature map phi at
the current point x_k: the steepest step of LPIPS length eta solves
``max_d grad L . d  s.t. ||J d|| = eta``, i.e. d proportional to (J^T J)^-1 grad L, found by
conjugate gradient (5 iterations, always all 5) where J v is a forward-mode derivative of phi
along v and J^T a backward pass through phi (the reference takes J v by a finite difference,
h = 1e-3; see "Same numbers on every CPU" below).  The step is scaled so its LPIPS length
``||J d||`` is eta = 2 bound / steps, clipped to [0, 1], then projected onto the LPIPS ball.

**LPA** (Lagrangian perceptual attack).  Minimises ``-L(x') + lambda max(0, LPIPS(x, x') - bound)``
by normalised gradient steps whose LPIPS length is ``step`` (bound, decayed geometrically by
``decay``, 10x, over each round's steps), estimated by a finite difference (h = 0.1); ``lambda``
starts at 0.01 and is multiplied by 10 after each of ``binary_steps`` (5) rounds for the
examples still outside the ball.  The result is projected onto the ball.

**Projection** (Newton's method, as the reference): while LPIPS(x, x') > bound, step along the
LPIPS gradient by (LPIPS - bound + 0.1) (1.1) / |grad|^2 (at most 10 times); examples still
outside then get a 10-step bisection on the segment from x to x', which keeps the inside end, so
every returned image is inside the ball.

Deviations from the reference, both deliberate: the attacks start at x itself instead of x plus
N(0, 0.01) noise (no random draw; the outcome cannot depend on the batch); and an example stops at
the first point that is inside the ball and misclassified (the reference runs on and returns the
last iterate, which can only lose successes).  Conjugate gradient runs its 5 iterations for
every example (the reference stops the whole batch when every residual is small).

**Same numbers on every CPU.**  Two CPUs (or two kernels of one CPU: AVX2, AVX-512, oneDNN's
ISA) round the model's and the feature network's arithmetic differently in the last bits.  The
reference's PPGD turns those bits into other outcomes: its finite-difference J v has a rounding
error of ~1e-4 of its value that the ill-conditioned solve amplifies, and its residual threshold
stops conjugate gradient at another iteration.  Here J v is exact up to rounding, conjugate
gradient always runs its iterations, and its scalars are accumulated in float64; measured on the
whole digits suite, the outcomes of PPGD under two CPU code paths now agree (docs/reproducibility.md).
"""
from __future__ import annotations

from typing import Any

import torch

from . import register
from ._restarts import uniform_start, with_restarts
from ._lp import _bcast as _bc
from .lpips import FeatureNet, Linearization, load_network, normalized_features
from .transforms import nonneg, threat_params

KAPPA = 1.0  # the margin loss is capped at kappa, as the reference's MarginLoss(kappa=1)
OVERSHOOT = 0.1  # Newton projection overshoot (the reference's, an LPIPS length: 20% of its bound of 0.5)
NEWTON_STEPS = 10
BISECTION_STEPS = 10
START_NOISE = 0.1  # Linf size of a restart's random start (then projected into the ball)


def capped_margin(logits: torch.Tensor, y: torch.Tensor, kappa: float = KAPPA) -> torch.Tensor:
    """min(max_{j != y} z_j - z_y, kappa): positive exactly when misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return (other.amax(1) - true).clamp(max=kappa)


def _dist(net: FeatureNet, x_adv: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
    return (normalized_features(net, x_adv) - f0).norm(dim=1)


# --------------------------------------------------------------------------- projection
def bisection_projection(net: FeatureNet, x: torch.Tensor, x_adv: torch.Tensor, f0: torch.Tensor, bound: float,
                         steps: int = BISECTION_STEPS) -> torch.Tensor:
    """The point x + t (x_adv - x) with the largest t found by bisection that is inside the ball
    (t = 0, x itself, when none is)."""
    lo = torch.zeros(len(x), device=x.device, dtype=x.dtype)
    hi = torch.ones(len(x), device=x.device, dtype=x.dtype)
    with torch.no_grad():
        for _ in range(steps):
            mid = (lo + hi) / 2
            inside = _dist(net, x + _bc(mid, x) * (x_adv - x), f0) <= bound
            lo = torch.where(inside, mid, lo)
            hi = torch.where(inside, hi, mid)
    return x + _bc(lo, x) * (x_adv - x)


def newton_projection(net: FeatureNet, x: torch.Tensor, x_adv: torch.Tensor, f0: torch.Tensor | None,
                      bound: float, overshoot: float = OVERSHOOT) -> torch.Tensor:
    """Map every x_adv outside the LPIPS ball around x back inside (see the module docstring).
    Images inside are returned unchanged; every output lies in [0, 1] and inside the ball.
    ``overshoot``: how far past the bound each Newton step aims (an LPIPS length): the reference's
    0.1 lands a point 0.1 bound to 0.25 bound inside a ball of 0.2 (measured on digits)."""
    if f0 is None:
        with torch.no_grad():
            f0 = normalized_features(net, x)
    out = x_adv.detach().clone()
    todo = torch.arange(len(x), device=x.device)
    for _ in range(NEWTON_STEPS):
        if len(todo) == 0:
            break
        cur = out[todo].requires_grad_(True)
        with torch.enable_grad():
            d = _dist(net, cur, f0[todo])
            (g,) = torch.autograd.grad(d.sum(), cur)
        over = d.detach() > bound
        todo, cur, d, g = todo[over], cur.detach()[over], d.detach()[over], g[over]
        if len(todo) == 0:
            break
        size = (d - bound + overshoot) * (1 + overshoot)
        gn2 = g.flatten(1).pow(2).sum(1).clamp_min(1e-20)
        out[todo] = (cur - _bc(size / gn2, g) * g).clamp(0.0, 1.0)
    if len(todo):
        with torch.no_grad():
            still = _dist(net, out[todo], f0[todo]) > bound
        ii = todo[still]
        if len(ii):
            out[ii] = bisection_projection(net, x[ii], x_adv[ii].detach(), f0[ii], bound)
    return out


# --------------------------------------------------------------------------- PPGD
def _jtj(lin: Linearization, cur: torch.Tensor, f_cur: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """J^T J v at ``cur``: J v exact (:class:`.lpips.Linearization`; a finite difference's error,
    ~1e-4 of the value at h = 1e-3 in float32, depends on the last bits of the features and made
    PPGD chaotic across CPUs), J^T by autograd through ``f_cur`` (the features of ``cur``,
    computed with a graph)."""
    (out,) = torch.autograd.grad(f_cur, cur, grad_outputs=lin.jvp(v), retain_graph=True)
    return out


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example dot product, accumulated in float64 (conjugate gradient's scalars)."""
    return (a.double() * b.double()).flatten(1).sum(1)


def ppgd(model: torch.nn.Module, net: FeatureNet, x: torch.Tensor, y: torch.Tensor, *, bound: float = 0.5,
         steps: int = 40, step: float | None = None, cg_steps: int = 5, decay: float = 1.0,
         start: torch.Tensor | None = None, overshoot: float = OVERSHOOT) -> torch.Tensor:
    """Perceptual PGD; see the module docstring.  Step ``t`` has LPIPS length
    ``step * decay ** (t / (steps - 1))``; ``start``: the first iterate (default ``x``);
    ``overshoot``: the projection's (:func:`newton_projection`)."""
    out = x.detach().clone()
    if bound == 0 or steps == 0 or len(x) == 0:
        return out
    eta0 = 2 * bound / steps if step is None else step
    with torch.no_grad():
        f0_all = normalized_features(net, x)
        wrong = model(x).argmax(1) != y
    active = (~wrong).nonzero().squeeze(1)
    cur_all = x.detach().clone() if start is None else start.detach().clone()
    for t in range(steps):
        if len(active) == 0:
            break
        eta = eta0 * decay ** (t / max(1, steps - 1))
        cur = cur_all[active].requires_grad_(True)
        with torch.enable_grad():
            loss = capped_margin(model(cur), y[active])
            (g,) = torch.autograd.grad(loss.sum(), cur)
            f_cur = normalized_features(net, cur)
            lin = Linearization(net, cur)
            # conjugate gradient on (J^T J) v = g, per example, a fixed number of iterations: a
            # stopping rule on the residual is a threshold that last-bit differences can cross
            v = torch.zeros_like(g)
            r = g.clone()
            p = r.clone()
            rr = _dot(r, r)
            for _it in range(cg_steps):
                ap = _jtj(lin, cur, f_cur, p)
                pap = _dot(p, ap)
                ok = (pap > 0) & (rr > 0)
                alpha = torch.where(ok, rr / torch.where(ok, pap, torch.ones_like(pap)), torch.zeros_like(rr))
                v = v + _bc(alpha.to(v.dtype), v) * p
                r = r - _bc(alpha.to(r.dtype), r) * ap
                rr_new = _dot(r, r)
                beta = torch.where(ok, rr_new / torch.where(ok, rr, torch.ones_like(rr)), torch.zeros_like(rr))
                p = torch.where(_bc(ok, p), r + _bc(beta.to(p.dtype), p) * p, p)
                rr = torch.where(ok, rr_new, rr)
        with torch.no_grad():
            jv_len = lin.jvp(v).double().norm(dim=1)
            lam = eta / jv_len.clamp_min(1e-12)
            flat = g.flatten(1).norm(dim=1) < 1e-4  # no gradient: do not move (as the reference)
            lam = torch.where(flat | ~torch.isfinite(lam), torch.zeros_like(lam), lam)
            nxt = (cur.detach() + _bc(lam.to(v.dtype), v) * v).clamp(0.0, 1.0)
        nxt = newton_projection(net, x[active], nxt, f0_all[active], bound, overshoot)
        with torch.no_grad():
            fooled = model(nxt).argmax(1) != y[active]
        cur_all[active] = nxt
        out[active] = nxt
        active = active[~fooled]
    return out


# --------------------------------------------------------------------------- LPA
def lpa(model: torch.nn.Module, net: FeatureNet, x: torch.Tensor, y: torch.Tensor, *, bound: float = 0.5,
        steps: int = 40, binary_steps: int = 5, step: float | None = None, h: float = 0.1,
        lam0: float = 0.01, lam_growth: float = 10.0, project_fooled: bool = False,
        start: torch.Tensor | None = None, decay: float = 0.1, overshoot: float = OVERSHOOT) -> torch.Tensor:
    """Lagrangian perceptual attack; see the module docstring.  ``lam0`` and ``lam_growth``: the
    penalty weight of the first round and its factor per round (for the examples still outside
    the ball); ``project_fooled``: an iterate that fools the model outside the ball is projected
    onto it at once and kept if it still fools (a success is never left for later);
    ``start``: the first iterate (default ``x``); ``decay``: see :func:`lpa_attack`; ``overshoot``:
    the projections' (:func:`newton_projection`)."""
    out = x.detach().clone()
    if bound == 0 or steps == 0 or len(x) == 0:
        return out
    step = bound if step is None else step
    n = len(x)
    with torch.no_grad():
        f0 = normalized_features(net, x)
    adv = x.detach().clone() if start is None else start.detach().clone()
    lam = torch.full((n,), lam0, device=x.device, dtype=x.dtype)
    last_d = torch.zeros(n, device=x.device, dtype=x.dtype)
    live = torch.ones(n, dtype=torch.bool, device=x.device)
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    for _ in range(max(1, binary_steps)):
        for it in range(steps):
            ii = live.nonzero().squeeze(1)
            if len(ii) == 0:
                break
            size = step * decay ** (it / steps)
            cur = adv[ii].requires_grad_(True)
            with torch.enable_grad():
                logits = model(cur)
                feats = normalized_features(net, cur)
                # a safe norm: LPIPS is 0 at the start, where the plain norm has no gradient
                d = ((feats - f0[ii]).pow(2).sum(1) + 1e-20).sqrt()
                obj = -capped_margin(logits, y[ii]) + lam[ii] * torch.relu(d - bound)
                (g,) = torch.autograd.grad(obj.sum(), cur)
            with torch.no_grad():
                d = d.detach()
                last_d[ii] = d
                fooled = logits.argmax(1) != y[ii]
                done = fooled & (d <= bound)  # inside and fooled: keep it, before any further update
                out[ii[done]] = cur.detach()[done]
                if project_fooled and bool((fooled & ~done).any()):
                    jj = (fooled & ~done).nonzero().squeeze(1)
                    proj = newton_projection(net, x[ii[jj]], cur.detach()[jj], f0[ii[jj]], bound, overshoot)
                    kept = model(proj).argmax(1) != y[ii[jj]]
                    out[ii[jj[kept]]] = proj[kept]
                    done[jj[kept]] = True
                found[ii[done]] = True
                live[ii[done]] = False
                move = ~done
                ii, g, cur, feats = ii[move], g[move], cur.detach()[move], feats.detach()[move]
                if len(ii) == 0:
                    continue
                gn = g / _bc(g.flatten(1).norm(dim=1) + 1e-8, g)
                dist_grad = (normalized_features(net, cur + h * gn) - feats).norm(dim=1) / h
                adv[ii] = (cur - gn * _bc(size / (dist_grad + 1e-8), gn)).clamp(0.0, 1.0)
        lam = torch.where(last_d >= bound, lam * lam_growth, lam)
        if not live.any():
            break
    rest = (~found).nonzero().squeeze(1)
    if len(rest):
        out[rest] = newton_projection(net, x[rest], adv[rest], f0[rest], bound, overshoot)
    return out


# --------------------------------------------------------------------------- registry entries
def _setup(threat: Any) -> tuple[float, FeatureNet]:
    where = threat.path or threat.id
    p = threat_params(threat, "lpips", {"bound": None, "network": None})
    return nonneg(p["bound"], where, "bound"), load_network(p["network"], threat.path)


def lpips_to(threat: Any, x: torch.Tensor, x_adv: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Per-example LPIPS between ``x`` and ``x_adv`` with the threat's network (trust checks)."""
    _, net = _setup(threat)
    net = _on(net, x)
    with torch.no_grad():
        return torch.cat([(normalized_features(net, x[i:i + batch]) - normalized_features(net, x_adv[i:i + batch]))
                          .norm(dim=1) for i in range(0, len(x), batch)])


def _on(net: FeatureNet, x: torch.Tensor) -> FeatureNet:
    return net.to(x.device) if next(net.parameters()).device != x.device else net


def _random_start(net: FeatureNet, x: torch.Tensor, bound: float, seed: int, index: Any, active: torch.Tensor,
                  r: int, noise: float = START_NOISE, overshoot: float = OVERSHOOT) -> torch.Tensor:
    """Restart ``r``'s start for the examples ``active``: uniform noise of Linf size ``noise``
    from their own streams, clipped to [0, 1] and projected into the LPIPS ball."""
    xa = x[active]
    u = uniform_start(seed, index, len(x), active, tuple(x.shape[1:]), r, like=x)
    return newton_projection(net, xa, (xa + noise * u).clamp(0.0, 1.0), None, bound, overshoot)


@register("ppgd")
def ppgd_attack(model, x, y, threat, *, seed: int = 0, index=None, steps: int = 40, step: float | None = None,
                cg_steps: int = 5, decay: float = 1.0, restarts: int = 1, overshoot: float = OVERSHOOT) -> torch.Tensor:
    """Budget (``threat.params``): ``bound`` (LPIPS) and ``network`` (the feature network:
    ``arch``, ``weights``, ``sha256``, ``source``).  Settings: ``steps`` (40 as the reference),
    ``step`` (the first step's LPIPS length, default 2 bound / steps), ``decay`` (the last step's
    length over the first's, geometric in between; 1 as the reference), ``cg_steps`` (5),
    ``restarts`` (runs; the later ones from a random start, on the still-robust examples only),
    ``overshoot`` (how far past the bound the projection's Newton steps aim, an LPIPS length: 0.1
    as the reference, 20% of its bound of 0.5; on a smaller ball scale it down, or each projection
    throws the iterate deep inside).  Deterministic with one run: ``seed`` draws the restarts'
    starts."""
    bound, net = _setup(threat)
    if bound == 0:
        return x.detach().clone()
    net = _on(net, x)

    def attempt(active: torch.Tensor, r: int) -> torch.Tensor:
        start = _random_start(net, x, bound, seed, index, active, r, overshoot=overshoot) if r else None
        return ppgd(model, net, x[active], y[active], bound=bound, steps=steps, step=step, cg_steps=cg_steps,
                    decay=decay, start=start, overshoot=overshoot)

    return with_restarts(model, x, y, attempt, restarts)


@register("lpa")
def lpa_attack(model, x, y, threat, *, seed: int = 0, index=None, steps: int = 40, binary_steps: int = 5,
               step: float | None = None, h: float = 0.1, lam0: float = 0.01, lam_growth: float = 10.0,
               project_fooled: bool = False, restarts: int = 1, decay: float = 0.1,
               overshoot: float = OVERSHOOT) -> torch.Tensor:
    """Budget as :func:`ppgd_attack`.  Settings: ``steps`` per round (40 as the reference),
    ``binary_steps`` rounds of the penalty weight (5), ``step`` (default bound), ``h``, ``lam0``
    and ``lam_growth`` (the first round's penalty weight and its factor per round: 0.01 and 10 as
    the reference), ``project_fooled`` (see :func:`lpa`), ``restarts`` (as :func:`ppgd_attack`),
    ``decay`` (the last step's length over the first's in each round, geometric in between: 0.1 as
    the reference), ``overshoot`` (as :func:`ppgd_attack`)."""
    bound, net = _setup(threat)
    if bound == 0:
        return x.detach().clone()
    net = _on(net, x)

    def attempt(active: torch.Tensor, r: int) -> torch.Tensor:
        start = _random_start(net, x, bound, seed, index, active, r, overshoot=overshoot) if r else None
        return lpa(model, net, x[active], y[active], bound=bound, steps=steps, binary_steps=binary_steps, step=step,
                   h=h, lam0=lam0, lam_growth=lam_growth, project_fooled=project_fooled, start=start, decay=decay,
                   overshoot=overshoot)

    return with_restarts(model, x, y, attempt, restarts)
