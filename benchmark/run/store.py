"""Store: one JSON file per evaluation cell, written atomically, signed, verified on read.

A result file present *and verified* means the cell is done, so an interrupted run resumes where
it stopped and a damaged file is recomputed instead of counted.  Per-example outcomes are stored
as strings of ``0``/``1`` so that intervals, paired tests and re-aggregation need no re-run.

Integrity: every result carries ``digest``, the sha256 of its whole payload except the digest
itself (canonical JSON), so fields added later are covered without a schema change.  On read,
:func:`check_result` sorts a file into ``verified`` (digest matches), ``unsigned`` (no digest:
written before digests existed, accepted and counted apart, ``shiftbench verify-results --sign``
signs them) or ``corrupt`` (unreadable, truncated, not JSON, digest mismatch, or numbers that
contradict themselves: accuracies that are not the mean of their outcomes, an example robust but
not clean, a key that is not the one in the file name).  Corrupt files are never counted.

Concurrency: writes go to ``.tmp-<pid>-*.json`` then ``os.replace``; a cell is computed only by
the process that holds its claim (a POSIX record lock on one byte of ``<results>/.lock``, which
the kernel releases when the process dies, even by ``kill -9``), so two runs over the same folder
share the work instead of doing it twice.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

RESULT_SCHEMA = 1
DIGEST_KEY = "digest"
TMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"
ACC_TOL = 1e-9  # stored accuracies vs the mean of the stored outcomes
MAX_RESULT_BYTES = 64 << 20  # a result is a few KB; anything this big is not one of ours


class StoreError(RuntimeError):
    """A result could not be written (disk full, read-only folder, ...); the message names the path."""


def bits(flags: Any) -> str:
    return "".join("1" if f else "0" for f in np.asarray(flags, dtype=bool).tolist())


def unbits(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), dtype=np.uint8) == ord("1")


# --------------------------------------------------------------------------- digest
def digest(payload: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``payload`` without its ``digest`` key."""
    body = {k: v for k, v in payload.items() if k != DIGEST_KEY}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def sign(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with its digest (computed over what a JSON round trip gives back)."""
    body = json.loads(json.dumps({k: v for k, v in payload.items() if k != DIGEST_KEY}))
    return {**body, DIGEST_KEY: digest(body)}


# --------------------------------------------------------------------------- writing
def _tmp_name_prefix() -> str:
    return f"{TMP_PREFIX}{os.getpid()}-"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target.

    Any OS error (disk full, read-only folder, permissions) leaves no partial file and raises
    :class:`StoreError` naming the path."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_name_prefix(), suffix=".json", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        what = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.EDQUOT: "the disk quota is exceeded", errno.EFBIG: "the file is too large"}.get(
                    exc.errno, exc.strerror or str(exc))
        raise StoreError(f"cannot write result {path}: {what} ({exc.__class__.__name__}); nothing was "
                         "written for this cell and earlier results are intact; free space or fix the "
                         "folder's permissions, then re-run (finished cells are kept)") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_result(path: Path, payload: dict[str, Any]) -> None:
    """Sign ``payload`` and write it atomically."""
    write_json_atomic(path, sign(payload))


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def iter_results(results_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """All result files under a suite's folder, in a stable order."""
    for path in sorted(Path(results_dir).rglob("*.json")):
        if path.name.startswith(TMP_PREFIX):
            continue
        yield path, read_json(path)


def result_files(folder: Path) -> list[Path]:
    """Every result file under ``folder`` (temporary files excluded), sorted."""
    return sorted(p for p in Path(folder).rglob("*.json") if not p.name.startswith(TMP_PREFIX))


# --------------------------------------------------------------------------- verification
VERIFIED, UNSIGNED, CORRUPT = "verified", "unsigned", "corrupt"


@dataclass(frozen=True)
class Verdict:
    path: Path
    status: str  # VERIFIED | UNSIGNED | CORRUPT
    problem: str = ""
    payload: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status != CORRUPT

    def describe(self) -> str:
        return f"{self.path}: {self.status}" + (f": {self.problem}" if self.problem else "")


def key_of_name(name: str) -> str:
    """The cell key in a result file name ``<data>__<threat>__<key>.json``."""
    return name[:-5].rsplit("__", 1)[-1] if name.endswith(".json") else ""


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _outcomes(payload: dict[str, Any], name: str, n: int) -> tuple[np.ndarray | None, str]:
    s = payload.get(name)
    if not isinstance(s, str):
        return None, f"key '{name}' is missing or not a string of 0/1"
    if len(s) != n:
        return None, f"key '{name}' holds {len(s)} outcomes, 'n' says {n}"
    if s.strip("01"):
        return None, f"key '{name}' holds characters other than 0 and 1"
    return unbits(s), ""


def check_payload(payload: Any, *, name: str | None = None, expected_key: str | None = None) -> tuple[str, str]:
    """``(status, problem)`` for a parsed result; ``name`` is its file name (``<data>__<threat>__<key>.json``)."""
    if not isinstance(payload, dict):
        return CORRUPT, f"expected a JSON object, got {type(payload).__name__}"
    if DIGEST_KEY in payload:
        stored = payload[DIGEST_KEY]
        try:
            actual = digest(payload)
        except (TypeError, ValueError) as exc:  # not JSON-able (cannot come from a file)
            return CORRUPT, f"cannot compute its digest ({exc})"
        if stored != actual:
            return CORRUPT, (f"digest mismatch (stored {str(stored)[:23]}..., content hashes to {actual[:23]}...): "
                             "the file was edited after it was written")
        status = VERIFIED
    else:
        status = UNSIGNED
    n = payload.get("n")
    if not _is_count(n):
        return CORRUPT, f"key 'n' is {n!r}, expected a count"
    clean, problem = _outcomes(payload, "clean_correct", n)
    if clean is None:
        return CORRUPT, problem
    robust, problem = _outcomes(payload, "robust_correct", n)
    if robust is None:
        return CORRUPT, problem
    lifted = int((robust & ~clean).sum())
    if lifted:
        return CORRUPT, (f"{lifted} example(s) robust but not clean (robust accuracy {robust.mean():.3f} > "
                         f"clean {clean.mean():.3f} is impossible)" if robust.mean() > clean.mean() else
                         f"{lifted} example(s) robust but not clean")
    for acc_key, flags in (("clean_acc", clean), ("robust_acc", robust)):
        v = payload.get(acc_key)
        if not _is_number(v):
            return CORRUPT, f"key '{acc_key}' is {v!r}, expected a number"
        want = float(flags.mean()) if n else float("nan")
        try:
            got = float(v)
        except OverflowError:
            return CORRUPT, f"key '{acc_key}' is not a finite accuracy"
        if not (math.isnan(want) and math.isnan(got)) and not abs(got - want) <= ACC_TOL:
            return CORRUPT, f"key '{acc_key}' is {v}, its per-example outcomes give {want}"
    for required in ("attack", "model"):
        if not isinstance(payload.get(required), str):
            return CORRUPT, f"key '{required}' is missing or not a string"
    key = payload.get("key")
    if not isinstance(key, str) or not key:
        return CORRUPT, f"key 'key' is {key!r}, expected the cell key"
    if name is not None:
        if key_of_name(name) != key:
            return CORRUPT, f"its recorded key '{key}' is not the key in its file name"
        data, threat = payload.get("data"), payload.get("threat")
        if isinstance(data, str) and isinstance(threat, str) and not name.startswith(f"{data}__{threat}__"):
            return CORRUPT, f"its data/threat ('{data}', '{threat}') do not match its file name"
    if expected_key is not None and key != expected_key:
        return CORRUPT, f"its recorded key '{key}' is not the planned key '{expected_key}'"
    return status, ""


def check_result(path: Path, *, expected_key: str | None = None) -> Verdict:
    """Read and verify one result file; never raises for a damaged file (its verdict says why)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            return Verdict(path, CORRUPT, f"{path.stat().st_size} bytes: too large to be a result")
        raw = path.read_bytes()
    except OSError as exc:
        return Verdict(path, CORRUPT, f"cannot be read ({exc.strerror or exc})")
    try:
        payload = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return Verdict(path, CORRUPT, "not UTF-8 text (truncated or overwritten?)")
    except json.JSONDecodeError as exc:
        return Verdict(path, CORRUPT, f"not valid JSON ({exc.msg} at byte {exc.pos}; truncated?)")
    except RecursionError:
        return Verdict(path, CORRUPT, "not a result (nested too deeply)")
    except ValueError as exc:  # e.g. an integer too long to convert
        return Verdict(path, CORRUPT, f"not a result ({exc})")
    status, problem = check_payload(payload, name=path.name, expected_key=expected_key)
    return Verdict(path, status, problem, payload if status != CORRUPT else None)


_DONE_CACHE: dict[tuple[str, str | None], tuple[tuple[int, int, int], bool]] = {}


def is_done(path: Path, key: str | None = None) -> bool:
    """A result file exists at ``path`` and passes :func:`check_result` (unsigned counts as done).
    Cached per file identity (inode, size, mtime) so repeated planning stays cheap."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    ident = (st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _DONE_CACHE.get((str(path), key))
    if cached is not None and cached[0] == ident:
        return cached[1]
    ok = check_result(path, expected_key=key).ok
    _DONE_CACHE[(str(path), key)] = (ident, ok)
    return ok


# --------------------------------------------------------------------------- claims and temp files
def _lock_offset(key: str) -> int:
    """A byte offset for a key: 60 bits of its sha256 (a valid ``off_t``; collisions negligible)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)


@contextlib.contextmanager
def claim(results_dir: Path, key: str) -> Iterator[bool]:
    """Try to claim cell ``key`` for this process: yields True while held, False when another
    process holds it.  Never blocks; released on exit and by the kernel if the process dies."""
    import fcntl

    results_dir = Path(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(results_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot create the lock file {results_dir / LOCK_NAME}: {exc.strerror or exc}; "
                         "is the results folder writable?") from None
    offset = _lock_offset(key)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
            got, held = True, True
        except OSError as exc:
            # busy: another process has it; any other error (a file system without record
            # locks): run unlocked rather than not at all
            got, held = exc.errno not in (errno.EACCES, errno.EAGAIN), False
        try:
            yield got
        finally:
            if held:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)
    finally:
        os.close(fd)


def claimed_elsewhere(results_dir: Path, key: str) -> bool:
    """Whether another live process holds the claim on ``key`` right now."""
    if not (Path(results_dir) / LOCK_NAME).is_file():
        return False
    with claim(results_dir, key) as got:
        return not got


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temp(folder: Path) -> list[Path]:
    """Remove temporary files left by killed writers (``.tmp-<pid>-*.json`` whose process is
    gone); files of live writers are left alone.  Returns the removed paths."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.rglob(f"{TMP_PREFIX}*.json"):
        pid = p.name[len(TMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue  # a live writer's file (files without a pid come from older versions: stale)
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return sorted(removed)
