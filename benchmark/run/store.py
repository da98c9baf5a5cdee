"""Store: one JSON file per evaluation cell, written atomically.

A result file present means the cell is done, so an interrupted run resumes where it stopped.
Per-example outcomes are stored as strings of ``0``/``1`` so that intervals, paired tests and
re-aggregation need no re-run.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

RESULT_SCHEMA = 1


def bits(flags: Any) -> str:
    return "".join("1" if f else "0" for f in np.asarray(flags, dtype=bool).tolist())


def unbits(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), dtype=np.uint8) == ord("1")


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def iter_results(results_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """All result files under a suite's folder, in a stable order."""
    for path in sorted(Path(results_dir).rglob("*.json")):
        if path.name.startswith(".tmp-"):
            continue
        yield path, read_json(path)
