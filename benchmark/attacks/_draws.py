"""Random draws of our attacks, keyed by (seed, example index, purpose), never by the batch.

An attack that drew its random starts from one generator per batch would give an example a
different start whenever the batch around it changes (``--batch-size``, shards, workers, a GPU
run with larger batches), so a cell's outcomes would depend on how it was cut.  Every random
number our attacks use comes from :class:`Draws` instead: example ``i`` of a cell gets its own
stream seeded by ``(seed, i, purpose)``, where ``purpose`` names the draw (``"start", restart``,
``"ce"``, ``"target", rank``, ...).  An example then sees the same numbers whatever else is in
its batch, and a cell's outcomes are the same at any batch size.

``index`` is the example's position in the cell (the evaluator passes it); called without one,
an attack numbers the examples of its batch 0, 1, ..., which is what a direct call expects.
The draws are made on the CPU (one small generator per example) and moved to the images'
device, so a GPU run draws the same numbers as a CPU run.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch

_MASK = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def example_seed(seed: int, index: int, purpose: tuple) -> int:
    """The seed of one example's stream for one purpose (a 63-bit integer)."""
    base = int.from_bytes(hashlib.blake2b(repr((int(seed), purpose)).encode(), digest_size=8).digest(), "little")
    return _splitmix64(base ^ _splitmix64(int(index))) >> 1


class Draws:
    """Per-example random streams for the examples of one attack call."""

    def __init__(self, seed: int, index: torch.Tensor | Sequence[int] | None, n: int):
        self.seed = int(seed)
        if index is None:
            self.index = list(range(n))
        else:
            self.index = [int(i) for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
            if len(self.index) != n:
                raise ValueError(f"index has {len(self.index)} entries for {n} examples")

    def __len__(self) -> int:
        return len(self.index)

    def take(self, which: torch.Tensor | Sequence[int]) -> "Draws":
        """The streams of a subset of the examples (positions, or a boolean mask)."""
        if isinstance(which, torch.Tensor):
            which = (which.nonzero().squeeze(1) if which.dtype == torch.bool else which).tolist()
        return Draws(self.seed, [self.index[int(i)] for i in which], len(which))

    def rand(self, shape: Sequence[int], *purpose, like: torch.Tensor | None = None) -> torch.Tensor:
        """Uniform [0, 1) numbers of ``shape`` per example, shape ``(len(self), *shape)``, on the
        device and dtype of ``like`` (float32 on the CPU without it)."""
        shape = tuple(int(s) for s in shape)
        gen = torch.Generator()
        rows = []
        for i in self.index:
            gen.manual_seed(example_seed(self.seed, i, purpose))
            rows.append(torch.rand(shape, generator=gen))
        out = torch.stack(rows) if rows else torch.zeros((0, *shape))
        return out.to(like) if like is not None else out

