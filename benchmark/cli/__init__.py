"""The command line: takes the user's arguments, hands on to the stages below (one module per family of commands).

    shiftbench ls models|shifts|threats|suites [--suite S] [--json]                         entries.py
    shiftbench validate                                                                     entries.py
    shiftbench zoo train [--models PAT] [--check]                                           entries.py
    shiftbench run --suite S [--models PAT] [--shifts PAT] [--threats PAT] [--dry-run]      run.py
    shiftbench preflight --suite S [--models PAT] [--data-dir D] [--model-dir M] [--rate R] run.py
    shiftbench calibrate --suite S [--fast apgd-mm,mm5]                                     run.py
    shiftbench verify-archives --suite S [--shifts PAT] [--archive-dir DIR]                 data.py
    shiftbench show-shifts --suite S --out FILE.png                                         data.py
    shiftbench verify-results [--suite S] [--sign]                                          reports.py
    shiftbench leaderboard [--suite S]                                                      reports.py
    shiftbench trends fit --csv FILE --x COL --y COL [--scale raw|probit|logit] [--json]    reports.py
    shiftbench analyze --suite S --by FIELD[,FIELD] [--target OOD|OOD-D|OOD-T] [--json]     reports.py
    shiftbench site [--suite S | --all] --out DIR                                           reports.py
    shiftbench submit ENTRY.yaml [--weights PATH] [--suite S] [--summary-out FILE]          workflows.py
    shiftbench reproduce [--suite S] [--models PAT] [--sample K] [--seed N] [--update]      workflows.py
    shiftbench export-baseline --suite S --model ID --out baseline.json                     workflows.py
    shiftbench regress --model ENTRY.yaml|ID|python:module:factory --baseline FILE [--quick] workflows.py

Each module holds its commands (``cmd_<name>``) with their parsers (``add_<name>_parser``) and
input checks; what several share (the registry option, filters, data folders, the device, usage
errors) is in ``common.py``.  This module only assembles them and maps errors to exit codes.
"""
from __future__ import annotations

import sys

from .. import registry as reg
from . import data, entries, reports, run, workflows
from .common import Parser

FAMILIES = (entries, run, data, reports, workflows)  # the order `shiftbench --help` lists their commands in


def build_parser() -> Parser:
    p = Parser(prog="shiftbench", description="The ``shiftbench`` command line.")
    sub = p.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..run.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "registry"):  # every command sees the built-in registry with the user's layered over it
            args.registry = reg.layered_location(args.registry)
        return args.fn(args) or 0
    except (reg.RegistryError, KeyError, ValueError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except StoreError as exc:  # a failed write: named path, nothing partial left, earlier results intact
        print(f"error: {exc}", file=sys.stderr)
        return 1
