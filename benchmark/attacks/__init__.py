"""Attacks: takes a model, images in [0, 1], labels and a threat; hands on adversarial images.

Our own PGD / APGD code, non-Lp threat attacks, and an adapter over pyautoattack.

Every attack has one signature::

    attack(model, x, y, threat: ThreatSpec, *, seed: int, **attack_args) -> x_adv

``x`` is a batch of images in [0, 1] (N, C, H, W), ``y`` the labels; ``model`` returns logits
and is in eval mode.  ``x_adv`` has the same shape, lies in [0, 1] and inside the threat's
perturbation set.  The evaluator counts an example robust when the model is correct on both
``x`` and ``x_adv``.  Attacks register themselves with :func:`register`.
"""
from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:  # torch is heavy: planning and the leaderboard must not import it
    import torch

# Bump when any attack's numbers can change; it is part of every cell's hash.
HARNESS_VERSION = "3"


class Attack(Protocol):
    def __call__(self, model: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor", threat: Any, *,
                 seed: int, **kwargs: Any) -> "torch.Tensor": ...


ATTACKS: dict[str, Callable[..., "torch.Tensor"]] = {}


def register(name: str):
    def deco(fn):
        if name in ATTACKS:
            raise ValueError(f"attack '{name}' registered twice")
        ATTACKS[name] = fn
        return fn

    return deco


def get_attack(name: str) -> Callable[..., "torch.Tensor"]:
    _load_all()
    if name not in ATTACKS:
        close = difflib.get_close_matches(name, ATTACKS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown attack '{name}'{hint} (known: {', '.join(sorted(ATTACKS))})")
    return ATTACKS[name]


def _load_all() -> None:
    """Import the attack modules so that they register (kept lazy: pyautoattack is heavy)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def run_attack(model: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor", threat: Any, *,
               seed: int = 0, attack: str | None = None, **overrides: Any) -> "torch.Tensor":
    """Run the threat's attack (or ``attack``) with its registry settings plus ``overrides``."""
    fn = get_attack(attack or threat.attack)
    kwargs = dict(threat.attack_args) if attack is None else {}
    kwargs.update(overrides)
    return fn(model, x, y, threat, seed=seed, **kwargs)
