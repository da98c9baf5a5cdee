"""Registry entries: ``ls``, ``validate``, and ``zoo train`` (the digits zoo's weights)."""
from __future__ import annotations

import json
import sys

from .. import registry as reg
from .common import add_common, registry_of


def cmd_ls(args) -> int:
    r = registry_of(args)
    kind = args.kind
    specs = list(r.entries[kind].values())
    if args.suite:
        s = r.suite(args.suite)
        if kind == "models":
            specs = r.suite_models(s)
        elif kind == "shifts":
            specs = [r.shift(x) for x in s.dataset_shifts]
        elif kind == "threats":
            specs = [r.threat(x) for x in (s.id_threat, *s.threat_shifts)]
        else:
            specs = [s]
    specs = sorted(specs, key=lambda s: s.id)
    if args.json:
        print(json.dumps([reg.canonical(s) for s in specs], indent=1))
        return 0
    cols = {
        "models": ("id", "source", "architecture", "training"),
        "shifts": ("id", "dataset", "family", "source"),
        "threats": ("id", "kind", "norm", "eps", "attack"),
        "suites": ("id", "dataset", "id_threat", "n_examples"),
    }[kind]
    rows = [[str(getattr(s, c) if getattr(s, c) is not None else "-") for c in cols] for s in specs]
    if kind == "threats":  # the budget: eps for lp threats, the params for the others
        cols = ("id", "kind", "norm", "budget", "attack")
        for row, spec in zip(rows, specs):
            row[3] = f"{spec.eps:.4g}" if spec.kind == "lp" else (spec.params_text() or "-")
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    print(f"({len(rows)} {kind})", file=sys.stderr)
    return 0


def add_ls_parser(sub) -> None:
    q = sub.add_parser("ls", help="list registry entries")
    q.add_argument("kind", choices=reg.KINDS)
    q.add_argument("--suite", default=None, help="only what this suite uses")
    q.add_argument("--json", action="store_true", help="JSON list of objects (each has 'id')")
    add_common(q)
    q.set_defaults(fn=cmd_ls)


def cmd_validate(args) -> int:
    r = registry_of(args)  # raises RegistryError naming file and key
    problems = r.check_weights()
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    counts = ", ".join(f"{len(v)} {k}" for k, v in r.entries.items())
    for note in _code_notes(r):
        print(f"note: {note}", file=sys.stderr)
    if problems:
        return 1
    print(f"registry OK: {counts} ({r.root})")
    return 0


def _code_notes(r: reg.Registry) -> list[str]:
    """What ``validate`` says about entries that run code (nothing is imported to say it)."""
    notes = []
    for m in sorted(r.entries["models"].values(), key=lambda m: m.id):
        if m.source_kind != "python":
            continue
        module = m.source_target.partition(":")[0]
        suites = [s.id for s in r.entries["suites"].values() if reg.module_allowed(module, s.allow_code)]
        how = f"allowed by suite(s) {', '.join(suites)} (allow_code)" if suites else "runs only with --allow-code"
        notes.append(f"{m.path}: model '{m.id}' runs code from module '{module}' ({how})")
    for t in sorted(r.entries["threats"].values(), key=lambda t: t.id):
        if not t.attack.startswith(reg.PYTHON_ATTACK):
            continue
        module = t.attack[len(reg.PYTHON_ATTACK):].partition(":")[0]
        suites = [s.id for s in r.entries["suites"].values() if reg.module_allowed(module, s.allow_code)]
        how = f"allowed by suite(s) {', '.join(suites)} (allow_code)" if suites else "runs only with --allow-code"
        notes.append(f"{t.path}: threat '{t.id}' runs its attack from module '{module}' ({how})")
    return notes


def add_validate_parser(sub) -> None:
    q = sub.add_parser("validate", help="validate every registry entry and weights checksum")
    add_common(q)
    q.set_defaults(fn=cmd_validate)


def cmd_zoo(args) -> int:
    from ..models import zoo

    return zoo.main(args)


def add_zoo_parser(sub) -> None:
    q = sub.add_parser("zoo", help="the digits model zoo")
    q.add_argument("action", choices=["train"])
    q.add_argument("--models", default=None, help="patterns over model ids (default: all builtin digits models)")
    q.add_argument("--check", action="store_true", help="retrain and compare sha256 without writing")
    add_common(q)
    q.set_defaults(fn=cmd_zoo)


def add_parsers(sub) -> None:
    """This family's commands, in the order `shiftbench --help` lists them."""
    add_ls_parser(sub)
    add_validate_parser(sub)
    add_zoo_parser(sub)
