"""Model loading: registry entry -> ``nn.Module`` in eval mode taking images in [0, 1].

Weights are verified against the entry's sha256 before they are read, and read with
``torch.load(..., weights_only=True)``.  An entry can run code only through a
``python:module:factory`` source, and only when the user opted in: ``--allow-code`` (all
modules) or a suite's ``allow_code`` list of module prefixes, passed down as
``$SHIFTBENCH_ALLOW_CODE`` so that worker processes see the same choice.  Without it the entry is
refused before its module is imported.

Every loaded model is probed once on a few random images: its output must be a floating-point
``(batch, classes)`` tensor of finite logits; probabilities instead of logits (attacks on softmax
outputs are weaker) get a warning; a model whose output changes between two identical calls is
refused unless its entry declares ``randomized`` (:mod:`.defenses`).
"""
from __future__ import annotations

import contextlib

import importlib
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..registry import (CODE_ENV, CodeNotAllowed, ModelSpec, Registry, RegistryError, allowed_code,  # noqa: F401
                        module_allowed)  # (CodeNotAllowed, allowed_code: part of this module's API)
from . import architectures
from .errors import ModelError  # noqa: F401  (part of this module's API)
from .weights import WeightsError, verified_state_dict  # noqa: F401  (WeightsError: part of this module's API)


def fast_layout(model: nn.Module) -> nn.Module:
    """Our builtin conv nets in channels-last memory layout: on a CPU their attack runs about a
    third faster (mkldnn convolutions and pooling), logits agree to ~1e-6.  Only for the builtin
    architectures, which flatten with ``nn.Flatten``; third-party code may ``view`` conv outputs."""
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model


INPUT_SHAPES = {"digits": (1, 16, 16), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "imagenet": (3, 224, 224)}


class ModelWarning(UserWarning):
    pass


def code_module(spec: ModelSpec) -> str | None:
    """The module a ``python:`` entry imports (None for every other source)."""
    return spec.source_target.partition(":")[0] if spec.source_kind == "python" else None


@contextlib.contextmanager
def code_opt_in(allow: bool):
    """While active, ``--allow-code`` is in force here and in worker processes started meanwhile
    (they inherit ``$SHIFTBENCH_ALLOW_CODE``); the variable is restored afterwards."""
    if not allow:
        yield
        return
    saved = os.environ.get(CODE_ENV)
    os.environ[CODE_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(CODE_ENV, None)
        else:
            os.environ[CODE_ENV] = saved


def code_allowed(spec: ModelSpec, allow: bool | Sequence[str] | None = None) -> bool:
    module = code_module(spec)
    if module is None:
        return True
    return module_allowed(module, allowed_code() if allow is None else allow)


def refuse_code(spec: ModelSpec) -> CodeNotAllowed:
    module = code_module(spec)
    return CodeNotAllowed(spec.path, "source", f"model '{spec.id}' runs code from module '{module}' "
                          f"({spec.source}); not imported. If you trust it, re-run with --allow-code, or add "
                          f"'{module}' to the suite's allow_code list")


def load_model(spec: ModelSpec, registry: Registry, *, model_dir: str | Path | None = None,
               allow_code: bool | Sequence[str] | None = None, probe: bool = True) -> nn.Module:
    """Build the entry's model.  ``allow_code`` (default: ``$SHIFTBENCH_ALLOW_CODE``) gates
    ``python:`` sources; ``probe`` checks its outputs once (see the module docstring)."""
    model = _build(spec, registry, model_dir, allow_code).eval()
    from .defenses import DefenseError, defend

    try:  # the entry's declared defenses, else those a python: module declares on itself
        model = defend(model, randomized=spec.randomized or None, input_transform=spec.input_transform or None,
                       allow_code=allow_code, where=f"model '{spec.id}' ({spec.path})").eval()
    except DefenseError as exc:
        raise RegistryError(spec.path, "input_transform" if "input_transform" in str(exc) else "randomized",
                            str(exc)) from None
    if probe:
        probe_outputs(model, spec)
    return model


def _build(spec: ModelSpec, registry: Registry, model_dir, allow_code) -> nn.Module:
    kind = spec.source_kind
    if kind in ("builtin", "file"):
        model = architectures.build(spec.source_target, **dict(spec.arch_args))
        state = verified_state_dict(registry.weights_path(spec), spec.sha256, spec.path)
        model.load_state_dict(state)
        model = fast_layout(model)
    elif kind == "python":
        module_name, _, factory = spec.source_target.partition(":")
        if not factory:
            raise RegistryError(spec.path, "source", "python sources are written python:module:factory")
        if not code_allowed(spec, allow_code):
            raise refuse_code(spec)
        fn = getattr(importlib.import_module(module_name), factory)
        model = fn(**dict(spec.arch_args))
        wp = registry.weights_path(spec)
        if wp is not None:
            model.load_state_dict(verified_state_dict(wp, spec.sha256, spec.path))
    elif kind == "robustbench":
        from . import robustbench

        model = robustbench.load(spec, registry, model_dir=model_dir)
    else:  # pragma: no cover - validated by the registry
        raise RegistryError(spec.path, "source", f"unknown source kind '{kind}'")
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec.path}: key 'source': {spec.source} returned {type(model).__name__}, not a "
                         "torch.nn.Module")
    return model


