"""Checksums pinned on first use: a JSON lock file ``{"schema": 1, "models": {key: {name: sha256}}}``.

Files whose registry entry gives no checksum (RobustBench checkpoints, dataset files for which no
checksum is published) are pinned the first time they are read: their sha256 are recorded in a
lock file, and every later read is verified against them, so a replaced file is an error
rather than a silently different number.  Shared by the weights lock (``models/weights.py``)
and the data lock (``data/loaders.py``).
"""
from __future__ import annotations

import fcntl
import json
from pathlib import Path


class PinError(RuntimeError):
    pass


def read_pins(path: Path) -> dict[str, dict[str, str]]:
    """``{key: {file name: sha256}}``; empty when there is no lock file yet."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        pins = data["models"]
        assert isinstance(pins, dict)
    except Exception as exc:
        raise PinError(f"{path}: not a lock file ({type(exc).__name__}: {exc}); restore it from version "
                       "control or delete it to record every checksum again") from None
    return pins


def pin(path: Path, key: str, got: dict[str, str]) -> tuple[dict[str, str], bool]:
    """The pinned checksums of ``key``: those in the lock file, or ``got``, recorded now (under an
    exclusive file lock, as parallel workers may record at the same time).  Returns
    ``(pinned, recorded_now)``; comparing ``got`` with ``pinned`` is the caller's job."""
    known = read_pins(path).get(key)
    if known is not None:
        return known, False
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".flock"), "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        pins = read_pins(path)
        if key in pins:
            return pins[key], False
        pins[key] = dict(got)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"schema": 1, "models": dict(sorted(pins.items()))}, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
    return dict(got), True
