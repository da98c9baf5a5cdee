"""Dataset shifts: where a shifted test set comes from.

``source`` in a shift entry selects one of:

* ``synthetic:<name>``: a corruption applied to the ID test images, deterministic by seed, at
  severities 1..5.  Generators take images (N, H, W) or (N, C, H, W) in [0, 1] and return the
  same shape in [0, 1]: ``fn(images, severity, rng, **params)``.
* ``generated:<name>``: a test set made without the ID images (e.g. digits typeset from fonts):
  ``fn(severity, rng, **params) -> (images, labels)``.
* ``loader:<format>``: real files on disk, read by :mod:`benchmark.data.loaders`.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import corruptions, datasets
from ..registry import ShiftSpec

def shift_seed(spec: ShiftSpec, severity: int | None, seed: int) -> int:
    """A stable per-(shift, severity, seed) seed, so that each shifted set is reproducible."""
    import zlib

    return zlib.crc32(f"{spec.id}:{spec.version}:{severity}:{seed}".encode())


def load_shift(spec: ShiftSpec, severity: int | None = None, *, seed: int = 0,
               data_dir: str | Path | None = None,
               preprocessing: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The shifted test images and labels (labels in the ID class space).

    ``preprocessing`` is the evaluated model's (ImageNet models); it matters only for entries
    that defer to it (``params.transform: model``) and for synthetic shifts of ImageNet."""
    if spec.source.startswith("synthetic:"):
        preprocessing = preprocessing if spec.dataset == "imagenet" else None
    elif dict(spec.params).get("transform") != "model":
        preprocessing = None  # a fixed transform: one cached copy serves every model
    # the data root is resolved now, so a changed $SHIFTBENCH_DATA is never served from the cache
    root = None if spec.dataset == "digits" else str(datasets.data_root(data_dir))
    key = (spec, severity, seed, root, preprocessing)
    hit = _CACHE.get(key)
    if hit is None:
        hit = _load_shift_uncached(*key)
        _CACHE.put(key, hit)
    return hit


class _ByteLRU:
    """LRU cache bounded by bytes: all 91 digits sets (~60 MB) stay in memory across models,
    while a few ImageNet-sized sets (GBs each) never pile up."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.items, self.size = max_bytes, OrderedDict(), 0

    def get(self, key):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key, value: tuple[torch.Tensor, ...]) -> None:
        nbytes = sum(t.numel() * t.element_size() for t in value)
        if nbytes > self.max_bytes:
            return
        self.items[key] = value
        self.size += nbytes
        while self.size > self.max_bytes:
            _, old = self.items.popitem(last=False)
            self.size -= sum(t.numel() * t.element_size() for t in old)


_CACHE = _ByteLRU(int(os.environ.get("SHIFTBENCH_SHIFT_CACHE_MB", "1024")) * 2**20)


def _load_shift_uncached(spec: ShiftSpec, severity, seed, data_dir, preprocessing):
    kind, _, name = spec.source.partition(":")
    if spec.severities and severity not in spec.severities:
        raise ValueError(f"shift '{spec.id}' has severities {list(spec.severities)}, not {severity}")
    rng = np.random.default_rng(shift_seed(spec, severity, seed))
    if kind == "synthetic":
        fn = _lookup(corruptions.CORRUPTIONS, name, spec)
        if spec.dataset == "digits":
            x, y = datasets.digits("test")
        else:
            xt, yt = datasets.load_id(spec.dataset, "test", data_dir, preprocessing)
            x, y = xt.numpy(), yt.numpy()
        out = fn(x, severity, rng, **dict(spec.params))
        return datasets.to_tensor(np.clip(out, 0, 1).astype(np.float32), y)
    if kind == "generated":
        fn = _lookup(corruptions.GENERATED, name, spec)
        x, y = fn(severity, rng, **dict(spec.params))
        return datasets.to_tensor(np.clip(x, 0, 1).astype(np.float32), y)
    if kind == "loader":
        from . import loaders

        return loaders.load_shift(spec, severity, datasets.data_root(data_dir), preprocessing)
    raise ValueError(f"{spec.path}: key 'source': unknown shift source kind '{kind}'")


def _lookup(table: dict, name: str, spec: ShiftSpec):
    if name not in table:
        raise KeyError(f"{spec.path}: key 'source': no generator named '{name}' (known: {', '.join(sorted(table))})")
    return table[name]
