"""Digits corruptions and generated shifts, registered with :mod:`benchmark.shifts`.

All are deterministic given the ``rng`` passed in; severities 1..5 increase the damage.
"""
from __future__ import annotations

import numpy as np

from .shifts import corruption


@corruption("gaussian_noise")
def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    return np.clip(x + rng.normal(0, sigma, size=x.shape), 0, 1)
