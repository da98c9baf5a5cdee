"""Design: which test images a dataset-shift cell attacks, under a suite's protocol.

* ``reference`` (OODRobustBench's design): every cell attacks the suite's seeded subset of
  ``n_shift_examples`` (default ``n_examples``) images, so each test image is attacked under every
  shift at every severity;
* ``lean``: the shifts that corrupt the ID test set image by image (:func:`aligned`: synthetic
  corruptions, CIFAR-10-C, CIFAR-100-C, ImageNet-C, whose image i is ID test image i corrupted) share
  out the seeded subset of ``n_examples`` test images: each image is attacked under
  ``shifts_per_image`` of them, at all their severities (a shift's severity curve stays paired),
  the images of every class shared out evenly, fixed by the suite's seed (:func:`assign`).

A shift's images under ``lean`` are a class-stratified random sample of the same test images the
reference design attacks, so each shift's mean, and OOD-D (their mean), estimate the same
quantities; with G aligned shifts and k shifts per image they cost k/G of the reference's attacks,
and their intervals (which follow the images each cell holds, :mod:`benchmark.analysis.stats`)
are wider per shift.  Other dataset shifts (re-collected sets such as CIFAR-10.1, generated ones
such as the digits fonts) are the same cells under both protocols.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import PROTOCOLS  # noqa: F401  (re-exported: the protocols this module implements)

# shifts whose image i is the ID test set's image i: synthetic corruptions and these loaders
ALIGNED_LOADERS = ("loader:cifar-c", "loader:imagenet-c")
_SALT = 29  # mixed into the suite's seed, so the shares are not the subset's own permutation


@dataclass(frozen=True)
class Design:
    """A lean cell's share of the test images: group ``group`` of the suite's aligned shifts
    ``groups`` (in suite order), each image in ``per_image`` groups, out of the seeded subset of
    ``pool`` test images.  Part of the cell's key: it changes which images are attacked."""

    groups: tuple[str, ...]
    group: int
    per_image: int
    pool: int

    @property
    def protocol(self) -> str:
        return "lean"

    def record(self, images: np.ndarray) -> dict:
        """What a lean result stores: the design and the test-image indices its outcomes follow."""
        return {"protocol": self.protocol, "group": self.group, "groups": len(self.groups),
                "per_image": self.per_image, "pool": self.pool, "images": [int(i) for i in images]}

    def images_at_most(self, available: int) -> int:
        """The group's size, at most (every group holds within one of the mean share)."""
        return -(-min(self.pool, available) * self.per_image // len(self.groups))


def aligned(shift) -> bool:
    """Whether a shift's image i is the ID test set's image i (so the lean design can share out
    the test images among such shifts)."""
    return shift.source.startswith("synthetic:") or shift.source in ALIGNED_LOADERS


def assign(labels: np.ndarray, groups: int, per_image: int, seed: int) -> list[np.ndarray]:
    """For each of ``groups`` shifts, the sorted positions (into ``labels``) of the images it
    attacks.  Every position falls in exactly ``per_image`` distinct groups; every group holds
    within one image of every other, and within one image of every other group's share of each
    class; the shares are fixed by ``seed``.

    How: the positions of each class in a seeded random order, classes one after the other; the
    p-th position goes to groups ``(p * per_image + r + offset) mod groups`` for ``r < per_image``,
    so any run of consecutive positions (a class, or the whole set) spreads evenly over the groups.
    """
    labels = np.asarray(labels)
    if not 1 <= per_image <= groups:
        raise ValueError(f"shifts_per_image must be between 1 and the {groups} shift(s) that share the test images, "
                         f"got {per_image}")
    rng = np.random.default_rng([seed, _SALT])
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
                           or [np.zeros(0, dtype=int)])
    offset = int(rng.integers(groups))
    slots = (np.arange(len(order))[:, None] * per_image + np.arange(per_image)[None, :] + offset) % groups
    return [np.sort(order[(slots == g).any(axis=1)]) for g in range(groups)]


def share(design: Design, labels: np.ndarray, seed: int) -> np.ndarray:
    """The positions (into the pool's ``labels``) that ``design``'s group attacks."""
    return assign(labels, len(design.groups), design.per_image, seed)[design.group]
