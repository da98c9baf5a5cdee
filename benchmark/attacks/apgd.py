"""APGD (Croce & Hein 2020) for Linf / L2 / L1 and the fast default attack ``apgd-mm``.

Our own implementation of the published algorithm: a step size that starts at 2*eps and is
halved at checkpoints when progress stalls (restarting from the best point found), momentum 0.75,
best-loss tracking.  L1 uses the exact L1-ball projection of ``_lp`` and a sparse step on the
largest gradient coordinates that can still move inside the [0, 1] box (in the spirit of
APGD-L1 / SLIDE).  Everything is per example and batched; examples stop as soon as they are
misclassified, so a batch gets cheaper as the attack succeeds.

``apgd-mm`` ("minimum margin"): APGD-CE, then targeted DLR (a margin loss for fewer than three
classes) against each of the top-k other classes, then a short local polish of the examples left
closest to the boundary, each stage only on the examples still robust.  Examples whose loss
gradient is exactly zero everywhere (masked gradients: quantised inputs, saturated softmax) cannot
be attacked by any gradient method; the evaluator attacks them with Square at the cell level
(``run/trust.py``), so that a masked model does not get a free robustness score.

Every random draw (random starts) comes from the example's own stream (:mod:`._draws`), and
every decision is per example, so an example's outcome does not depend on its batch.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import register
from ._draws import Draws
from ._lp import _bcast as _bc
from ._lp import lp_norm, project, random_start, sparse_sign_step

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
MOMENTUM = 0.75  # alpha in the paper
RHO = 0.75  # a checkpoint halves the step when at most RHO of the steps increased the loss
POLISH_MARGIN = 0.25  # apgd-mm polishes the still-robust examples whose scaled margin came below this


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example cross-entropy (untargeted: maximised)."""
    return F.cross_entropy(logits, y, reduction="none")


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Targeted DLR: -(z_y - z_t) / (z_pi1 - mean(z_pi3, z_pi4)); scale-invariant, so it survives
    saturated logits better than CE.  DLR needs >= 3 classes; with two it is the plain margin."""
    assert target is not None
    n_cls = logits.shape[1]
    u = torch.arange(len(y), device=logits.device)
    margin = logits[u, y] - logits[u, target]
    if n_cls < 3:
        return -margin
    srt = logits.sort(dim=1, descending=True).values
    tail = srt[:, 2] if n_cls == 3 else (srt[:, 2] + srt[:, 3]) / 2
    return -margin / (srt[:, 0] - tail + 1e-12)


def _checkpoints(steps: int) -> list[int]:
    """Iterations (counted from 1) after which the step size may be halved: the paper's
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) from p_1 = 0.22 in whole iterations, as the
    reference implementation counts them: a first interval of max(int(0.22 n), 1) iterations,
    each next one shorter by max(int(0.03 n), 1), and none shorter than max(int(0.06 n), 1)."""
    k = max(int(0.22 * steps), 1)
    decr, k_min = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, at = [], k
    while at <= steps:
        out.append(at)
        k = max(k - decr, k_min)
        at += k
    return out


def _l1_checkpoints(steps: int) -> list[int]:
    """L1 keeps the paper's fractions rounded up (p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1}
    - 0.03, 0.06)): the reference's L1 APGD has no such checkpoints (it adapts the sparsity of its
    step instead), our L1 step rule was calibrated with these, and the reference's integer
    schedule made it weaker (digits L1 eps 5, cnn-pgd-0.10, 600 images: 194 robust instead of 186)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({int(math.ceil(q * steps - 1e-9)) for q in p[1:] if q < 1})


def keep_rows(st: dict[str, torch.Tensor], keep: torch.Tensor) -> None:
    """Compress every per-example tensor of the attack state ``st`` to the rows where ``keep``."""
    rows = keep.nonzero().squeeze(1)
    for k in st:
        st[k] = st[k].index_select(0, rows)


def _step(grad: torch.Tensor, x_cur: torch.Tensor, eta: torch.Tensor, norm: str, l1_frac: float) -> torch.Tensor:
    """Steepest-ascent step of per-example size ``eta``.

    L1: the step goes on the top ``l1_frac`` of the coordinates of |grad| that can still move in
    the box (a pixel at 0 with a negative gradient is useless), normalised to L1 norm ``eta``.
    """
    if norm == "Linf":
        return _bc(eta, grad) * grad.sign()
    if norm == "L2":
        g = grad / _bc(lp_norm(grad, "L2").clamp_min(1e-12), grad)
        return _bc(eta, grad) * g
    if norm == "L1":
        k = torch.full((len(grad),), max(1, int(l1_frac * grad[0].numel())), device=grad.device)
        return _bc(eta, grad) * sparse_sign_step(grad, x_cur, k)
    raise ValueError(f"unknown norm {norm!r}")


