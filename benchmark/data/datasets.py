"""In-distribution data.  Images are float tensors (N, C, H, W) in [0, 1], labels int64.

The embedded ``digits`` dataset is scikit-learn's bundled handwritten digits (1,797 real 8x8
scans, 17 grey levels) scaled to [0, 1] and resized bilinearly to 16x16 so that blur, geometric
and font shifts have room to act; a fixed stratified split keeps 600 test images.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

DIGITS_SIZE = 16
DIGITS_TEST = 600
SPLIT_SEED = 0
NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}


def data_root(data_dir: str | Path | None = None) -> Path:
    """The root of the real datasets: ``--data-dir``, else $SHIFTBENCH_DATA, else ./data."""
    return Path(data_dir or os.environ.get("SHIFTBENCH_DATA", "data")).expanduser()


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (N, H, W) images, via torch for speed and determinism."""
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    out = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out[:, 0].clamp(0, 1).numpy()


@functools.lru_cache(maxsize=2)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = resize(bunch.images.astype(np.float32) / 16.0, DIGITS_SIZE)
    labels = bunch.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(
        images, labels, test_size=DIGITS_TEST, stratify=labels, random_state=SPLIT_SEED
    )
    return xtr, ytr, xte, yte


def digits(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Digits as numpy arrays: images (N, 16, 16) float32 in [0, 1], labels (N,) int64."""
    xtr, ytr, xte, yte = _digits_arrays()
    if split == "train":
        return xtr.copy(), ytr.copy()
    if split == "test":
        return xte.copy(), yte.copy()
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def to_tensor(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if x.dim() == 3:
        x = x[:, None]
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def load_id(dataset: str, split: str = "test", data_dir: str | Path | None = None,
            preprocessing: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The in-distribution images and labels of a dataset (ImageNet: read with the model's
    ``preprocessing``, default ``Res256Crop224``)."""
    if dataset == "digits":
        if preprocessing is not None:
            raise ValueError(f"preprocessing {preprocessing!r} given for digits; only ImageNet models take one")
        return to_tensor(*digits(split))
    from . import loaders  # real datasets (CIFAR, ImageNet) in their on-disk formats

    return loaders.load_id(dataset, split, data_root(data_dir), preprocessing)


def subset(n: int, total: int, seed: int) -> np.ndarray:
    """The fixed example indices a cell evaluates: a seeded permutation's first n (sorted)."""
    if n >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(total)[:n])
