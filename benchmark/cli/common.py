"""What every command shares: the registry option, filters, data folders, the device, input checks."""
from __future__ import annotations

import argparse
import difflib
import fnmatch
import os
import sys
from pathlib import Path

from .. import registry as reg


RESULTS_ROOT = Path("results")  # under the current folder: an installed package writes into the user's repository


CODE_ENV = reg.CODE_ENV  # "1": any module; else comma-separated module prefixes


class UsageError(ValueError):
    """Bad command-line input: one line on stderr, exit 2, nothing written."""


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (no usage dump), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def registry_of(args) -> reg.Registry:
    return reg.Registry(args.registry)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", default=None,
                   help="your registry folder, layered over the built-in registry (its entries shadow built-in "
                        "ones with the same id; default: $SHIFTBENCH_REGISTRY, else the built-in registry alone)")


def add_filters(p: argparse.ArgumentParser) -> None:
    """The cell filters of ``run`` and ``reproduce``."""
    p.add_argument("--models", default=None, help="comma-separated glob patterns over model ids")
    p.add_argument("--shifts", default=None, help="patterns over data names ('id' is the ID data)")
    p.add_argument("--threats", default=None, help="patterns over threat ids")


def add_protocol(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=reg.PROTOCOLS, default=None,
                   help="design of the dataset-shift cells (default: the suite's): lean shares the test images out "
                        "among the corruptions, reference attacks every image under every one (OODRobustBench's)")


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="root of real datasets (default: $SHIFTBENCH_DATA or ./data)")
    p.add_argument("--model-dir", default=None, help="robustbench weights cache (default: $SHIFTBENCH_MODELS or ./models)")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where models run: auto (CUDA when available), cpu or cuda; data moves there once")


def device_or_exit(device: str) -> str | None:
    """``--device``: the resolved device name, or None (message printed) when it is unavailable."""
    from ..run.evaluate import resolve_device

    try:
        return str(resolve_device(device))
    except ValueError as exc:
        print(f"error: --device: {exc}", file=sys.stderr)
        return None


def check_run_flags(args) -> None:
    for flag in ("workers", "limit", "n", "batch_size"):
        v = getattr(args, flag, None)
        if v is not None and v < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {v}")
    if getattr(args, "seed", None) is not None and args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if getattr(args, "dry_run", False) and getattr(args, "leaderboard", False):
        raise UsageError("--dry-run writes nothing, --leaderboard writes the leaderboard: give one of them")
    if getattr(args, "out", None) and not getattr(args, "leaderboard", True):
        raise UsageError("--out names the leaderboard file: it needs --leaderboard")


def check_patterns(r: reg.Registry, suite, args) -> None:
    """Every comma-separated pattern of --models/--shifts/--threats must match something in the
    suite; the error suggests the closest names."""
    names = {
        "models": [m.id for m in r.suite_models(suite)],
        "shifts": ["id"] + [f"{s}-{v}" if v is not None else s for s in suite.dataset_shifts
                            for v in (r.shift(s).severities or (None,))] + list(suite.dataset_shifts),
        "threats": [suite.id_threat, *suite.threat_shifts],
    }
    for flag, candidates in names.items():
        raw = getattr(args, flag, None)
        if not raw:
            continue
        pats = [p.strip() for p in raw.split(",") if p.strip()]
        if not pats:
            raise UsageError(f"--{flag} {raw!r} holds no pattern")
        for pat in pats:
            if not any(fnmatch.fnmatchcase(c, pat) for c in candidates):
                close = difflib.get_close_matches(pat, sorted(set(candidates)), n=3)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
                    f"; see `shiftbench ls {flag} --suite {suite.id}`"
                raise UsageError(f"--{flag} pattern '{pat}' matches no {flag[:-1]} of suite '{suite.id}'{hint}")


def check_data_dir(suite, data_dir: str | None) -> None:
    """A real suite needs its data root: a missing or empty folder is a usage error, before anything runs."""
    from ..data import datasets

    if data_dir is not None and not Path(data_dir).is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such folder")
    if suite.dataset == "digits":
        return  # embedded data
    root = datasets.data_root(data_dir)
    src = "--data-dir" if data_dir else "$SHIFTBENCH_DATA" if os.environ.get("SHIFTBENCH_DATA") else "the default ./data"
    state = "does not exist" if not root.is_dir() else "is empty" if not any(root.iterdir()) else None
    if state is None:
        return
    from ..data import loaders

    src_files = loaders.ID_SOURCES.get(suite.dataset, {})
    try:  # the files the ID data needs, named with where to get them (presence only, no hashing)
        loaders.check_files([{"path": f["path"]} for f in src_files.get("files", ())], root,
                            what=f"{suite.dataset} test set", url=src_files.get("url"))
    except loaders.DataMissingError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines())
        raise UsageError(f"data root {root} ({src}) {state}. {detail}") from None
    raise UsageError(f"data root {root} ({src}) {state}; suite '{suite.id}' needs the {suite.dataset} files there "
                     "(see docs/real-suites.md), or set --data-dir / $SHIFTBENCH_DATA")


def add_parsers(sub) -> None:
    """This family's commands, in the order `shiftbench --help` lists them."""
