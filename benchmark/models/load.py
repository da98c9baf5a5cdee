"""Model loading: registry entry -> ``nn.Module`` in eval mode taking images in [0, 1].

Weights are verified against the entry's sha256 before they are read, and read with
``torch.load(..., weights_only=True)``: an entry can never run code unless its source is
``python:module:factory``, which names user code on purpose.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from ..registry import ModelSpec, Registry, RegistryError
from . import architectures
from .weights import WeightsError, verified_state_dict  # noqa: F401  (WeightsError: part of this module's API)


def fast_layout(model: nn.Module) -> nn.Module:
    """Our builtin conv nets in channels-last memory layout: on a CPU their attack runs about a
    third faster (mkldnn convolutions and pooling), logits agree to ~1e-6.  Only for the builtin
    architectures, which flatten with ``nn.Flatten``; third-party code may ``view`` conv outputs."""
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model


def load_model(spec: ModelSpec, registry: Registry, *, model_dir: str | Path | None = None) -> nn.Module:
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
    return model.eval()
