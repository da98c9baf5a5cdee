"""Fixtures shared by the attack tests."""
from __future__ import annotations

import pytest
import torch

from benchmark.data import datasets
from helpers import train_tiny_mlp


@pytest.fixture(scope="module")
def trained():
    """A standard MLP trained for ~1 s on the digits train split, and 48 clean-correct test images."""
    m = train_tiny_mlp(epochs=6, hidden=64, depth=2, lr=2e-3, batch=64)
    m.eval()
    x, y = datasets.load_id("digits", "test")
    x, y = x[:64], y[:64]
    with torch.no_grad():
        ok = m(x).argmax(1) == y
    assert ok.float().mean() > 0.8, "the test model did not train"
    return m, x[ok][:48], y[ok][:48]
