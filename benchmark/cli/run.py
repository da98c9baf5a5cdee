"""Running a grid: ``run``, ``preflight`` (what a run needs and costs) and ``calibrate``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .. import registry as reg
from ..data.fetch import MIRROR_ENV
from .common import (CODE_ENV, RESULTS_ROOT, UsageError, add_common, add_data, add_device, add_filters,
                     add_protocol, check_data_dir, check_patterns, check_run_flags, device_or_exit, registry_of)


def cmd_run(args) -> int:
    from ..run import plan, store

    from ..run.preflight import environment_model_dir

    r = registry_of(args)
    suite = r.suite(args.suite)
    check_run_flags(args)
    check_patterns(r, suite, args)
    if not args.fetch:  # an empty data root is fetch's to fill
        check_data_dir(suite, args.data_dir)
    environment_model_dir(args.model_dir)  # LPIPS networks are looked up there too
    cells = plan.plan_suite(r, args.suite, models=args.models, shifts=args.shifts, threats=args.threats,
                            n_examples=args.n, seed=args.seed, model_dir=args.model_dir, protocol=args.protocol)
    if not cells:
        print(f"error: no cells match (suite {args.suite}, models={args.models}, shifts={args.shifts}, "
              f"threats={args.threats}); see `shiftbench ls models --suite {args.suite}`", file=sys.stderr)
        return 2
    cells = plan.shard(cells, args.shard)
    results_dir = Path(args.results) / args.suite
    from ..run.evaluate import pending, pending_with_batches, run_grid

    refused = _refuse_code(r, suite, cells, args.allow_code)
    refused_threats = _refuse_attack_code(suite, cells, args.allow_code)
    refused |= refused_threats
    cells = [c for c in cells if c.model.id not in refused and c.threat.id not in refused_threats]
    todo = pending(cells, results_dir)
    n_done = len(cells) - len(todo)
    for c in todo:  # a file that exists but failed verification: say so, then recompute it
        path = results_dir / c.filename
        if path.is_file():
            print(f"warning: {store.check_result(path, expected_key=c.key).describe()}; recomputing it",
                  file=sys.stderr)
    # severities of a shift are attacked together (plan.Cell.batch): a pending cell brings its batch
    todo = pending_with_batches(todo[: args.limit], results_dir)
    models = sorted({c.model.id for c in cells})
    print(f"suite {args.suite}: {len(cells)} cells ({len(models)} models), {n_done} "
          f"done, {len(todo)} to run -> {results_dir}", file=sys.stderr)
    if args.dry_run:
        for c in todo:
            print(f"{c.key}  {c.describe()}")
        return 1 if refused else 0
    device = device_or_exit(args.device)
    if device is None:
        return 2
    if args.fetch and todo:  # what the cells to run need, fetched first
        rc = fetch_and_check(r, args.suite, todo, args, device)
        if rc:
            return rc
    if suite.dataset != "digits" and todo and not args.no_preflight:  # every file the cells need, before the first
        from ..run import preflight

        rep = preflight.preflight(r, args.suite, todo, data_dir=args.data_dir, model_dir=args.model_dir,
                                  results_dir=results_dir, measure=False, device=device)
        if not rep.ok:
            print(f"error: preflight: {len(rep.problems)} problem(s) with what the {len(todo)} cells to run need; "
                  "nothing was run:", file=sys.stderr)
            for n in rep.problems:
                print(f"  {n.describe()}", file=sys.stderr)
            print(f"Put the files there (docs/real-suites.md says where to get each), or narrow the run with "
                  f"--models/--shifts/--threats; `shiftbench preflight --suite {args.suite}` shows the full "
                  "report and the cost", file=sys.stderr)
            return 1
    removed = store.clean_temp(results_dir)
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by killed runs in {results_dir}", file=sys.stderr)
    t0 = time.perf_counter()
    from ..models.load import code_opt_in

    with code_opt_in(args.allow_code):  # worker processes inherit the opt-in
        counts = _run_on_executor(args, run_grid, todo, r, results_dir, device)
    if counts is None:  # Ctrl-C
        return 130
    print(f"ran {counts['ran']} cells in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if counts.get("busy"):
        print(f"{counts['busy']} cell(s) are being computed by another `shiftbench run` over {results_dir}; "
              "they were left to it", file=sys.stderr)
    if counts.get("failed"):
        print(f"error: {counts['failed']} cell(s) failed (errors above); the others were kept; fix the entries "
              "and re-run to compute only what is missing", file=sys.stderr)
    from ..analysis import published

    for model, checks in published.check_id_cells(cells, results_dir):  # ID cells against published numbers
        for text in published.flag_texts(checks):
            print(f"warning: model '{model}': {text}", file=sys.stderr)
    if args.leaderboard:
        from ..report import leaderboard

        leaderboard.write(r, args.suite, Path(args.results), Path(args.out) if args.out else None)
    return 1 if counts.get("failed") or refused else 0


def _refuse_code(r: reg.Registry, suite, cells, allow_all: bool) -> set[str]:
    """Model ids whose ``python:`` source is not allowed: reported (with how to allow them), not run."""
    from ..models.load import allowed_code, code_module

    allow = True if allow_all else allowed_code(suite.allow_code)
    refused = set()
    for m in {c.model.id: c.model for c in cells}.values():
        module = code_module(m)
        if module is None or reg.module_allowed(module, allow):
            continue
        refused.add(m.id)
        print(f"error: {m.path}: key 'source': model '{m.id}' runs code from module '{module}' ({m.source}); "
              f"its cells are not run and nothing was imported. If you trust it, re-run with --allow-code, or add "
              f"'{module}' to allow_code in {suite.path or 'the suite entry'}", file=sys.stderr)
    return refused


def _refuse_attack_code(suite, cells, allow_all: bool) -> set[str]:
    """Threat ids whose ``python:`` attack is not allowed: reported (threat file, key ``attack``,
    how to allow it), their cells not run, nothing imported."""
    from ..attacks import check_code_attack, is_code_attack

    allow = True if allow_all else reg.allowed_code(suite.allow_code)
    refused = set()
    for t in {c.threat.id: c.threat for c in cells}.values():
        if not is_code_attack(t.attack):
            continue
        try:
            check_code_attack(t.attack, allow=allow, path=t.path or f"threat '{t.id}'", key="attack")
        except reg.CodeNotAllowed as exc:
            refused.add(t.id)
            print(f"error: {exc} in {suite.path or 'the suite entry'}; the cells of threat '{t.id}' are not run",
                  file=sys.stderr)
    return refused


def add_run_parser(sub) -> None:
    q = sub.add_parser("run", help="evaluate a suite's grid (resumable)")
    q.add_argument("--suite", default="digits")
    add_filters(q)
    q.add_argument("--limit", type=int, default=None, help="run at most N pending cells")
    q.add_argument("--n", type=int, default=None, help="examples per cell (default: the suite's)")
    q.add_argument("--seed", type=int, default=None)
    add_protocol(q)
    q.add_argument("--shard", default=None, help="run slice i/N of the grid (for any scheduler)")
    q.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: one per visible GPU, else 1)")
    q.add_argument("--batch-size", type=int, default=1000, help="examples per forward/attack batch")
    q.add_argument("--dry-run", action="store_true", help="list the cells that would run")
    q.add_argument("--no-preflight", action="store_true",
                   help="real suites: skip the check that every file the cells need is here and matches its checksum "
                        "(e.g. when the data is only on a cluster's nodes)")
    q.add_argument("--fetch", action="store_true",
                   help="first download what the cells to run need and is missing (as `shiftbench fetch`)")
    q.add_argument("--mirror", default=None, help="with --fetch: as `shiftbench fetch --mirror`")
    q.add_argument("--no-progress", action="store_true")
    q.add_argument("--leaderboard", action="store_true", help="regenerate the leaderboard afterwards")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    q.add_argument("--out", default=None, help="leaderboard path (with --leaderboard)")
    q.add_argument("--allow-code", action="store_true",
                   help="let python:module:factory model entries and python:module:function threat attacks import "
                        "their module (off by default)")
    add_device(q)
    add_common(q)
    add_data(q)
    _add_executor_args(q)
    q.set_defaults(fn=cmd_run)


def _add_executor_args(q: argparse.ArgumentParser) -> None:
    from ..run.executors import DEFAULT_MIN_BATCH, DEFAULT_RETRIES, NAMES

    g = q.add_argument_group("executors (where the cells run)")
    g.add_argument("--executor", choices=NAMES, default="local",
                   help="local: worker processes here (default); ray: a Ray cluster (pip install "
                        "'shiftbench[ray]'); submitit: Slurm job arrays (pip install 'shiftbench[slurm]')")
    g.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help=f"times a failing batch of cells is retried before it is reported as failed "
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


def _executor_from_args(args, device: str = "auto"):
    """The executor ``shiftbench run`` asked for (None: run_grid's local default)."""
    from ..run.executors import make_executor

    if args.local and args.executor != "submitit":
        raise ValueError("--local goes with --executor submitit (it selects submitit's local executor)")
    if args.retries < 0 or args.min_batch_size < 1:
        raise ValueError("--retries must be >= 0 and --min-batch-size >= 1")
    if args.executor == "local":
        return make_executor("local", workers=args.workers, gpus=[] if device == "cpu" else None)
    if args.executor == "ray":
        return make_executor("ray", address=args.ray_address, return_results=args.ray_return_results,
                             gpus_per_task=0 if device == "cpu" else None)
    from ..run.executors.submitit import parse_slurm_time

    return make_executor("submitit", folder=args.slurm_folder or ".submitit", local=args.local,
                         partition=args.slurm_partition, time_min=parse_slurm_time(args.slurm_time),
                         gpus=args.slurm_gpus, array_parallelism=args.slurm_array_parallelism)


def _run_on_executor(args, run_grid, todo, registry, results_dir, device: str = "auto") -> dict[str, int] | None:
    """run_grid on the chosen executor; None after Ctrl-C.  A missing extra is a usage error."""
    from ..run.executors import GridInterrupted, MissingExtra

    try:
        executor = _executor_from_args(args, device)
        return run_grid(todo, registry, results_dir, data_dir=args.data_dir, model_dir=args.model_dir,
                        workers=args.workers, progress=not args.no_progress, batch_size=args.batch_size,
                        device=device, executor=executor, retries=args.retries,
                        min_batch_size=args.min_batch_size)
    except MissingExtra as exc:
        raise ValueError(str(exc)) from None  # main(): "error: ...", exit 2
    except GridInterrupted as exc:
        print(f"\ninterrupted: {exc.counts['ran']} cells written (every written result is complete); "
              "rerun the same command to resume", file=sys.stderr)
        return None


def cmd_preflight(args) -> int:
    """What a run needs and what it costs; exit 0 when every file is there, 1 otherwise."""
    from ..run import plan
    from ..run.preflight import environment_model_dir, preflight

    r = registry_of(args)
    suite = r.suite(args.suite)
    check_run_flags(args)
    check_patterns(r, suite, args)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data-dir {args.data_dir}: no such folder")
    if args.rate is not None and not args.rate > 0:
        raise UsageError(f"--rate must be a positive number of forward+backward passes per second, got {args.rate}")
    if not 0 < args.clean_acc <= 1:
        raise UsageError(f"--clean-acc must lie in (0, 1], got {args.clean_acc}")
    environment_model_dir(args.model_dir)
    cells = plan.plan_suite(r, args.suite, models=args.models, shifts=args.shifts, threats=args.threats,
                            n_examples=args.n, model_dir=args.model_dir, record_pins=False, protocol=args.protocol)
    if not cells:
        raise UsageError(f"no cells match (suite {args.suite}, models={args.models}, shifts={args.shifts}, "
                         f"threats={args.threats})")
    device = device_or_exit(args.device)
    if device is None:
        return 2
    designs = plan.both_protocols(r, cells, args.suite, args.protocol or suite.protocol, models=args.models,
                                  shifts=args.shifts, threats=args.threats, n_examples=args.n,
                                  model_dir=args.model_dir, record_pins=False)
    rep = preflight(r, args.suite, cells, data_dir=args.data_dir, model_dir=args.model_dir,
                    results_dir=Path(args.results) / args.suite, rate=args.rate, measure=not args.no_measure,
                    checksums=not args.no_checksums, clean_acc=args.clean_acc, device=device, designs=designs)
    print(rep.text(verbose=args.verbose))
    return 0 if rep.ok else 1


def add_preflight_parser(sub) -> None:
    q = sub.add_parser("preflight", help="what a run needs (files, checksums, disk) and costs; exit 1 if not ready")
    q.add_argument("--suite", default="digits")
    add_filters(q)
    q.add_argument("--n", type=int, default=None, help="examples per cell (default: the suite's)")
    q.add_argument("--rate", type=float, default=None,
                   help="forward+backward passes per second of your device (default: measured here on one planned "
                        "model's architecture with random weights)")
    add_protocol(q)
    q.add_argument("--no-measure", action="store_true", help="do not measure a rate (no hours without --rate)")
    q.add_argument("--no-checksums", action="store_true", help="check presence only (no hashing)")
    q.add_argument("--clean-acc", type=float, default=1.0,
                   help="expected clean accuracy: only clean-correct images are attacked (default 1: an upper bound)")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    q.add_argument("--verbose", action="store_true", help="list every file, not only those not verified")
    add_device(q)
    add_common(q)
    add_data(q)
    q.set_defaults(fn=cmd_preflight)


def cmd_fetch(args) -> int:
    """Download what the planned cells need and is missing; exit 0 only when preflight then passes."""
    from ..run import plan
    from ..run.fetch import plan as fetch_plan
    from ..run.preflight import environment_model_dir

    r = registry_of(args)
    suite = r.suite(args.suite)
    check_patterns(r, suite, args)
    if args.jobs < 1 or args.retries_fetch < 0 or not args.timeout > 0:
        raise UsageError(f"--jobs must be at least 1, --retries at least 0 and --timeout positive; got {args.jobs}, "
                         f"{args.retries_fetch}, {args.timeout}")
    if args.from_dir is not None and not Path(args.from_dir).is_dir():
        raise UsageError(f"--from-dir {args.from_dir}: no such folder")
    environment_model_dir(args.model_dir)
    cells = plan.plan_suite(r, args.suite, models=args.models, shifts=args.shifts, threats=args.threats,
                            model_dir=args.model_dir, record_pins=False)
    if not cells:
        raise UsageError(f"no cells match (suite {args.suite}, models={args.models}, shifts={args.shifts}, "
                         f"threats={args.threats})")
    if args.dry_run:
        from ..data.fetch import mirror_from_env

        print(fetch_plan(r, args.suite, cells, data_dir=args.data_dir, model_dir=args.model_dir)
              .text(mirror_from_env(args.mirror)))
        return 0
    device = device_or_exit("auto")
    return fetch_and_check(r, args.suite, cells, args, device or "cpu")


def fetch_and_check(r: reg.Registry, suite_id: str, cells, args, device: str) -> int:
    """``fetch`` and ``run --fetch``: download what is missing, pin what has no published checksum,
    then preflight; 0 when every file the cells need is there and verified."""
    from ..data.fetch import FetchError, mirror_from_env
    from ..run import preflight
    from ..run.fetch import execute, pin_models, plan

    the_plan = plan(r, suite_id, cells, data_dir=args.data_dir, model_dir=args.model_dir)
    for m in the_plan.manual:
        print(f"not downloaded (licence, login or no public file): {m.describe()}", file=sys.stderr)
    print(f"fetch: {the_plan.total()}", file=sys.stderr)
    try:
        out = execute(the_plan, jobs=getattr(args, "jobs", 1), mirror=mirror_from_env(args.mirror),
                      from_dir=getattr(args, "from_dir", None), retries=getattr(args, "retries_fetch", 3),
                      timeout=getattr(args, "timeout", 60.0), progress=not args.no_progress)
        if out.ok:
            pin_models(r, list({c.model.id: c.model for c in cells}.values()), args.model_dir, out.placed)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not out.ok:
        print(f"error: {len(out.failed)} download(s) failed" + (f", {len(out.skipped)} not started" if out.skipped
              else "") + "; nothing partial was left in place. Check the network (or give --mirror, or --from-dir "
              "with the files), then run the same command: what is in place is skipped", file=sys.stderr)
        return 1
    rep = preflight.preflight(r, suite_id, cells, data_dir=args.data_dir, model_dir=args.model_dir,
                              results_dir=Path(args.results) / suite_id, measure=False, device=device)
    if not rep.ok:
        print(f"error: still missing or wrong after fetch ({len(rep.problems)}):", file=sys.stderr)
        for n in rep.problems:
            print(f"  {n.describe()}", file=sys.stderr)
        return 1
    print(f"ready: every file the {len(cells)} planned cells need is present and verified", file=sys.stderr)
    return 0


def add_fetch_parser(sub) -> None:
    q = sub.add_parser("fetch", help="download what a suite needs and is missing (datasets, checkpoints, LPIPS "
                                     "networks), checked; exit 0 when the suite is ready")
    q.add_argument("--suite", default="digits")
    add_filters(q)
    q.add_argument("--dry-run", action="store_true",
                   help="list each download with its URL and size, and the total (no network)")
    q.add_argument("--jobs", type=int, default=1, help="downloads at a time (default 1)")
    q.add_argument("--mirror", default=None,
                   help=f"rewrite every https://HOST/PATH to MIRROR/HOST/PATH (default: ${MIRROR_ENV})")
    q.add_argument("--from-dir", default=None,
                   help="a folder holding files already downloaded, by their published names (e.g. "
                        "CIFAR-10-C.tar): verified like a download, then used (never deleted)")
    q.add_argument("--retries", dest="retries_fetch", metavar="N", type=int, default=3,
                   help="attempts after the first for a failing download, waiting longer each time (default 3)")
    q.add_argument("--timeout", type=float, default=60.0,
                   help="seconds without data before a server counts as stalled (default 60)")
    q.add_argument("--results", default=str(RESULTS_ROOT), help="where results go (for preflight's disk check)")
    q.add_argument("--no-progress", action="store_true")
    add_common(q)
    add_data(q)
    q.set_defaults(fn=cmd_fetch)


def cmd_calibrate(args) -> int:
    from ..run import calibrate

    if device_or_exit(args.device) is None:
        return 2
    r = registry_of(args)
    suite = r.suite(args.suite)
    check_patterns(r, suite, argparse.Namespace(models=args.models, threats=args.threats))
    for flag in ("n", "threads", "workers"):
        v = getattr(args, flag, None)
        if v is not None and v < 1:
            raise UsageError(f"--{flag} must be at least 1, got {v}")
    if getattr(args, "allow_code", False):
        os.environ[CODE_ENV] = "1"  # read by the loader in this process and in its workers
    return calibrate.main(args)


def add_calibrate_parser(sub) -> None:
    q = sub.add_parser("calibrate", help="each threat's own attack vs AutoAttack, side by side (randomized "
                                         "models: vs AutoAttack-rand)")
    q.add_argument("--suite", default="digits")
    q.add_argument("--models", default=None)
    q.add_argument("--n", type=int, default=None, help="examples per model")
    q.add_argument("--out", default=None, help="write the table (markdown) here")
    q.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    q.add_argument("--threats", default=None,
                   help="patterns over the suite's threats (ID and threat shifts; a non-Lp one is compared "
                        "with its stronger run: 4x the iterations, 2 restarts); default: the ID threat and two "
                        "Lp threat shifts")
    q.add_argument("--workers", type=int, default=1,
                   help="models calibrated at a time, each in its own process (both attacks of a row "
                        "still run back to back in one process)")
    q.add_argument("--fast", default=None,
                   help="comma-separated attacks to compare with AutoAttack on every threat instead of each "
                        "threat's own attack (the default); the first is the one the targets apply to, e.g. "
                        "apgd-mm,mm5")
    add_device(q)
    add_common(q)
    add_data(q)
    q.add_argument("--allow-code", action="store_true",
                   help="let python:module:factory model entries import their module (off by default)")
    q.set_defaults(fn=cmd_calibrate)


def add_parsers(sub) -> None:
    """This family's commands, in the order `shiftbench --help` lists them."""
    add_run_parser(sub)
    add_preflight_parser(sub)
    add_fetch_parser(sub)
    add_calibrate_parser(sub)