def check_logits(z: object, batch: int, classes: int | None, where: str) -> torch.Tensor:
    """``z`` must be a floating-point ``(batch, classes)`` tensor of finite values."""
    if not isinstance(z, torch.Tensor):
        raise ModelError(f"{where}: returned {type(z).__name__}, expected a tensor of logits")
    if not z.is_floating_point():
        raise ModelError(f"{where}: returned dtype {z.dtype}, expected floating-point logits")
    if z.dim() != 2 or z.shape[0] != batch or (classes is not None and z.shape[1] != classes):
        want = f"({batch}, {classes})" if classes is not None else f"({batch}, classes)"
        raise ModelError(f"{where}: returned shape {tuple(z.shape)}, expected {want} logits")
    if not torch.isfinite(z).all():
        raise ModelError(f"{where}: returned NaN or infinite logits")
    return z


@torch.no_grad()
def probe_outputs(model: nn.Module, spec: ModelSpec, batch: int = 4) -> None:
    """Run the model on ``batch`` seeded random images of its dataset's shape (see module docstring)."""
    from ..data.datasets import NUM_CLASSES

    shape = INPUT_SHAPES.get(spec.dataset)
    if shape is None:
        return
    where = f"model '{spec.id}' ({spec.path})"
    dev = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(0)).to(dev)
    try:
        a, b = model(x), model(x)
    except Exception as exc:
        raise ModelError(f"{where}: raised {type(exc).__name__} on a batch of {batch} images of shape {shape}: "
                         f"{exc}") from exc
    check_logits(a, batch, NUM_CLASSES.get(spec.dataset), where)
    if (a >= 0).all() and (a <= 1).all() and torch.allclose(a.float().sum(1), torch.ones(batch, device=a.device),
                                                            atol=1e-3):
        warnings.warn(f"{where}: outputs look like probabilities (rows in [0, 1] summing to 1), not logits; "
                      "attacks on softmax outputs are weakened, so its robust accuracy may be overstated",
                      ModelWarning, stacklevel=2)
    if not torch.equal(a, b):
        from .defenses import changes_between_calls, require_declared

        require_declared(model, x, where)  # beyond float noise and undeclared: refused
        if not changes_between_calls(model, x):
            warnings.warn(f"{where}: two identical calls in eval mode gave outputs differing in the last bits (max "
                          f"difference {float((a - b).abs().max()):.3g}); its cells will be flagged 'deterministic'",
                          ModelWarning, stacklevel=2)
