"""Attacks: takes a model, images in [0, 1], labels and a threat; hands on adversarial images.

Our own PGD / APGD code, non-Lp threat attacks, and an adapter over pyautoattack.

Every attack has one signature::

    attack(model, x, y, threat: ThreatSpec, *, seed: int, index=None, **attack_args) -> x_adv

``x`` is a batch of images in [0, 1] (N, C, H, W), ``y`` the labels; ``model`` returns logits
and is in eval mode.  ``x_adv`` has the same shape, lies in [0, 1] and inside the threat's
perturbation set.  The evaluator counts an example robust when the model is correct on both
``x`` and ``x_adv``.  ``index`` holds each example's position in its cell: our attacks draw
every random number from ``(seed, index)`` (:mod:`._draws`), so an example's outcome does not
depend on the batch it is attacked in; ``None`` numbers the batch 0, 1, ...  Attacks register
themselves with :func:`register`; one without an ``index`` argument is called without it.
"""
from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:  # torch is heavy: planning and the leaderboard must not import it
    import torch

# Bump when any attack's numbers can change (the trust checks' included: what they break is stored);
# it is part of every cell's hash.
HARNESS_VERSION = "6"


class Attack(Protocol):
    def __call__(self, model: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor", threat: Any, *,
                 seed: int, **kwargs: Any) -> "torch.Tensor": ...


ATTACKS: dict[str, Callable[..., "torch.Tensor"]] = {}
# attacks that average their gradients over a randomized model's EOT samples (benchmark.models.defenses):
# our APGD family (through apgd._loss_grad) and pyautoattack's ``rand`` version
EOT_ATTACKS = ("apgd-ce", "apgd-mm", "apgd-l1", "mm5", "autoattack")


def eot_attack(name: str) -> bool:
    """Whether attack ``name`` accounts for a randomized model by expectation over transformation."""
    return name in EOT_ATTACKS


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


def _takes_index(fn: Callable[..., Any]) -> bool:
    import inspect

    params = inspect.signature(fn).parameters.values()
    return any(p.name == "index" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def run_attack(model: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor", threat: Any, *,
               seed: int = 0, attack: str | None = None, index: Any = None, **overrides: Any) -> "torch.Tensor":
    """Run the threat's attack (or ``attack``) with its registry settings plus ``overrides``;
    ``index``: the examples' positions in their cell (see the module docstring)."""
    fn = get_attack(attack or threat.attack)
    kwargs = dict(threat.attack_args) if attack is None else {}
    kwargs.update(overrides)
    if index is not None and _takes_index(fn):
        kwargs["index"] = index
    return fn(model, x, y, threat, seed=seed, **kwargs)
