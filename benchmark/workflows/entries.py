"""Model arguments of the workflows: an entry file, a registry id, a ``python:module:factory``
source or an in-memory module -> a model entry (spec) and the loaded ``nn.Module``.

A ``python:`` source imports and runs the named code, so it is refused unless the caller opts in
(``allow_code`` / ``--allow-code``): a registry entry never runs code the user did not choose.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from torch import nn

from ..models.load import load_model
from ..registry import ModelSpec, Registry, RegistryError, build_spec, load_yaml, sha256_file


class CodeNotAllowed(ValueError):
    """A ``python:module:factory`` model without the caller's opt-in."""


def check_code_allowed(spec: ModelSpec, allow_code: bool, where: str) -> None:
    if spec.source_kind == "python" and not allow_code:
        raise CodeNotAllowed(
            f"{where}: key 'source': {spec.source!r} imports and runs Python code from module "
            f"'{spec.source_target.partition(':')[0]}'; pass --allow-code (allow_code=True) if you trust it")


def is_entry_file(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml")) or Path(arg).is_file()


def read_entry(path: str | Path) -> ModelSpec:
    """A model entry from its YAML file, validated like a registry entry (errors name file and key)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: entry file not found")
    return build_spec("models", load_yaml(path), path)


def with_weights(spec: ModelSpec, weights: str | Path) -> ModelSpec:
    """The entry with ``weights`` as its weights file and that file's sha256 (``--weights``: the
    user names the file, so its checksum is taken, not claimed)."""
    wp = Path(weights).resolve()
    if not wp.is_file():
        raise FileNotFoundError(f"--weights {weights}: file not found")
    return dataclasses.replace(spec, weights=str(wp), sha256=sha256_file(wp))


def locate_weights(spec: ModelSpec) -> ModelSpec:
    """An entry read from a file outside a registry: its relative ``weights`` resolved against the
    entry's folder, then each folder above it (an entry kept in a registry layout, e.g.
    ``registry/models/digits/x.yaml`` with ``weights/digits/x.pt``); made absolute."""
    if spec.weights is None or spec.weights.startswith("pkg:") or Path(spec.weights).is_absolute():
        return spec
    here = Path(spec.path).resolve().parent
    tried = [d / spec.weights for d in (here, *here.parents)]
    for cand in tried:
        if cand.is_file():
            return dataclasses.replace(spec, weights=str(cand))
    raise RegistryError(spec.path, "weights", f"weights file {spec.weights!r} not found next to the entry or in a "
                        f"folder above it (looked in {tried[0].parent} and its parents); pass --weights FILE")


def python_spec(source: str, dataset: str, weights: str | Path | None) -> ModelSpec:
    """A model given on the command line as ``python:module:factory`` (with ``--weights``)."""
    target = source.split(":", 1)[1] if ":" in source else ""
    if target.count(":") != 1 or not all(target.split(":")):
        raise ValueError(f"--model {source!r}: python sources are written python:module:factory")
    spec = ModelSpec(id=target.replace(":", "."), source=source, dataset=dataset,
                     architecture=target.split(":")[1], training="unknown", path="<command line>")
    return with_weights(spec, weights) if weights is not None else spec


def resolve(model: str | nn.Module | ModelSpec, registry: Registry, *, dataset: str, weights: str | Path | None = None,
            allow_code: bool = False) -> ModelSpec | nn.Module:
    """The model a workflow evaluates: an entry (to load) or an ``nn.Module`` as given."""
    if isinstance(model, nn.Module):
        if weights is not None:
            raise ValueError("weights apply to an entry or a python:module:factory source, not to an nn.Module")
        return model
    if isinstance(model, ModelSpec):
        spec = model
    elif model.startswith("python:"):
        spec = python_spec(model, dataset, weights)
        weights = None
    elif is_entry_file(model):
        spec = locate_weights(read_entry(model)) if weights is None else read_entry(model)
    else:
        spec = registry.model(model)
    if weights is not None:
        spec = with_weights(spec, weights)
    check_code_allowed(spec, allow_code, spec.path or str(model))
    if spec.dataset != dataset:
        raise ValueError(f"{spec.path or model}: key 'dataset': model is for '{spec.dataset}', the suite is on '{dataset}'")
    return spec


def load(spec: ModelSpec | nn.Module, registry: Registry, *, model_dir: str | Path | None = None,
         allow_code: bool = False) -> nn.Module:
    """Load an entry's model (weights sha256-checked, ``weights_only``); a module is returned in eval mode.
    A ``python:`` module is looked up on the path and in the current folder (the user's repository)."""
    if isinstance(spec, nn.Module):
        return spec.eval()
    cwd = os.getcwd()
    added = spec.source_kind == "python" and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return load_model(spec, registry, model_dir=model_dir, allow_code=True if allow_code else None)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
