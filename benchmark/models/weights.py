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


# --------------------------------------------------------------------------- lock file (trust on first use)
LOCK_NAME = "weights.lock"
LOCK_ENV = "SHIFTBENCH_WEIGHTS_LOCK"  # another lock file (e.g. when the registry folder is read-only)


def lock_path(registry_root: Path | str) -> Path:
    """The registry's lock file: ``<registry>/weights.lock``, or ``$SHIFTBENCH_WEIGHTS_LOCK``."""
    import os

    return Path(os.environ.get(LOCK_ENV) or Path(registry_root) / LOCK_NAME)


def read_lock(path: Path) -> dict[str, dict[str, str]]:
    """``{model id: {file name: sha256}}`` (empty when there is no lock file yet)."""
    from ..data.pins import PinError, read_pins

    try:
        return read_pins(path)
    except PinError as exc:
        raise WeightsError(str(exc)) from None


def pinned(registry_root: Path | str, model_id: str, files: list[Path], entry_path: str = "") -> dict[str, str]:
    """Verify ``files`` (one model's checkpoints, ensembles all parts) against the lock, or
    record them there on first use; returns ``{file name: sha256}``.

    A model whose registry entry has no sha256 (the RobustBench zoo) is pinned the first time its
    checkpoints are read: their sha256 go into the registry's lock file, with a message saying
    so, and every later load is checked against them, so a replaced checkpoint is an error rather
    than a stale result.  The pinned checksums are part of the cell key (run/plan.py)."""
    import sys

    from ..data.pins import PinError, pin

    path = lock_path(registry_root)
    got = {p.name: sha256_file(p) for p in files}
    try:
        known, recorded = pin(path, model_id, got)
    except PinError as exc:
        raise WeightsError(str(exc)) from None
    if recorded:
        print(f"{entry_path or model_id}: its entry has no sha256; recorded the sha256 of "
              f"{', '.join(sorted(got))} in {path} (trust on first use). Later loads are verified "
              f"against it and it is part of every cell key; commit the lock file to pin it for "
              f"everyone.", file=sys.stderr)
        return known
    for name, sha in got.items():
        want = known.get(name)
        if want is None:
            raise WeightsError(f"{entry_path or model_id}: {name} is not in the lock file {path} (which pins "
                               f"{', '.join(sorted(known))}); delete the model's entry there to record it again")
        if want != sha:
            raise WeightsError(f"{entry_path or model_id}: {name} has sha256 {sha}, but {path} pinned {want} "
                               "when it was first loaded: the checkpoint was replaced. Restore the original "
                               f"file, or delete '{model_id}' from the lock file to trust the new one (its "
                               "results are then recomputed: the checksum is part of the cell key)")
    return got
