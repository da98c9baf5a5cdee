"""Restarts that attack only the still-robust examples, and the stronger run of an attack.

A restart never loses a success: an example fooled by an earlier run keeps that run's image; a
later run (from a random start drawn from the example's own stream, :mod:`._draws`) attacks only
the examples no run has fooled yet, and replaces an image only with one that fools the model.

:func:`stronger_args` is the convergence reference of every threat (``shiftbench calibrate``,
the ``convergence`` trust check): the same attack with at least 4x its iterations and two
restarts, or a finer grid for a grid search.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import torch

from ._draws import Draws

STRONGER_ITERATIONS = 4  # the stronger run's iteration factor
STRONGER_RESTARTS = 2  # ... and its number of runs (the first from the usual start)
# settings that count iterations (scaled by STRONGER_ITERATIONS; a list elementwise)
ITERATION_KEYS = ("steps", "pre_steps", "target_steps", "polish_steps", "queries")
# grid searches: points per axis n -> (n - 1) * k + 1 keeps every old point and refines between them
GRID_KEYS = {"grid": 4, "rotations": 4, "translations": 2}


def with_restarts(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  attempt: Callable[[torch.Tensor, int], Any], restarts: int, *, params: bool = False) -> Any:
    """``attempt(active, r)`` attacks the examples ``active`` (indices into ``x``) in run ``r``
    and returns their images; run 0 attacks every example, run ``r >= 1`` only those no earlier
    run fooled, and keeps only its fooling images.  A lone run is returned as it is (nothing to
    compare it with: no extra forward pass).

    With ``params``, ``attempt`` returns ``(images, params)``, one row of parameters per image (what
    it is made from, e.g. a flow), and so does this, every row kept with its image."""
    def parts(got: Any) -> tuple[torch.Tensor, ...]:  # (images,) or (images, params), detached
        return tuple(t.detach() for t in (got if params else (got,)))

    first = attempt(torch.arange(len(x), device=x.device), 0)
    if max(1, restarts) == 1:
        return first
    best = [t.clone() for t in parts(first)]
    with torch.no_grad():
        active = (model(best[0]).argmax(1) == y).nonzero().squeeze(1)
    for r in range(1, restarts):
        if len(active) == 0:
            break
        got = parts(attempt(active, r))
        with torch.no_grad():
            fooled = model(got[0]).argmax(1) != y[active]
        for b, t in zip(best, got):
            b[active[fooled]] = t[fooled]
        active = active[~fooled]
    return tuple(best) if params else best[0]


def uniform_start(seed: int, index: Any, n: int, active: torch.Tensor, shape: tuple[int, ...], r: int,
                  like: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in [-1, 1] of ``shape`` for the examples ``active`` of restart ``r``, from
    their own streams (``index``: their positions in the cell)."""
    return Draws(seed, index, n).take(active.cpu()).rand(shape, "start", r, like=like) * 2 - 1


def stronger_args(fn: Callable[..., Any], args: Mapping[str, Any]) -> dict[str, Any] | None:
    """The settings of the stronger run of attack ``fn`` at settings ``args``: each iteration
    count (``steps``, ...) of its signature x4 (not an inner solver's, as ``cg_steps``),
    ``restarts`` at least 2, a grid refined (every old point kept).  None when ``fn`` takes no
    such setting (nothing can make it stronger)."""
    params = inspect.signature(fn).parameters
    out = dict(args)
    changed = False
    for key in (*ITERATION_KEYS, *GRID_KEYS):
        p = params.get(key)
        if p is None:
            continue
        value = args.get(key, p.default)
        if value is inspect.Parameter.empty or value is None or isinstance(value, bool):
            continue
        if key in GRID_KEYS:
            out[key] = (int(value) - 1) * GRID_KEYS[key] + 1 if int(value) > 1 else GRID_KEYS[key] + 1
        elif isinstance(value, (list, tuple)):
            out[key] = [int(v) * STRONGER_ITERATIONS for v in value]
        else:
            out[key] = int(value) * STRONGER_ITERATIONS
        changed = True
    if "restarts" in params:
        value = args.get("restarts", params["restarts"].default)
        out["restarts"] = max(STRONGER_RESTARTS, int(value) if isinstance(value, int) else 1)
        changed = True
    return out if changed else None
