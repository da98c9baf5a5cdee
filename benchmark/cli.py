"""The ``shiftbench`` command line.

    shiftbench ls models|shifts|threats|suites [--suite S] [--json]
    shiftbench validate
    shiftbench run --suite digits [--models PAT] [--shifts PAT] [--threats PAT] [--limit N] [--dry-run]
    shiftbench leaderboard [--suite digits]
    shiftbench zoo train [--models PAT]
    shiftbench show-shifts --suite digits --out FILE.png
    shiftbench calibrate --suite digits
    shiftbench verify-archives --suite cifar10-linf [--shifts PAT] [--archive-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import registry as reg

RESULTS_ROOT = reg.REPO_ROOT / "results"


def _registry(args) -> reg.Registry:
    return reg.Registry(args.registry)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", default=str(reg.default_registry_root()),
                   help="registry folder (default: $SHIFTBENCH_REGISTRY or ./registry)")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="root of real datasets (default: $SHIFTBENCH_DATA or ./data)")
    p.add_argument("--model-dir", default=None, help="robustbench weights cache (default: $SHIFTBENCH_MODELS or ./models)")


# --------------------------------------------------------------------------- ls / validate
def cmd_ls(args) -> int:
    r = _registry(args)
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
            row[3] = f"{spec.eps:.4g}" if spec.kind == "lp" else (
                ", ".join(f"{k}={v}" for k, v in spec.params.items()) or "-")
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    print(f"({len(rows)} {kind})", file=sys.stderr)
    return 0


def cmd_validate(args) -> int:
    r = _registry(args)  # raises RegistryError naming file and key
    problems = r.check_weights()
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    counts = ", ".join(f"{len(v)} {k}" for k, v in r.entries.items())
    if problems:
        return 1
    print(f"registry OK: {counts} ({r.root})")
    return 0


# --------------------------------------------------------------------------- run
def cmd_run(args) -> int:
    from .run import plan

    r = _registry(args)
    cells = plan.plan_suite(r, args.suite, models=args.models, shifts=args.shifts, threats=args.threats,
                            n_examples=args.n, seed=args.seed)
    if not cells:
        print(f"error: no cells match (suite {args.suite}, models={args.models}, shifts={args.shifts}, "
              f"threats={args.threats}); see `shiftbench ls models --suite {args.suite}`", file=sys.stderr)
        return 2
    cells = plan.shard(cells, args.shard)
    results_dir = Path(args.results) / args.suite
    from .run.evaluate import pending, pending_with_batches, run_grid

    todo = pending(cells, results_dir)
    n_done = len(cells) - len(todo)
    # severities of a shift are attacked together (plan.Cell.batch): a pending cell brings its batch
    todo = pending_with_batches(todo[: args.limit], results_dir)
    models = sorted({c.model.id for c in cells})
    print(f"suite {args.suite}: {len(cells)} cells ({len(models)} models), {n_done} "
          f"done, {len(todo)} to run -> {results_dir}", file=sys.stderr)
    if args.dry_run:
        for c in todo:
            print(f"{c.key}  {c.describe()}")
        return 0
    t0 = time.perf_counter()
    counts = _run_on_executor(args, run_grid, todo, r, results_dir)
    if isinstance(counts, int):  # failures listed or interrupted
        return counts
    print(f"ran {counts['ran']} cells in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if args.leaderboard:
        from .report import leaderboard

        leaderboard.write(r, args.suite, Path(args.results), Path(args.out) if args.out else None)
    return 0


# --------------------------------------------------------------------------- run: executors
def _add_executor_args(q: argparse.ArgumentParser) -> None:
    from .run.executors import DEFAULT_MIN_BATCH, DEFAULT_RETRIES, NAMES

    g = q.add_argument_group("executors (where the cells run)")
    g.add_argument("--executor", choices=NAMES, default="local",
                   help="local: worker processes here (default); ray: a Ray cluster (pip install "
                        "'shiftbench[ray]'); submitit: Slurm job arrays (pip install 'shiftbench[slurm]')")
    g.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help=f"times a failing batch of cells is retried before it is listed as failed "
                        f"(default {DEFAULT_RETRIES})")
    g.add_argument("--min-batch-size", type=int, default=DEFAULT_MIN_BATCH,
                   help="out of GPU memory: retry with half the batch size down to this floor "
                        f"(default {DEFAULT_MIN_BATCH})")
    g.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. 10.0.0.1:6379 or 'auto'); default: start a local Ray")
    g.add_argument("--ray-return-results", action="store_true",
                   help="Ray workers return results to this process, which writes them (no shared filesystem "
                        "needed); default: workers write into --results, which must be shared")
    g.add_argument("--slurm-partition", default=None)
    g.add_argument("--slurm-time", default=None, help="time limit per array task (Slurm format, e.g. 4:00:00)")
    g.add_argument("--slurm-gpus", type=int, default=None, help="GPUs per array task (1 for a GPU suite)")
    g.add_argument("--slurm-array-parallelism", type=int, default=None,
                   help="array tasks running at once (with --local: local jobs at once, default 2)")
    g.add_argument("--slurm-folder", default=None,
                   help="submitit's job folder (logs, pickles; on a shared filesystem); default .submitit/")
    g.add_argument("--local", action="store_true", help="with --executor submitit: submitit's local executor")


def _executor_from_args(args):
    """The executor ``shiftbench run`` asked for (None: run_grid's local default)."""
    from .run.executors import make_executor

    if args.local and args.executor != "submitit":
        raise ValueError("--local goes with --executor submitit (it selects submitit's local executor)")
    if args.retries < 0 or args.min_batch_size < 1:
        raise ValueError("--retries must be >= 0 and --min-batch-size >= 1")
    if args.executor == "local":
        return make_executor("local", workers=args.workers)
    if args.executor == "ray":
        return make_executor("ray", address=args.ray_address, return_results=args.ray_return_results)
    from .run.executors.submitit import parse_slurm_time

    return make_executor("submitit", folder=args.slurm_folder or ".submitit", local=args.local,
                         partition=args.slurm_partition, time_min=parse_slurm_time(args.slurm_time),
                         gpus=args.slurm_gpus, array_parallelism=args.slurm_array_parallelism)


def _run_on_executor(args, run_grid, todo, registry, results_dir) -> dict[str, int] | int:
    """run_grid on the chosen executor; failures are listed (exit 1), Ctrl-C exits 130."""
    from .run.executors import GridError, GridInterrupted, MissingExtra

    try:
        executor = _executor_from_args(args)
        return run_grid(todo, registry, results_dir, data_dir=args.data_dir, model_dir=args.model_dir,
                        workers=args.workers, progress=not args.no_progress, batch_size=args.batch_size,
                        executor=executor, retries=args.retries, min_batch_size=args.min_batch_size)
    except MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GridError as exc:
        print(f"ran {exc.counts['ran']} cells; {exc}", file=sys.stderr)
        print("rerun the same command to retry only what is missing", file=sys.stderr)
        return 1
    except GridInterrupted as exc:
        print(f"interrupted: {exc.counts['ran']} cells written (every written result is complete); "
              "rerun the same command to resume", file=sys.stderr)
        return 130


def cmd_leaderboard(args) -> int:
    from .report import leaderboard

    r = _registry(args)
    path = leaderboard.write(r, args.suite, Path(args.results), Path(args.out) if args.out else None)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_zoo(args) -> int:
    from .models import zoo

    return zoo.main(args)


def cmd_show_shifts(args) -> int:
    from .data import picture as showshifts

    return showshifts.main(args)


def cmd_verify_archives(args) -> int:
    from .data import archives, datasets

    r = _registry(args)
    suite = r.suite(args.suite)
    folder = Path(args.archive_dir) if args.archive_dir else datasets.data_root(args.data_dir)
    checks = archives.verify_suite(r, suite, folder, args.shifts, report=lambda c: print(c.describe(), flush=True))
    if not checks:
        print(f"no archive with a published checksum for suite {args.suite}"
              + (f" and shifts {args.shifts}" if args.shifts else "") + "; see docs/real-suites.md", file=sys.stderr)
        return 0
    bad = [c for c in checks if c.status != "ok"]
    print(f"{len(checks) - len(bad)} of {len(checks)} archives verified in {folder}", file=sys.stderr)
    return 1 if bad else 0


def cmd_calibrate(args) -> int:
    from .run import calibrate

    return calibrate.main(args)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shiftbench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("ls", help="list registry entries")
    q.add_argument("kind", choices=reg.KINDS)
    q.add_argument("--suite", default=None, help="only what this suite uses")
    q.add_argument("--json", action="store_true", help="JSON list of objects (each has 'id')")
    _add_common(q)
    q.set_defaults(fn=cmd_ls)

    q = sub.add_parser("validate", help="validate every registry entry and weights checksum")
    _add_common(q)
    q.set_defaults(fn=cmd_validate)

    q = sub.add_parser("run", help="evaluate a suite's grid (resumable)")
    q.add_argument("--suite", default="digits")
    q.add_argument("--models", default=None, help="comma-separated glob patterns over model ids")
    q.add_argument("--shifts", default=None, help="patterns over data names ('id' is the ID data)")
    q.add_argument("--threats", default=None, help="patterns over threat ids")
    q.add_argument("--limit", type=int, default=None, help="run at most N pending cells")
    q.add_argument("--n", type=int, default=None, help="examples per cell (default: the suite's)")
    q.add_argument("--seed", type=int, default=None)
    q.add_argument("--shard", default=None, help="run slice i/N of the grid (for any scheduler)")
    q.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: one per visible GPU, else 1)")
    q.add_argument("--batch-size", type=int, default=1000, help="examples per forward/attack batch")
    q.add_argument("--dry-run", action="store_true", help="list the cells that would run")
    q.add_argument("--no-progress", action="store_true")
    q.add_argument("--leaderboard", action="store_true", help="regenerate the leaderboard afterwards")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    q.add_argument("--out", default=None, help="leaderboard path (with --leaderboard)")
    _add_common(q)
    _add_data(q)
    _add_executor_args(q)
    q.set_defaults(fn=cmd_run)

    q = sub.add_parser("leaderboard", help="regenerate leaderboard.md from results/")
    q.add_argument("--suite", default="digits")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    q.add_argument("--out", default=None, help="output markdown (default: ./leaderboard.md for digits)")
    _add_common(q)
    q.set_defaults(fn=cmd_leaderboard)

    q = sub.add_parser("zoo", help="the digits model zoo")
    q.add_argument("action", choices=["train"])
    q.add_argument("--models", default=None, help="patterns over model ids (default: all builtin digits models)")
    q.add_argument("--check", action="store_true", help="retrain and compare sha256 without writing")
    _add_common(q)
    q.set_defaults(fn=cmd_zoo)

    q = sub.add_parser("show-shifts", help="picture of every dataset shift and severity")
    q.add_argument("--suite", default="digits")
    q.add_argument("--out", required=True, help="PNG file to write")
    _add_common(q)
    _add_data(q)
    q.set_defaults(fn=cmd_show_shifts)

    q = sub.add_parser("verify-archives", help="check downloaded dataset archives against their published checksums")
    q.add_argument("--suite", required=True)
    q.add_argument("--shifts", default=None, help="patterns over shift ids ('id' is the ID test set)")
    q.add_argument("--archive-dir", default=None, help="folder holding the downloaded archives (default: the data root)")
    _add_common(q)
    _add_data(q)
    q.set_defaults(fn=cmd_verify_archives)

    q = sub.add_parser("calibrate", help="fast attack vs AutoAttack, side by side")
    q.add_argument("--suite", default="digits")
    q.add_argument("--models", default=None)
    q.add_argument("--n", type=int, default=None, help="examples per model")
    q.add_argument("--out", default=None, help="write the table (markdown) here")
    q.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    q.add_argument("--threats", default=None,
                   help="patterns over the suite's Lp threats (ID and threat shifts); default: the ID threat "
                        "and two Lp threat shifts")
    q.add_argument("--workers", type=int, default=1,
                   help="models calibrated at a time, each in its own process (both attacks of a row "
                        "still run back to back in one process)")
    _add_common(q)
    _add_data(q)
    q.set_defaults(fn=cmd_calibrate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args) or 0
    except (reg.RegistryError, KeyError, ValueError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
