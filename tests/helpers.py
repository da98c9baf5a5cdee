"""Helpers shared by the tests: a small MLP trained on the real digits in about a second."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.models import architectures
from benchmark.data import datasets


def train_tiny_mlp(epochs: int = 15, hidden: int = 32, depth: int = 1, lr: float = 1e-2,
                   batch: int = 128, seed: int = 0) -> torch.nn.Module:
    """A standard MLP on the digits train split, deterministic given ``seed``."""
    torch.manual_seed(seed)
    x, y = datasets.load_id("digits", "train")
    model = architectures.build("mlp", hidden=hidden, depth=depth)
    opt = torch.optim.Adam(model.parameters(), lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def frozen_mlp_and_correct_test_images(n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP (gradients off) and the clean-correct ones of the first ``n`` digits test images."""
    torch.set_num_threads(1)
    model = train_tiny_mlp(epochs=15, hidden=64, depth=1, lr=3e-3, batch=128)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = datasets.load_id("digits", "test")
    x, y = x[:n], y[:n]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    assert ok.float().mean() > 0.85, "the test model should learn the digits"
    return model, x[ok], y[ok]


class OutOfMemoryAbove(torch.nn.Module):
    """An MLP that runs out of GPU memory above ``limit`` images held at once, the way CUDA does
    (``torch.cuda.OutOfMemoryError``), on any device: what the executors' batch-size backoff meets
    on a real GPU, reproducible on a CPU.  As on a GPU, a pass with gradients holds its images'
    activations until its backward pass, so the micro-batches of one attack step add up (padding
    rows included); a pass without gradients holds only its own."""

    def __init__(self, limit: int = 100, hidden: int = 32, depth: int = 1):
        super().__init__()
        self.limit = limit
        self.held = 0
        self.net = architectures.build("mlp", hidden=hidden, depth=depth)

    def _release(self, grad: torch.Tensor) -> None:
        self.held = 0  # the backward pass frees the graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        graph = torch.is_grad_enabled() and x.requires_grad
        held = self.held + len(x) if graph else len(x)
        if held > self.limit:
            self.held = 0
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {held} images held at once (this model's "
                                              f"limit is {self.limit})")
        out = self.net(x)
        if graph:
            self.held = held
            out.register_hook(self._release)
        return out


def oom_mlp(limit: int = 100, hidden: int = 32, depth: int = 1) -> torch.nn.Module:
    """Factory for registry entries ``source: python:helpers:oom_mlp``."""
    return OutOfMemoryAbove(limit, hidden, depth)


class QuantisedSine(torch.nn.Module):
    """``base(round(x * levels) / levels + amp * sin(freq * x))``: the rounding has zero gradient,
    the sine term a non-zero one that points nowhere useful at the scale of the budget."""

    def __init__(self, base: torch.nn.Module, levels: int = 8, amp: float = 0.02, freq: float = 500.0):
        super().__init__()
        self.base, self.levels, self.amp, self.freq = base, levels, amp, freq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.round(x * self.levels) / self.levels
        return self.base(q + self.amp * torch.sin(self.freq * x))
