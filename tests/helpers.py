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