def _loss_grad(model, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
               loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example loss, its input gradient and the logits.  On a randomized model
    (:mod:`benchmark.models.defenses`), expectation over transformation: loss and gradient are the
    means over its ``eot`` samples, the logits their mean (what "fooled" is judged by)."""
    x = x.detach().requires_grad_(True)
    if getattr(model, "eot", 1) > 1 and callable(getattr(model, "eot_logits", None)):  # defenses.Randomized
        with torch.enable_grad():
            z = model.eot_logits(x)
            loss = torch.stack([loss_fn(zj, y, target) for zj in z]).mean(0)
            grad = _input_grad(loss, x)
        return loss.detach(), grad, z.detach().mean(0)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits, y, target)
        grad = _input_grad(loss, x)
    return loss.detach(), grad, logits.detach()


def _input_grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d loss.sum() / dx; zero where the output does not depend on ``x`` through autograd at all
    (a model that thresholds its input: what the trust checks' zero-gradient escalation is for)."""
    if not loss.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad.detach()


def apgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
         loss: str | LossFn = "ce", target: torch.Tensor | None = None, steps: int = 100,
         draws: Draws | None = None, purpose: tuple = (), random_init: bool = True,
         l1_frac: float = 0.02, x_init: torch.Tensor | None = None,
         step_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run.  Returns ``(x_best, fooled, zero_grad)``.

    ``x_best`` is, per example, the first misclassified point found, else the highest-loss point;
    ``fooled`` says which examples are misclassified at ``x_best``; ``zero_grad`` flags examples
    whose gradient was exactly zero at the start (the attack could not see anything there).
    Examples leave the computation as soon as they are fooled.  The run starts at ``x_init``
    (projected onto the ball) when given, else at a random point (or ``x`` without
    ``random_init``); ``step_scale`` scales the initial step size (2 eps; L1: eps).  The random
    start of example ``i`` comes from ``draws`` (its own stream, :mod:`._draws`) for ``purpose``.

    As the reference implementation (pyautoattack's APGD): a checkpoint halves the step where at
    most ``RHO`` of the steps since the last one increased the loss (``<=``), and restarts those
    examples from their best point keeping the momentum towards it (the next step's momentum
    term is ``best - previous iterate``); the loss history is not reset.
    """
    loss_fn: LossFn = loss if callable(loss) else {"ce": ce_loss, "dlr-t": targeted_dlr_loss}[loss]
    n = len(x)
    draws = draws if draws is not None else Draws(0, None, n)
    out = x.detach().clone()
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    zero_grad = torch.zeros(n, dtype=torch.bool, device=x.device)
    if n == 0 or eps <= 0 or steps <= 0:
        return out, fooled, zero_grad
    eta0 = step_scale * (2.0 * eps if norm != "L1" else 1.0 * eps)
    checkpoints = set(_checkpoints(steps) if norm != "L1" else _l1_checkpoints(steps))

    # per-example state of the still-active examples, compressed whenever examples leave
    if x_init is not None:
        cur = project(x_init.detach(), x.detach(), eps, norm)
    else:
        cur = random_start(x.detach(), eps, norm, draws, *purpose) if random_init else x.detach().clone()
    loss_cur, grad, logits = _loss_grad(model, cur, y, target, loss_fn)
    zero_grad |= grad.flatten(1).abs().amax(1) == 0
    st: dict[str, torch.Tensor] = {
        "idx": torch.arange(n, device=x.device), "x": x.detach(), "y": y, "cur": cur, "prev": cur.clone(),
        "grad": grad, "loss": loss_cur, "best_x": cur.clone(), "best_loss": loss_cur.clone(),
        "best_grad": grad.clone(), "eta": torch.full((n,), eta0, device=x.device),
        "n_incr": torch.zeros(n, device=x.device), "ck_loss": loss_cur.clone(),
        "ck_halved": torch.ones(n, dtype=torch.bool, device=x.device),
    }
    if target is not None:
        st["t"] = target

    def leave(mask: torch.Tensor, at: str, was_fooled: bool) -> None:
        """Examples in ``mask`` leave with their point ``st[at]``."""
        gone = mask.nonzero().squeeze(1)
        if len(gone) == 0:  # most steps: nobody leaves, nothing to compress
            return
        gi = st["idx"][gone]
        out[gi] = st[at][gone]
        fooled[gi] = was_fooled
        keep_rows(st, ~mask)

    wrong = logits.argmax(1) != y
    # an example whose gradient is exactly zero has nothing to follow: it leaves now (at its random
    # start) rather than spend `steps` iterations; callers see it in `zero_grad`
    dead = zero_grad & ~wrong
    leave(wrong, "cur", True)
    leave(dead[~wrong], "cur", False)
    last_ck = 0
    for it in range(steps):
        if len(st["idx"]) == 0:
            break
        cur, prev, xs = st["cur"], st["prev"], st["x"]
        z = project(cur + _step(st["grad"], cur, st["eta"], norm, l1_frac), xs, eps, norm)
        if it > 0:
            z = project(cur + MOMENTUM * (z - cur) + (1 - MOMENTUM) * (cur - prev), xs, eps, norm)
        new_loss, grad, logits = _loss_grad(model, z, st["y"], st.get("t"), loss_fn)
        st["prev"], st["cur"], st["grad"] = cur, z, grad
        st["n_incr"] += (new_loss > st["loss"]).float()
        st["loss"] = new_loss
        better = new_loss > st["best_loss"]
        st["best_x"][better], st["best_loss"][better], st["best_grad"][better] = z[better], new_loss[better], grad[better]
        leave(logits.argmax(1) != st["y"], "cur", True)
        if it + 1 in checkpoints:
            checkpoint(st, it + 1 - last_ck)
            last_ck = it + 1
    out[st["idx"]] = st["best_x"]
    return out, fooled, zero_grad


def checkpoint(st: dict[str, torch.Tensor], window: int) -> torch.Tensor:
    """A checkpoint, as in the reference implementation: halve the step where at most ``RHO`` of
    the ``window`` steps since the last checkpoint increased the loss, or where the last
    checkpoint did not halve and the best loss has not moved since; restart those from their
    best point.  ``prev`` is kept, so the first step after a restart has momentum towards the
    best point (``best - previous iterate``), as the reference's ``x_adv_old``.  Returns the
    examples halved."""
    halve = (st["n_incr"] <= RHO * window) | (~st["ck_halved"] & (st["ck_loss"] >= st["best_loss"]))
    h = _bc(halve, st["cur"])
    st["eta"] = torch.where(halve, st["eta"] / 2, st["eta"])
    st["cur"] = torch.where(h, st["best_x"], st["cur"])
    st["grad"] = torch.where(h, st["best_grad"], st["grad"])
    st["ck_halved"], st["ck_loss"] = halve, st["best_loss"].clone()
    st["n_incr"].zero_()
    return halve


def _lp_threat(threat, name: str) -> tuple[float, str]:
    if threat.kind != "lp":
        raise ValueError(f"{name} needs an lp threat, '{threat.id}' is kind '{threat.kind}'")
    return float(threat.eps), str(threat.norm)


@register("apgd-ce")
def apgd_ce_attack(model, x, y, threat, *, seed: int = 0, index=None, steps: int = 100, restarts: int = 1,
                   l1_frac: float = 0.02) -> torch.Tensor:
    """Untargeted APGD on cross-entropy, ``restarts`` random restarts on the still-robust examples."""
    eps, norm = _lp_threat(threat, "apgd-ce")
    draws = Draws(seed, index, len(x))
    x_adv = x.detach().clone()
    todo = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for r in range(max(1, restarts)):
        ii = todo.nonzero().squeeze(1)
        if len(ii) == 0:
            break
        adv, fooled, _ = apgd(model, x[ii], y[ii], eps=eps, norm=norm, loss="ce", steps=steps,
                              draws=draws.take(ii), purpose=("ce", r), l1_frac=l1_frac)
        x_adv[ii] = adv
        todo[ii[fooled]] = False
    return x_adv


def scaled_margin(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How far each example is from being misclassified, and towards which class.

    ``(z_y - z_t) / (z_pi1 - z_pi3)`` with ``t`` the likeliest other class: the DLR scale makes
    margins of different examples comparable (plain margin for fewer than three classes)."""
    u = torch.arange(len(y), device=logits.device)
    other = logits.clone()
    other[u, y] = -float("inf")
    z_t, t = other.max(1)
    margin = logits[u, y] - z_t
    if logits.shape[1] >= 3:
        srt = logits.sort(dim=1, descending=True).values
        margin = margin / (srt[:, 0] - srt[:, 2] + 1e-12)
    return margin, t


def likeliest_others(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Per example, the ``k`` classes other than its label that ``logits`` rank highest, shape (n, k)."""
    others = logits.clone()
    others[torch.arange(len(y), device=logits.device), y] = -float("inf")
    return others.argsort(dim=1, descending=True)[:, :k]


def _schedule(target_steps: int | Sequence[int], targets: int) -> list[int]:
    """Steps against each of the ``targets`` likeliest other classes: one number for all, or a
    list by rank whose last entry repeats."""
    if isinstance(target_steps, int):
        return [target_steps] * targets
    steps = [int(s) for s in target_steps]
    if not steps:
        return []
    return (steps + [steps[-1]] * targets)[:targets]


def minimum_margin(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                   seed: int = 0, index=None, steps: int = 50, targets: int = 9,
                   target_steps: int | Sequence[int] = 20, polish_margin: float = POLISH_MARGIN,
                   polish_steps: int = 40, l1_frac: float = 0.02) -> tuple[torch.Tensor, dict[str, int]]:
    """APGD-CE; targeted APGD-DLR on the top-``targets`` other classes (``target_steps`` each,
    or a list by rank); a polish of the closest calls.  Each stage runs only on the examples
    still robust.  Returns ``(x_adv, stats)``; stats count what each stage broke and how many
    examples had a zero gradient for every loss (``zero_grad``: left to the evaluator's Square).

    Polish: the still-robust examples whose smallest :func:`scaled_margin` seen in the earlier
    stages is below ``polish_margin`` get ``polish_steps`` more targeted steps towards the class
    of that margin, started from the point where it was seen, with a quarter of the usual step
    size.  Examples left a hair from the boundary are the ones a longer attack (AutoAttack)
    breaks; a local search from the best point finds them at a small cost.  The threshold is
    per example (a share of the batch would make an outcome depend on the batch around it).
    """
    draws = Draws(seed, index, len(x))
    x_adv = x.detach().clone()
    n = len(x)
    stats = {"n": n, "fooled_ce": 0, "fooled_targeted": 0, "fooled_polish": 0, "zero_grad": 0}
    if n == 0 or eps <= 0:
        return x_adv, stats
    adv, fooled, zero_grad = apgd(model, x, y, eps=eps, norm=norm, loss="ce", steps=steps, draws=draws,
                                  purpose=("ce",), l1_frac=l1_frac)
    x_adv[:] = adv
    robust = ~fooled
    stats["fooled_ce"] = int(fooled.sum())
    with torch.no_grad():
        clean_logits = model(x)
        best_margin, best_class = scaled_margin(model(adv), y)
    best_x = adv.clone()  # per example, the point of its smallest margin so far
    n_cls = clean_logits.shape[1]
    schedule = _schedule(target_steps, max(0, min(targets, n_cls - 1)))
    ranked = likeliest_others(clean_logits, y, len(schedule))
    for j, t_steps in enumerate(schedule):
        ii = robust.nonzero().squeeze(1)
        if len(ii) == 0:
            break
        adv, fooled, zg = apgd(model, x[ii], y[ii], eps=eps, norm=norm, loss="dlr-t", target=ranked[ii, j],
                               steps=t_steps, draws=draws.take(ii), purpose=("target", j), l1_frac=l1_frac)
        zero_grad[ii] &= zg  # masked only if no loss (CE, DLR) gets a gradient
        x_adv[ii[fooled]] = adv[fooled]
        robust[ii[fooled]] = False
        stats["fooled_targeted"] += int(fooled.sum())
        keep = ~fooled
        with torch.no_grad():
            m, c = scaled_margin(model(adv[keep]), y[ii[keep]])
        closer = m < best_margin[ii[keep]]
        jj = ii[keep][closer]
        best_margin[jj], best_class[jj], best_x[jj] = m[closer], c[closer], adv[keep][closer]
    ii = (robust & (best_margin < polish_margin)).nonzero().squeeze(1) if polish_steps > 0 else robust[:0].nonzero()
    if len(ii) > 0:
        adv, fooled, _ = apgd(model, x[ii], y[ii], eps=eps, norm=norm, loss="dlr-t", target=best_class[ii],
                              steps=polish_steps, draws=draws.take(ii), purpose=("polish",), l1_frac=l1_frac,
                              x_init=best_x[ii], step_scale=0.25)
        x_adv[ii[fooled]] = adv[fooled]
        robust[ii[fooled]] = False
        stats["fooled_polish"] = int(fooled.sum())
    stats["polished"] = int(len(ii))
    stats["zero_grad"] = int((robust & zero_grad).sum())
    return x_adv, stats


LAST_STATS: dict[str, int] = {}  # what each stage broke in the last apgd-mm call (diagnostics only)


@register("apgd-mm")
def apgd_mm_attack(model, x, y, threat, *, seed: int = 0, index=None, steps: int = 50, targets: int = 9,
                   target_steps: int | Sequence[int] = 20, polish_margin: float = POLISH_MARGIN,
                   polish_steps: int = 40, l1_frac: float = 0.02) -> torch.Tensor:
    """The fast default attack (see the module docstring and docs/attacks.md)."""
    eps, norm = _lp_threat(threat, "apgd-mm")
    x_adv, stats = minimum_margin(model, x, y, eps=eps, norm=norm, seed=seed, index=index, steps=steps,
                                  targets=targets, target_steps=target_steps, polish_margin=polish_margin,
                                  polish_steps=polish_steps, l1_frac=l1_frac)
    LAST_STATS.clear()
    LAST_STATS.update(stats)
    return x_adv
