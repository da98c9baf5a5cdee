"""Weights verification: a checkpoint is read only after its sha256 matches the entry, and never
runs code (``torch.load(..., weights_only=True)``).  Shared by every model loader."""
from __future__ import annotations

from pathlib import Path

import torch

from ..registry import sha256_file


class WeightsError(RuntimeError):
    pass


def verified_state_dict(path: Path, sha256: str | None, entry_path: str = "") -> dict:
    """Check ``path`` against ``sha256`` (when known), then load it without executing code."""
    if not path.is_file():
        raise WeightsError(f"{entry_path}: key 'weights': file not found: {path}")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise WeightsError(
                f"{entry_path}: key 'sha256': {path} has sha256 {actual}, the entry says {sha256}; "
                "the file is corrupt or was replaced (re-download it, or retrain with `shiftbench zoo train`)"
            )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (pickle.UnpicklingError, RuntimeError, EOFError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{entry_path}: key 'weights': {path} is not a plain tensor checkpoint, so it was not loaded "
            f"(torch.load(weights_only=True) refused it: {first}); a checkpoint that needs more than tensors "
            "can run code when unpickled: re-save it as a state_dict of tensors"
        ) from None
