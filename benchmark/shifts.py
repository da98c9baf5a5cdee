"""Dataset shifts: where a shifted test set comes from.

``source`` in a shift entry selects one of:

* ``synthetic:<name>``: a corruption applied to the ID test images, deterministic by seed, at
  severities 1..5.  Generators take images (N, H, W) or (N, C, H, W) in [0, 1] and return the
  same shape in [0, 1]: ``fn(images, severity, rng, **params)``.
* ``generated:<name>``: a test set made without the ID images (e.g. digits typeset from fonts):
  ``fn(severity, rng, **params) -> (images, labels)``.
* ``loader:<format>``: real files on disk, read by :mod:`benchmark.loaders`.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import datasets
from .registry import ShiftSpec

CORRUPTIONS: dict[str, Callable[..., np.ndarray]] = {}
GENERATED: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {}


def corruption(name: str):
    def deco(fn):
        if name in CORRUPTIONS:
            raise ValueError(f"corruption '{name}' registered twice")
        CORRUPTIONS[name] = fn
        return fn

    return deco


def generated(name: str):
    def deco(fn):
        if name in GENERATED:
            raise ValueError(f"generated shift '{name}' registered twice")
        GENERATED[name] = fn
        return fn

    return deco


def shift_seed(spec: ShiftSpec, severity: int | None, seed: int) -> int:
    """A stable per-(shift, severity, seed) seed, so that each shifted set is reproducible."""
    import zlib

    return zlib.crc32(f"{spec.id}:{spec.version}:{severity}:{seed}".encode())


def load_shift(spec: ShiftSpec, severity: int | None = None, *, seed: int = 0,
               data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The shifted test images and labels (labels in the ID class space)."""
    return _load_shift_cached(spec, severity, seed, str(data_dir) if data_dir else None)


@functools.lru_cache(maxsize=2)  # cells of one shift and severity are adjacent in the plan
def _load_shift_cached(spec: ShiftSpec, severity, seed, data_dir):
    kind, _, name = spec.source.partition(":")
    if spec.severities and severity not in spec.severities:
        raise ValueError(f"shift '{spec.id}' has severities {list(spec.severities)}, not {severity}")
    rng = np.random.default_rng(shift_seed(spec, severity, seed))
    if kind == "synthetic":
        fn = _lookup(CORRUPTIONS, name, spec)
        if spec.dataset == "digits":
            x, y = datasets.digits("test")
        else:
            xt, yt = datasets.load_id(spec.dataset, "test", data_dir)
            x, y = xt.numpy(), yt.numpy()
        out = fn(x, severity, rng, **dict(spec.params))
        return datasets.to_tensor(np.clip(out, 0, 1).astype(np.float32), y)
    if kind == "generated":
        fn = _lookup(GENERATED, name, spec)
        x, y = fn(severity, rng, **dict(spec.params))
        return datasets.to_tensor(np.clip(x, 0, 1).astype(np.float32), y)
    if kind == "loader":
        from . import loaders

        return loaders.load_shift(spec, severity, datasets.data_root(data_dir))
    raise ValueError(f"{spec.path}: key 'source': unknown shift source kind '{kind}'")


def _lookup(table: dict, name: str, spec: ShiftSpec):
    _load_generators()
    if name not in table:
        raise KeyError(f"{spec.path}: key 'source': no generator named '{name}' (known: {', '.join(sorted(table))})")
    return table[name]


def _load_generators() -> None:
    from . import corruptions  # noqa: F401  (registers the digits corruptions and generators)
