"""Executors: where the cells of a grid run.  ``local`` (this machine, N processes, one per GPU),
``ray`` (a Ray cluster; extra ``shiftbench[ray]``), ``submitit`` (Slurm job arrays, or submitit's
local executor; extra ``shiftbench[slurm]``).

All take the same tasks (batches of cells) and run them through the same worker code
(:func:`common.run_task`); :func:`common.drive` retries, counts, shows progress and reports what
failed.  Ray and submitit are imported only when asked for.
"""
from __future__ import annotations

from typing import Any

from .common import (DEFAULT_MIN_BATCH, DEFAULT_RETRIES, Executor, Failure, GridInterrupted,  # noqa: F401
                     MissingExtra, drive)
from .local import LocalExecutor

NAMES = ("local", "ray", "submitit")


def make_executor(name: str = "local", **options: Any) -> Executor:
    """An executor by name; ``options`` are its constructor's keywords (None values dropped)."""
    options = {k: v for k, v in options.items() if v is not None}
    if name == "local":
        return LocalExecutor(**options)
    if name == "ray":
        from .ray import RayExecutor

        return RayExecutor(**options)
    if name == "submitit":
        from .submitit import SubmititExecutor

        return SubmititExecutor(**options)
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(NAMES)}")
