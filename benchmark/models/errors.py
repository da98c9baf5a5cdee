"""Errors of model loading and use, shared by :mod:`.load` and :mod:`.defenses`."""
from __future__ import annotations


class ModelError(RuntimeError):
    """A model's outputs cannot be used (wrong shape or dtype, NaN/inf logits, undeclared randomness)."""
