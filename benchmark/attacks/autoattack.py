"""Adapter over pyautoattack: the ``autoattack`` reference attack and a Square (black-box) helper.

pyautoattack is trusted for its attacks, not for its plumbing, so this module:
- builds a fresh ``AutoAttack`` object per call and never passes a state file (resume raises);
- resets ``pyautoattack.checks.funcs``, a process-global call counter that its dynamic-defense
  check reads: without a reset, one model's gradient calls make the next model look "dynamic";
- routes its ``auto-attack`` logger to Python logging at DEBUG (through tqdm so progress bars
  survive) instead of letting it print;
- seeds it explicitly, so a cell is reproducible.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from . import register

_LOGGER_NAME = "auto-attack"
_log = logging.getLogger("benchmark.attacks.autoattack")


class _TqdmHandler(logging.Handler):
    """Writes pyautoattack's messages through tqdm.write so they do not break progress bars;
    a message repeated within one AutoAttack run (it warns once per target class) is shown once."""

    seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        msg = record.getMessage()
        if msg in self.seen:
            return
        self.seen.add(msg)
        try:
            tqdm.write(f"[autoattack] {self.format(record)}")
        except Exception:  # never let logging break an evaluation
            self.handleError(record)


def _route_logger() -> None:
    """pyautoattack logs at DEBUG/INFO/WARNING to 'auto-attack'; show its warnings (they matter:
    randomised or dynamic defenses) and keep the chatter at DEBUG of our own logger."""
    lg = logging.getLogger(_LOGGER_NAME)
    if any(isinstance(h, _TqdmHandler) for h in lg.handlers):
        return
    h = _TqdmHandler(level=logging.WARNING)
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG)
    lg.propagate = False

    class _Debug(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno < logging.WARNING:
                _log.debug("%s", record.getMessage())

    lg.addHandler(_Debug())


def reset_global_counter() -> None:
    """Zero pyautoattack's process-global counter used by ``check_dynamic``."""
    from pyautoattack import checks

    for k in checks.funcs:
        checks.funcs[k] = 0


def _device(model: torch.nn.Module, x: torch.Tensor) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else x.device


VERSIONS = ("standard", "plus", "rand")


def autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
               seed: int = 0, version: str = "standard", batch_size: int = 500) -> torch.Tensor:
    """AutoAttack on ``x``; returns x_adv in [0, 1] within the budget.

    ``version``: ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``plus``, or ``rand``, the reference
    for randomized defenses: APGD-CE and APGD-DLR, each averaging the gradient over 20 calls of the
    model (pyautoattack's ``eot_iter=20``; it skips its randomness check for this version)."""
    from pyautoattack import AutoAttack

    if version not in VERSIONS:
        raise ValueError(f"autoattack: version must be one of {', '.join(map(repr, VERSIONS))}, got {version!r}")
    if len(x) == 0 or eps <= 0:
        return x.detach().clone()
    _route_logger()
    _TqdmHandler.seen.clear()
    reset_global_counter()
    dev = _device(model, x)
    aa = AutoAttack(model, norm=norm, eps=float(eps), version=version, seed=int(seed), device=dev)
    x_adv, _ = aa.run_standard_evaluation(x.detach().to(dev), y.to(dev), batch_size=int(batch_size),
                                          state_path=None)
    reset_global_counter()
    return _clip_to_threat(x_adv.detach().to(x.device), x, eps, norm)


def square(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
           queries: int = 1000, seed: int = 0, p_init: float = 0.8) -> torch.Tensor:
    """pyautoattack's Square attack (Andriushchenko et al. 2020, margin loss): gradient-free, so
    it is the reference for spotting gradient masking.  Restores the global torch RNG it reseeds."""
    from pyautoattack.square import SquareAttack

    if len(x) == 0 or eps <= 0 or queries <= 0:
        return x.detach().clone()
    dev = _device(model, x)
    rng = torch.random.get_rng_state()
    try:
        sq = SquareAttack(model, norm=norm, n_queries=int(queries), eps=float(eps), p_init=p_init, n_restarts=1,
                          seed=int(seed), verbose=False, device=dev, resc_schedule=True)
        with torch.no_grad():
            x_adv = sq.perturb(x.detach().to(dev), y.to(dev))
    finally:
        torch.random.set_rng_state(rng)
    return _clip_to_threat(x_adv.detach().to(x.device), x, eps, norm)


def _clip_to_threat(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Guard against float round-off at the boundary (pyautoattack's L2/L1 can exceed eps by ~1e-7)."""
    from ._lp import project

    return project(x_adv, x, eps, norm)


@register("autoattack")
def autoattack_attack(model, x, y, threat, *, seed: int = 0, index=None, version: str = "standard",
                      batch_size: int = 500) -> torch.Tensor:
    if threat.kind != "lp":
        raise ValueError(f"autoattack needs an lp threat, '{threat.id}' is kind '{threat.kind}'")
    return autoattack(model, x, y, eps=threat.eps, norm=threat.norm, seed=seed, version=version,
                      batch_size=batch_size)


@register("square")
def square_attack(model, x, y, threat, *, seed: int = 0, index=None, queries: int = 5000, p_init: float = 0.8) -> torch.Tensor:
    if threat.kind != "lp":
        raise ValueError(f"square needs an lp threat, '{threat.id}' is kind '{threat.kind}'")
    return square(model, x, y, eps=threat.eps, norm=threat.norm, queries=queries, seed=seed, p_init=p_init)


def describe() -> dict[str, Any]:
    """Version of the wrapped package (stored with calibration output)."""
    from importlib import metadata

    return {"pyautoattack": metadata.version("pyautoattack")}
