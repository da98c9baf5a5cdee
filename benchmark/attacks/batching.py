"""Fixed-size micro-batches: an example's logits (and gradients) never depend on how many other
examples share its batch.

CPU and GPU libraries pick their kernels by the shape of a call: on an AVX-512 CPU, MKL and oneDNN
compute a batch of 1 and a batch of 1,000 with different kernels, which round differently, so the
same image gets logits that differ in the last bits.  An attack's batch shrinks as examples are
broken and differs with ``--batch-size``, shards and workers, so those last bits would depend on
the company an example keeps, and a chaotic step can turn them into another outcome.

Every call of a model or feature network the evaluator makes therefore runs on micro-batches of
exactly :data:`MICRO_BATCH` rows on a CPU (256 on a GPU, where small calls waste the device): the input is split, the last part is padded with zeros, and
the padding rows are dropped from the output (autograd flows through the split and the
concatenation).  Within a call of fixed shape, a row's result does not depend on its position or
on the other rows (checked for every CPU code path this machine has: tests/run/test_cross_cpu.py),
so an example's numbers are a function of the example alone.  The price is the padding of the
last micro-batch: ``perf/microbatch_cost.py`` measures it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .. import _numerics

MICRO_BATCH = 32  # rows per call on a CPU; a harness constant (part of HARNESS_VERSION): it changes last bits
DEVICE_MICRO_BATCH = {"cpu": MICRO_BATCH, "cuda": 256}  # a GPU is slow on small calls; its numbers differ anyway
_UNSET = object()
_size: object = _UNSET  # set only inside micro_batch_size() (perf/microbatch_cost.py, to compare)


@contextlib.contextmanager
def micro_batch_size(size: int | None) -> Iterator[None]:
    """For benchmarks only: calls made inside use micro-batches of ``size`` rows (``None``: the
    whole batch in one call, as before micro-batches existed).  Results computed inside are not
    the harness's numbers."""
    global _size
    saved, _size = _size, size
    try:
        yield
    finally:
        _size = saved


def current_size(device: torch.device | str = "cpu") -> int | None:
    """The micro-batch size calls on ``device`` use now: :data:`DEVICE_MICRO_BATCH` (32 rows on a
    CPU) but inside :func:`micro_batch_size`."""
    if _size is not _UNSET:
        return _size  # type: ignore[return-value]
    return DEVICE_MICRO_BATCH.get(torch.device(device).type, MICRO_BATCH)


def pad_rows(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` with zero rows appended up to ``size`` rows (itself when it has them)."""
    return x if len(x) == size else torch.cat([x, x.new_zeros((size - len(x), *x.shape[1:]))])


def _one_row_each(out: object, size: int) -> bool:
    """Whether a call's output is a tensor, or a list/tuple of tensors, with ``size`` rows."""
    parts = out if isinstance(out, (list, tuple)) else (out,)
    return all(isinstance(o, torch.Tensor) and o.dim() >= 1 and len(o) == size for o in parts)


def in_micro_batches(fn: Callable[[torch.Tensor], torch.Tensor | Sequence[torch.Tensor]], x: torch.Tensor,
                     size: int | None = None):
    """``fn(x)`` computed on zero-padded micro-batches of exactly ``size`` rows (default
    :func:`current_size` for ``x``'s device).  ``fn`` returns a tensor or a list/tuple of tensors
    with one row per input row; the same structure comes back."""
    size = size or current_size(x.device)
    n = len(x)
    if n == 0 or size is None:
        return fn(x)
    outs = []
    for start in range(0, n, size):
        part = x[start:start + size]
        k = len(part)
        out = fn(pad_rows(part, size))
        if not _one_row_each(out, size):
            return out  # not one row per input row: the caller's output checks name the problem
        outs.append(out[:k] if isinstance(out, torch.Tensor) else [o[:k] for o in out])
    if isinstance(outs[0], torch.Tensor):
        return outs[0] if len(outs) == 1 else torch.cat(outs)
    return [o[0] if len(outs) == 1 else torch.cat(o) for o in zip(*outs)]


class FixedBatch(nn.Module):
    """``model`` whose every call runs on micro-batches of :data:`MICRO_BATCH` rows (see the module
    docstring).  Parameters, buffers, device and mode are the wrapped model's."""

    def __init__(self, model: nn.Module, size: int | None = None):
        super().__init__()
        self.inner = model
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_micro_batches(self.inner, x, self.size)


def fixed_batch(model: nn.Module) -> nn.Module:
    """``model`` wrapped in :class:`FixedBatch` (itself when it already is).  A randomized model
    (:class:`..models.defenses.Randomized`) stays outermost, with the micro-batches inside it:
    its draws and votes are made per row and its network still sees fixed-shape calls.  Warns once
    per process when MKL runs in a mode where rows are not independent (:func:`.._numerics.check`)."""
    _numerics.check()
    if getattr(model, "stays_outermost", False):  # defenses.Randomized: its inner network gets the micro-batches
        return model if isinstance(model.inner, FixedBatch) else model.with_inner(FixedBatch(model.inner))
    return model if isinstance(model, FixedBatch) else FixedBatch(model)
