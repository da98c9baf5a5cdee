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

A threat entry (or an ``--attack`` / ``attack=`` override) may also name ``python:module:function``:
the defense author's own attack, with this signature.  It runs through :func:`run_attack` like ours
(same cells, trust checks, results), but its module is imported only on the code opt-in
(``--allow-code``, ``$SHIFTBENCH_ALLOW_CODE``, a suite's ``allow_code`` prefixes), as for
``python:`` model sources: :func:`code_attack`.
"""
from __future__ import annotations

import contextlib
import contextvars
import difflib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from ..registry import PYTHON_ATTACK, CodeNotAllowed, RegistryError, allowed_code, check_python_source, module_allowed

if TYPE_CHECKING:  # torch is heavy: planning and the leaderboard must not import it
    import torch

# Bump when any attack's numbers can change (the trust checks' included: what they break is stored);
# it is part of every cell's hash.
HARNESS_VERSION = "8"


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


def is_code_attack(name: str | None) -> bool:
    """Whether ``name`` is a user's ``python:module:function`` attack (user code, behind the opt-in)."""
    return bool(name) and name.startswith(PYTHON_ATTACK)


# module prefixes a suite's ``allow_code`` adds to $SHIFTBENCH_ALLOW_CODE while its cells run (:func:`suite_code`)
_SUITE_CODE: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("shiftbench_suite_code", default=())


@contextlib.contextmanager
def suite_code(prefixes: Sequence[str]) -> Iterator[None]:
    """While active, ``python:`` attacks under a suite's ``allow_code`` prefixes may be imported
    (the evaluator wraps a suite's cells in it; ``--allow-code`` travels in the environment)."""
    token = _SUITE_CODE.set(tuple(prefixes))
    try:
        yield
    finally:
        _SUITE_CODE.reset(token)


def _where(threat: Any) -> tuple[str, str | None]:
    """(path, key) an error about a threat's attack names: the threat file and its key ``attack``."""
    path = getattr(threat, "path", "") or f"threat '{getattr(threat, 'id', '?')}'"
    return path, "attack"


def check_code_attack(name: str, *, allow: Any = None, path: str = "--attack", key: str | None = None) -> str:
    """Refuse a ``python:`` attack the user did not opt in to, importing nothing; returns its
    module.  ``allow``: True, module prefixes, or None for the opt-in in force."""
    target = name[len(PYTHON_ATTACK):]
    check_python_source(target, path, key, "attack")  # well-formed, not the standard library
    module = target.partition(":")[0]
    allowed = allowed_code(_SUITE_CODE.get()) if allow is None else allow
    if not module_allowed(module, allowed):
        raise CodeNotAllowed(path, key, f"attack '{name}' runs code from module '{module}'; not imported. If you "
                             f"trust it, re-run with --allow-code (allow_code=True in Python, or "
                             f"SHIFTBENCH_ALLOW_CODE=1), or add '{module}' to the suite's allow_code list")
    return module


def code_attack(name: str, *, allow: Any = None, path: str = "--attack", key: str | None = None
                ) -> Callable[..., "torch.Tensor"]:
    """The function a ``python:module:function`` attack names, imported on the opt-in only
    (:func:`check_code_attack`).  The module is looked up on ``sys.path`` and in the current
    folder (the user's repository), as ``python:`` model sources are."""
    import importlib
    import os
    import sys

    module = check_code_attack(name, allow=allow, path=path, key=key)
    fn_name = name.rsplit(":", 1)[1]
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise RegistryError(path, key, f"attack '{name}': module '{module}' cannot be imported ({exc}); it is looked "
                            "up on sys.path and in the current folder") from exc
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    fn = getattr(mod, fn_name, None)
    if fn is None:
        raise RegistryError(path, key, f"attack '{name}': module '{module}' ({getattr(mod, '__file__', '?')}) has no "
                            f"attribute '{fn_name}'")
    if not callable(fn):
        raise RegistryError(path, key, f"attack '{name}': '{module}.{fn_name}' is not callable ({type(fn).__name__}); "
                            "name a function attack(model, x, y, threat, *, seed, index=None, **args)")
    return fn


def load_code_attacks(threats: Sequence[Any], attack: str | None = None, *, allow: Any = None,
                      override: str = "--attack") -> list[str]:
    """Before a run: import every ``python:`` attack it would call (``attack``, else each threat's),
    so that a refusal or a broken module is reported before any cell runs, naming the threat file
    and key ``attack`` (or ``override``, the argument that gave ``attack``).  Returns their names."""
    if attack is not None:
        wanted = [(attack, override, None)]
    else:
        wanted = [(t.attack, *_where(t)) for t in threats]
    done: list[str] = []
    for name, path, key in wanted:
        if is_code_attack(name) and name not in done:
            code_attack(name, allow=allow, path=path, key=key)
            done.append(name)
    return done


def get_attack(name: str, *, allow: Any = None, path: str = "--attack", key: str | None = None
               ) -> Callable[..., "torch.Tensor"]:
    """The attack called ``name``; a ``python:`` one through :func:`code_attack` (``allow``,
    ``path`` and ``key``: its opt-in and what an error names)."""
    if is_code_attack(name):
        return code_attack(name, allow=allow, path=path, key=key)
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
    name = attack or threat.attack
    path, key = _where(threat) if attack is None else ("--attack", None)
    fn = get_attack(name, path=path, key=key)
    kwargs = dict(threat.attack_args) if attack is None else {}
    kwargs.update(overrides)
    if index is not None and _takes_index(fn):
        kwargs["index"] = index
    x_adv = fn(model, x, y, threat, seed=seed, **kwargs)
    if is_code_attack(name):
        _check_output(x_adv, x, name)
    return x_adv


def _check_output(x_adv: Any, x: "torch.Tensor", name: str) -> None:
    """A user's attack must hand back a tensor like ``x`` (the trust checks then judge its range
    and budget); anything else fails its cell with a message naming the attack."""
    import torch

    if not isinstance(x_adv, torch.Tensor):
        raise TypeError(f"attack '{name}' returned {type(x_adv).__name__}, expected a tensor of adversarial images")
    if x_adv.shape != x.shape or not x_adv.is_floating_point() or x_adv.device != x.device:
        raise ValueError(f"attack '{name}' returned a {x_adv.dtype} tensor of shape {tuple(x_adv.shape)} on "
                         f"{x_adv.device}; expected floating-point images of shape {tuple(x.shape)} on {x.device}, "
                         "like its input")
