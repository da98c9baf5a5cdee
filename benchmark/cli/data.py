"""Dataset files: ``verify-archives`` (downloads against published checksums) and ``show-shifts``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import UsageError, add_common, add_data, check_patterns, registry_of


def cmd_verify_archives(args) -> int:
    from ..data import archives, datasets

    r = registry_of(args)
    suite = r.suite(args.suite)
    check_patterns(r, suite, argparse.Namespace(shifts=args.shifts))
    if args.archive_dir and not Path(args.archive_dir).is_dir():
        raise UsageError(f"--archive-dir {args.archive_dir}: no such folder")
    folder = Path(args.archive_dir) if args.archive_dir else datasets.data_root(args.data_dir)
    checks = archives.verify_suite(r, suite, folder, args.shifts, report=lambda c: print(c.describe(), flush=True))
    if not checks:
        print(f"no archive with a published checksum for suite {args.suite}"
              + (f" and shifts {args.shifts}" if args.shifts else "") + "; see docs/real-suites.md", file=sys.stderr)
        return 0
    bad = [c for c in checks if c.status != "ok"]
    print(f"{len(checks) - len(bad)} of {len(checks)} archives verified in {folder}", file=sys.stderr)
    return 1 if bad else 0


def add_verify_archives_parser(sub) -> None:
    q = sub.add_parser("verify-archives", help="check downloaded dataset archives against their published checksums")
    q.add_argument("--suite", required=True)
    q.add_argument("--shifts", default=None, help="patterns over shift ids ('id' is the ID test set)")
    q.add_argument("--archive-dir", default=None, help="folder holding the downloaded archives (default: the data root)")
    add_common(q)
    add_data(q)
    q.set_defaults(fn=cmd_verify_archives)


def cmd_show_shifts(args) -> int:
    from ..data import picture as showshifts

    return showshifts.main(args)


def add_show_shifts_parser(sub) -> None:
    q = sub.add_parser("show-shifts", help="picture of every dataset shift and severity")
    q.add_argument("--suite", default="digits")
    q.add_argument("--out", required=True, help="PNG file to write")
    add_common(q)
    add_data(q)
    q.set_defaults(fn=cmd_show_shifts)


def add_parsers(sub) -> None:
    """This family's commands, in the order `shiftbench --help` lists them."""
    add_verify_archives_parser(sub)
    add_show_shifts_parser(sub)
