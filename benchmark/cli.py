"""The ``shiftbench`` command line.

    shiftbench ls models|shifts|threats|suites [--suite S] [--json]
    shiftbench validate
    shiftbench run --suite digits [--models PAT] [--shifts PAT] [--threats PAT] [--limit N] [--dry-run]
    shiftbench leaderboard [--suite digits]
    shiftbench zoo train [--models PAT]
    shiftbench show-shifts --suite digits --out FILE.png
    shiftbench calibrate --suite digits
    shiftbench verify-archives --suite cifar10-linf [--shifts PAT] [--archive-dir DIR]
    shiftbench submit ENTRY.yaml [--weights PATH] [--suite S] [--workers N] [--summary-out FILE]
    shiftbench reproduce [--suite S] [--models PAT] [--sample K] [--seed N] [--json] [--update]
    shiftbench export-baseline --suite S --model ID --out baseline.json
    shiftbench regress --model ENTRY.yaml|ID|python:module:factory --baseline baseline.json [--quick]
    shiftbench verify-results [--suite S] [--sign]
    shiftbench preflight --suite S [--models PAT] [--data-dir D] [--model-dir M] [--rate R]


    shiftbench trends fit --csv FILE --x COL --y COL [--scale raw|probit|logit] [--json]
    shiftbench analyze --suite S --by FIELD[,FIELD] [--target OOD|OOD-D|OOD-T] [--scale raw|probit] [--json] [--out PLOT]
    shiftbench site [--suite S | --all] --out DIR
"""
from __future__ import annotations

import argparse
import difflib
import fnmatch
import json
import os
import sys
import time
from pathlib import Path

from . import registry as reg

RESULTS_ROOT = Path("results")  # under the current folder: an installed package writes into the user's repository


def _registry(args) -> reg.Registry:
    return reg.Registry(args.registry)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", default=None,
                   help="your registry folder, layered over the built-in registry (its entries shadow built-in "
                        "ones with the same id; default: $SHIFTBENCH_REGISTRY, else the built-in registry alone)")


def _add_filters(p: argparse.ArgumentParser) -> None:
    """The cell filters of ``run`` and ``reproduce``."""
    p.add_argument("--models", default=None, help="comma-separated glob patterns over model ids")
    p.add_argument("--shifts", default=None, help="patterns over data names ('id' is the ID data)")
    p.add_argument("--threats", default=None, help="patterns over threat ids")


def _add_protocol(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=reg.PROTOCOLS, default=None,
                   help="design of the dataset-shift cells (default: the suite's): lean shares the test images out "
                        "among the corruptions, reference attacks every image under every one (OODRobustBench's)")


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
            row[3] = f"{spec.eps:.4g}" if spec.kind == "lp" else (spec.params_text() or "-")
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
    for note in _code_notes(r):
        print(f"note: {note}", file=sys.stderr)
    if problems:
        return 1
    print(f"registry OK: {counts} ({r.root})")
    return 0


# --------------------------------------------------------------------------- run
def cmd_run(args) -> int:
    from .run import plan, store

    from .run.preflight import environment_model_dir

    r = _registry(args)
    suite = r.suite(args.suite)
    _check_run_flags(args)
    _check_patterns(r, suite, args)
    _check_data_dir(suite, args.data_dir)
    environment_model_dir(args.model_dir)  # LPIPS networks are looked up there too
    cells = plan.plan_suite(r, args.suite, models=args.models, shifts=args.shifts, threats=args.threats,
                            n_examples=args.n, seed=args.seed, model_dir=args.model_dir, protocol=args.protocol)
    if not cells:
        print(f"error: no cells match (suite {args.suite}, models={args.models}, shifts={args.shifts}, "
              f"threats={args.threats}); see `shiftbench ls models --suite {args.suite}`", file=sys.stderr)
        return 2
    cells = plan.shard(cells, args.shard)
    results_dir = Path(args.results) / args.suite
    from .run.evaluate import pending, pending_with_batches, run_grid

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
    device = _device_or_exit(args.device)
    if device is None:
        return 2
    if suite.dataset != "digits" and todo and not args.no_preflight:  # every file the cells need, before the first
        from .run import preflight

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
    from .models.load import code_opt_in

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
    from .analysis import published

    for model, checks in published.check_id_cells(cells, results_dir):  # ID cells against published numbers
        for text in published.flag_texts(checks):
            print(f"warning: model '{model}': {text}", file=sys.stderr)
    if args.leaderboard:
        from .report import leaderboard

        leaderboard.write(r, args.suite, Path(args.results), Path(args.out) if args.out else None)
    return 1 if counts.get("failed") or refused else 0


def cmd_preflight(args) -> int:
    """What a run needs and what it costs; exit 0 when every file is there, 1 otherwise."""
    from .run import plan
    from .run.preflight import environment_model_dir, preflight

    r = _registry(args)
    suite = r.suite(args.suite)
    _check_run_flags(args)
    _check_patterns(r, suite, args)
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
    device = _device_or_exit(args.device)
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


# --------------------------------------------------------------------------- run: executors
def _add_executor_args(q: argparse.ArgumentParser) -> None:
    from .run.executors import DEFAULT_MIN_BATCH, DEFAULT_RETRIES, NAMES

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
    from .run.executors import make_executor

    if args.local and args.executor != "submitit":
        raise ValueError("--local goes with --executor submitit (it selects submitit's local executor)")
    if args.retries < 0 or args.min_batch_size < 1:
        raise ValueError("--retries must be >= 0 and --min-batch-size >= 1")
    if args.executor == "local":
        return make_executor("local", workers=args.workers, gpus=[] if device == "cpu" else None)
    if args.executor == "ray":
        return make_executor("ray", address=args.ray_address, return_results=args.ray_return_results,
                             gpus_per_task=0 if device == "cpu" else None)
    from .run.executors.submitit import parse_slurm_time

    return make_executor("submitit", folder=args.slurm_folder or ".submitit", local=args.local,
                         partition=args.slurm_partition, time_min=parse_slurm_time(args.slurm_time),
                         gpus=args.slurm_gpus, array_parallelism=args.slurm_array_parallelism)


def _run_on_executor(args, run_grid, todo, registry, results_dir, device: str = "auto") -> dict[str, int] | None:
    """run_grid on the chosen executor; None after Ctrl-C.  A missing extra is a usage error."""
    from .run.executors import GridInterrupted, MissingExtra

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




def _device_or_exit(device: str) -> str | None:
    """``--device``: the resolved device name, or None (message printed) when it is unavailable."""
    from .run.evaluate import resolve_device

    try:
        return str(resolve_device(device))
    except ValueError as exc:
        print(f"error: --device: {exc}", file=sys.stderr)
        return None


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where models run: auto (CUDA when available), cpu or cuda; data moves there once")


def cmd_leaderboard(args) -> int:
    from .analysis import aggregate
    from .report import leaderboard

    r = _registry(args)
    res = aggregate.load(r, args.suite, Path(args.results), args.protocol)  # to name excluded files (cheap next to the fits)
    for v in res.corrupt:
        print(f"warning: excluded {v.describe()} (`shiftbench run --suite {args.suite}` recomputes it)",
              file=sys.stderr)
    path = leaderboard.write(r, args.suite, Path(args.results), Path(args.out) if args.out else None,
                             protocol=args.protocol)
    print(f"wrote {path} ({leaderboard.integrity_text(res)})", file=sys.stderr)
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
    _check_patterns(r, suite, argparse.Namespace(shifts=args.shifts))
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


def cmd_calibrate(args) -> int:
    from .run import calibrate

    if _device_or_exit(args.device) is None:
        return 2
    r = _registry(args)
    suite = r.suite(args.suite)
    _check_patterns(r, suite, argparse.Namespace(models=args.models, threats=args.threats))
    for flag in ("n", "threads", "workers"):
        v = getattr(args, flag, None)
        if v is not None and v < 1:
            raise UsageError(f"--{flag} must be at least 1, got {v}")
    if getattr(args, "allow_code", False):
        os.environ[CODE_ENV] = "1"  # read by the loader in this process and in its workers
    return calibrate.main(args)


# --------------------------------------------------------------------------- workflows: submit, reproduce, regress
def cmd_submit(args) -> int:
    from .workflows import submit

    r = _registry(args)
    try:
        res = submit.submit(args.entry, registry=r, suite=args.suite, weights=args.weights, results=args.results,
                            leaderboard_out=args.out, workers=args.workers, replace=args.replace,
                            allow_code=args.allow_code, progress=not args.no_progress, data_dir=args.data_dir,
                            model_dir=args.model_dir)
    except KeyboardInterrupt:
        print("interrupted: the registry, results and leaderboard are as they were", file=sys.stderr)
        return 130
    except (reg.RegistryError, KeyError, ValueError, FileNotFoundError):
        raise  # bad input: main() prints it, exit 2
    except Exception as exc:  # the model or the run failed
        print(f"error: submission failed while evaluating: {type(exc).__name__}: {exc}\n"
              "the registry, results and leaderboard are as they were", file=sys.stderr)
        return 1
    if res.replaced:
        print(f"replaced {res.replaced}", file=sys.stderr)
    print(f"added {res.entry}" + (f" and {res.weights}" if res.weights else "") + f"; {res.cells} cells in "
          f"{Path(args.results) / args.suite}; wrote {res.leaderboard}", file=sys.stderr)
    print(res.markdown)
    if args.summary_out:
        Path(args.summary_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary_out).write_text(res.markdown, encoding="utf-8")
    return 0


def cmd_reproduce(args) -> int:
    from .workflows import reproduce

    r = _registry(args)
    res = reproduce.reproduce(r, args.suite, args.results, models=args.models, shifts=args.shifts,
                              threats=args.threats, sample=args.sample, seed=args.seed, update=args.update,
                              workers=args.workers, progress=not args.no_progress and not args.json,
                              data_dir=args.data_dir, model_dir=args.model_dir)
    print(reproduce.to_json(res) if args.json else res.markdown())
    if not len(res.cells):
        print(f"error: nothing to compare: no current stored result matches under {Path(args.results) / args.suite}",
              file=sys.stderr)
    return 0 if res.ok else 1


def cmd_export_baseline(args) -> int:
    from .workflows import regress

    r = _registry(args)
    data = regress.export_baseline(r, args.suite, args.model, args.results, n_examples=args.n, seed=args.seed)
    out = regress.write_baseline(data, args.out)
    print(f"wrote {out}: {len(data['cells'])} of {data['planned']} cells of model {data['model']} (suite "
          f"{data['suite']}, harness {data['harness']}, seed {data['seed']})", file=sys.stderr)
    if data["missing"]:
        print(f"warning: {len(data['missing'])} planned cell(s) have no stored result and are not in the baseline, "
              f"e.g. {data['missing'][0]}", file=sys.stderr)
    return 0


def _key_values(text: str | None, option: str) -> dict | None:
    """``eot=20,draws=5`` -> ``{"eot": 20, "draws": 5}`` (numbers parsed; a bad item names the option)."""
    if not text:
        return None
    out: dict = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SystemExit(f"{option}: expected key=value items separated by commas (e.g. eot=20,draws=5), "
                             f"got {item!r}")
        v: object = value.strip()
        for cast in (int, float):
            try:
                v = cast(value)
                break
            except ValueError:
                pass
        out[key.strip()] = v
    return out


def cmd_regress(args) -> int:
    import torch

    from .workflows import regress

    torch.set_num_threads(args.threads)
    r = _registry(args)
    res = regress.regress(args.model, args.baseline, quick=args.quick, alpha=args.alpha, registry=r,
                          weights=args.weights, allow_code=args.allow_code, n_examples=args.n, seed=args.seed,
                          data_dir=args.data_dir, model_dir=args.model_dir, progress=not args.no_progress,
                          randomized=_key_values(args.randomized, "--randomized"),
                          input_transform=_key_values(args.input_transform, "--input-transform"),
                          attack=args.attack)
    print(res.markdown())
    for path in regress.publish(res, args.report):
        print(f"wrote {path}", file=sys.stderr)
    if res.worse:
        print(f"regression: {len(res.worse)} cell(s) significantly less robust: {', '.join(res.worse)}", file=sys.stderr)
        return 1
    return 0


def _add_workflow_parsers(sub) -> None:
    from .workflows.rules import CLEAN_TOLERANCE_RULE, QUICK_RULE, TOLERANCE_RULE

    fmt = argparse.RawDescriptionHelpFormatter
    q = sub.add_parser("submit", help="add a model entry: check it, run the suite for it, regenerate the leaderboard",
                       formatter_class=fmt, description=(
                           "Validate ENTRY.yaml (a model entry with `claimed: {clean_acc: ...}`), install it (and "
                           "--weights) into the registry folder, check the claimed clean accuracy, run the suite for "
                           "the model, regenerate the leaderboard and print a Markdown summary for the pull request. "
                           "A failure or Ctrl-C leaves the registry, results and leaderboard as they were.\n\n"
                           "Clean-accuracy tolerance: " + CLEAN_TOLERANCE_RULE + "."))
    q.add_argument("entry", help="the model entry (YAML)")
    q.add_argument("--weights", default=None, help="weights file: copied into the registry, its sha256 written into "
                                                   "the entry (default: the entry's own weights and sha256, checked)")
    q.add_argument("--suite", default="digits")
    q.add_argument("--workers", type=int, default=1, help="worker processes")
    q.add_argument("--summary-out", default=None, help="also write the Markdown summary to this file")
    q.add_argument("--replace", action="store_true", help="replace an existing entry with the same id")
    q.add_argument("--allow-code", action="store_true",
                   help="allow a python:module:factory source (imports and runs that module)")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    q.add_argument("--out", default=None, help="leaderboard path (default: ./leaderboard.md for digits)")
    q.add_argument("--no-progress", action="store_true")
    _add_common(q)
    _add_data(q)
    q.set_defaults(fn=cmd_submit)

    q = sub.add_parser("reproduce", help="re-run stored cells in a scratch folder and compare them example by example",
                       formatter_class=fmt, description=(
                           "Re-run stored cells (all, a filter, or a seeded sample) into a scratch folder and compare "
                           "each with its stored result. Exit 0 when every cell is exact or within tolerance, 1 "
                           "otherwise. Stale results (their key is no longer planned) are reported, not compared.\n\n"
                           "Tolerance: " + TOLERANCE_RULE))
    q.add_argument("--suite", default="digits")
    _add_filters(q)
    q.add_argument("--sample", type=int, default=None, help="compare a random sample of K stored cells")
    q.add_argument("--seed", type=int, default=0, help="seed of --sample")
    q.add_argument("--json", action="store_true", help="print JSON instead of the Markdown table")
    q.add_argument("--update", action="store_true",
                   help="rewrite the stored results of compared cells that were not reproduced exactly")
    q.add_argument("--workers", type=int, default=1, help="worker processes")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    q.add_argument("--no-progress", action="store_true")
    _add_common(q)
    _add_data(q)
    q.set_defaults(fn=cmd_reproduce)

    q = sub.add_parser("export-baseline", help="write a model's per-example outcomes for `shiftbench regress`")
    q.add_argument("--suite", default="digits")
    q.add_argument("--model", required=True, help="model id")
    q.add_argument("--out", required=True, help="baseline JSON file to write")
    q.add_argument("--n", type=int, default=None, help="examples per cell, as given to `shiftbench run` (default: the suite's)")
    q.add_argument("--seed", type=int, default=None, help="as given to `shiftbench run` (default: the suite's)")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    _add_common(q)
    q.set_defaults(fn=cmd_export_baseline)

    q = sub.add_parser("regress", help="compare a model with a baseline, cell by cell (exit 1 if less robust)",
                       formatter_class=fmt, description=(
                           "Evaluate a model on a baseline's cells and compare each cell by an exact one-sided "
                           "McNemar test on the paired robust outcomes, Holm-corrected across cells. Exit 1 when a "
                           "cell is significantly less robust, 0 otherwise, 2 for usage errors (a baseline made with "
                           "other settings included). The report is appended to $GITHUB_STEP_SUMMARY when set.\n\n"
                           + QUICK_RULE + "."))
    q.add_argument("--model", required=True,
                   help="an entry file (YAML), a registry model id, or python:module:factory (with --weights)")
    q.add_argument("--baseline", required=True, help="baseline JSON from `shiftbench export-baseline`")
    q.add_argument("--weights", default=None, help="weights file for the model (its sha256 is taken)")
    q.add_argument("--quick", action="store_true", help="a small subset of the baseline's cells (see above)")
    q.add_argument("--randomized", default=None, metavar="eot=20,draws=5",
                   help="the model's output is random: attacks average over EOT samples, outcomes are the majority of "
                        "draws (docs/defenses.md); an entry's own declaration wins")
    q.add_argument("--input-transform", default=None, metavar="kind=quantize,bits=1",
                   help="the model transforms its input (quantize/jpeg/median/gaussian-noise/python): attacked "
                        "through by BPDA (docs/defenses.md)")
    q.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate across cells (default 0.05)")
    q.add_argument("--report", default=None, help="write the Markdown report to this file")
    q.add_argument("--attack", default=None,
                   help="run this attack on every cell instead of each threat's: one of ours, or your own "
                        "python:module:function (with --allow-code); the report says so")
    q.add_argument("--allow-code", action="store_true",
                   help="allow a python:module:factory model or python:module:function attack (imports and runs "
                        "that module)")
    q.add_argument("--n", type=int, default=None, help="examples per cell (default: the suite's; must match the baseline)")
    q.add_argument("--seed", type=int, default=None, help="(default: the suite's; must match the baseline)")
    q.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: small models attack fastest on one thread per core)")
    q.add_argument("--no-progress", action="store_true")
    _add_common(q)
    _add_data(q)
    q.set_defaults(fn=cmd_regress)


# --------------------------------------------------------------------------- reliability: verify-results, input checks, code opt-in
CODE_ENV = reg.CODE_ENV  # "1": any module; else comma-separated module prefixes


class UsageError(ValueError):
    """Bad command-line input: one line on stderr, exit 2, nothing written."""


def cmd_verify_results(args) -> int:
    """Check every stored result file (current or stale) of one suite, or of all; exit 1 on any corrupt file."""
    from .run import store

    root = Path(args.results)
    if args.suite:
        folders = [root / args.suite]
        if not folders[0].is_dir():
            known = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
            try:
                known = sorted({*known, *_registry(args).entries["suites"]})
            except reg.RegistryError:
                pass
            close = difflib.get_close_matches(args.suite, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (suites with results: {', '.join(known) or 'none'})"
            raise UsageError(f"no results for suite '{args.suite}' under {root}{hint}")
    else:
        if not root.is_dir():
            raise UsageError(f"results folder {root} does not exist")
        folders = sorted(d for d in root.iterdir() if d.is_dir())
    counts = {store.VERIFIED: 0, store.UNSIGNED: 0, store.CORRUPT: 0}
    signed = 0
    for folder in folders:
        for path in store.result_files(folder):
            v = store.check_result(path)
            counts[v.status] += 1
            if v.status == store.CORRUPT:
                print(f"error: {v.describe()}", file=sys.stderr)
            elif v.status == store.UNSIGNED and args.sign:
                store.write_json_atomic(path, store.sign(v.payload))
                signed += 1
            elif v.status == store.UNSIGNED and args.verbose:
                print(f"note: {v.describe()}", file=sys.stderr)
    where = ", ".join(str(f) for f in folders) or str(root)
    total = sum(counts.values())
    print(f"{total} result file(s) in {where}: {counts[store.VERIFIED]} verified, {counts[store.UNSIGNED]} unsigned"
          + (f" ({signed} signed now)" if signed else " (no digest: written before digests; `--sign` adds one "
             "after the consistency checks)" if counts[store.UNSIGNED] else "")
          + f", {counts[store.CORRUPT]} corrupt", file=sys.stderr)
    if counts[store.CORRUPT]:
        print("corrupt files are excluded from leaderboards; `shiftbench run` recomputes them", file=sys.stderr)
    return 1 if counts[store.CORRUPT] else 0


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


def _refuse_code(r: reg.Registry, suite, cells, allow_all: bool) -> set[str]:
    """Model ids whose ``python:`` source is not allowed: reported (with how to allow them), not run."""
    from .models.load import allowed_code, code_module

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
    from .attacks import check_code_attack, is_code_attack

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


def _check_run_flags(args) -> None:
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


def _check_patterns(r: reg.Registry, suite, args) -> None:
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


def _check_data_dir(suite, data_dir: str | None) -> None:
    """A real suite needs its data root: a missing or empty folder is a usage error, before anything runs."""
    from .data import datasets

    if data_dir is not None and not Path(data_dir).is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such folder")
    if suite.dataset == "digits":
        return  # embedded data
    root = datasets.data_root(data_dir)
    src = "--data-dir" if data_dir else "$SHIFTBENCH_DATA" if os.environ.get("SHIFTBENCH_DATA") else "the default ./data"
    state = "does not exist" if not root.is_dir() else "is empty" if not any(root.iterdir()) else None
    if state is None:
        return
    from .data import loaders

    src_files = loaders.ID_SOURCES.get(suite.dataset, {})
    try:  # the files the ID data needs, named with where to get them (presence only, no hashing)
        loaders.check_files([{"path": f["path"]} for f in src_files.get("files", ())], root,
                            what=f"{suite.dataset} test set", url=src_files.get("url"))
    except loaders.DataMissingError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines())
        raise UsageError(f"data root {root} ({src}) {state}. {detail}") from None
    raise UsageError(f"data root {root} ({src}) {state}; suite '{suite.id}' needs the {suite.dataset} files there "
                     "(see docs/real-suites.md), or set --data-dir / $SHIFTBENCH_DATA")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (no usage dump), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_reliability_commands(sub) -> None:
    q = sub.add_parser("verify-results", help="check every stored result's digest and consistency")
    q.add_argument("--suite", default=None, help="only this suite's results (default: all)")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    q.add_argument("--sign", action="store_true",
                   help="add a digest to unsigned results that pass the consistency checks (migration)")
    q.add_argument("--verbose", action="store_true", help="also list unsigned files")
    _add_common(q)
    q.set_defaults(fn=cmd_verify_results)


# --------------------------------------------------------------------------- trends / site
def trend_fit_json(fit, cx, cy, labels: list[str], path: str) -> dict:
    """The JSON object of ``shiftbench trends fit --json`` (slope/intercept in fraction units in raw scale)."""
    def f(v: float):
        return float(v) if v == v else None  # NaN -> null

    line = fit.line
    return {"file": path, "x": cx.name, "y": cy.name, "units": {"x": cx.unit, "y": cy.unit}, "scale": fit.scale,
            "slope": f(line.slope), "intercept": f(line.intercept), "r2": f(line.r2), "pearson_r": f(line.pearson_r),
            "resid_sd": f(line.resid_sd), "n": line.n, "slope_ci": [f(v) for v in fit.slope_ci],
            "intercept_ci": [f(v) for v in fit.intercept_ci],
            "clip_eps": line.clip_eps if fit.scale != "raw" else None,
            "clipped": [{"row": m, "axis": a, "value": v} for m, a, v in fit.clipped],
            "n_boot": fit.n_boot, "seed": fit.seed}


def cmd_trends(args) -> int:
    from .analysis import tables, trends

    if args.n_boot < 1:
        raise ValueError(f"--n-boot {args.n_boot}: need at least 1 bootstrap replicate")
    if not 0 < args.clip_eps < 0.5:
        raise ValueError(f"--clip-eps {args.clip_eps}: must lie in (0, 0.5)")
    cx, cy, labels = tables.read_xy(Path(args.csv), args.x, args.y, args.label)
    fit = trends.fit_trend(f"{args.y} ~ {args.x}", labels, cx.values, cy.values, scale=args.scale,
                           n_boot=args.n_boot, seed=args.seed, clip_eps=args.clip_eps)
    out = trend_fit_json(fit, cx, cy, labels, args.csv)
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    name = {"raw": "y", "probit": "Phi^-1(y)", "logit": "logit(y)"}[fit.scale]
    xname = name.replace("y", "x")

    def n3(v):
        return "-" if v is None else f"{v:.3f}"

    def ci(v):
        return f" [{n3(v[0])}, {n3(v[1])}]" if None not in v else ""

    print(f"trend of {args.y!r} on {args.x!r} in {args.csv}, {fit.scale} scale: {name} = intercept + slope * {xname}")
    print(f"units detected: {args.x!r} {cx.unit}, {args.y!r} {cy.unit} (fitted as fractions)")
    print(f"n {out['n']}  slope {n3(out['slope'])}{ci(out['slope_ci'])}  intercept {n3(out['intercept'])}"
          f"{ci(out['intercept_ci'])}")
    print(f"R^2 {n3(out['r2'])}  Pearson r {n3(out['pearson_r'])}  residual sd {n3(out['resid_sd'])}")
    if fit.scale != "raw":
        what = ", ".join(f"{m} ({a}={v:g})" for m, a, v in fit.clipped) or "none"
        print(f"clipped to [{fit.line.clip_eps:g}, {1 - fit.line.clip_eps:g}]: {len(fit.clipped)} point(s): {what}")
    print(f"intervals: 95% bootstrap over rows, {fit.n_boot} replicates, seed {fit.seed}")
    return 0


def cmd_analyze(args) -> int:
    from .report import groups as report_groups

    ga = report_groups.build(_registry(args), args.suite, Path(args.results), args.by, target=args.target,
                             scale=args.scale)
    if args.out:
        report_groups.write_plot(ga, Path(args.out))
    if args.json:
        print(json.dumps(ga.to_json(), sort_keys=True))
    else:
        sys.stdout.write(report_groups.text(ga))
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_site(args) -> int:
    from .report import site

    r = _registry(args)
    if args.all == bool(args.suite):
        print("error: give exactly one of --suite S and --all", file=sys.stderr)
        return 2
    suites = sorted(r.entries["suites"]) if args.all else [args.suite]
    written = site.write(r, suites, Path(args.results), Path(args.out), skip_empty=args.all,
                         command="shiftbench site " + (f"--suite {args.suite}" if args.suite else "--all")
                         + " --out DIR", report=lambda msg: print(msg, file=sys.stderr))
    print(f"wrote {written}", file=sys.stderr)
    return 0


def _add_trends_site(sub) -> None:
    q = sub.add_parser("trends", help="fit ID-vs-OOD trends on any table")
    tsub = q.add_subparsers(dest="action", required=True)
    f = tsub.add_parser("fit", help="fit one column against another in a CSV (fractions, percents or 'NN%')")
    f.add_argument("--csv", required=True, help="CSV file with a header row")
    f.add_argument("--x", required=True, help="predictor column (e.g. ID robust accuracy)")
    f.add_argument("--y", required=True, help="target column (e.g. OOD robust accuracy)")
    f.add_argument("--scale", choices=["raw", "probit", "logit"], default="raw")
    f.add_argument("--json", action="store_true", help="print exactly one JSON object")
    f.add_argument("--label", default=None, help="column naming each row (e.g. the model) in the output")
    f.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates (default 2000)")
    f.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    f.add_argument("--clip-eps", type=float, default=1e-3,
                   help="probit/logit: accuracies of exactly 0 or 1 are clipped to [eps, 1-eps] (default 0.001)")
    f.set_defaults(fn=cmd_trends)

    q = sub.add_parser("analyze", help="what beats the trend: models grouped by their metadata, mean AER per group")
    q.add_argument("--suite", required=True, help="the suite whose stored results to analyse")
    q.add_argument("--by", required=True, help="comma-separated metadata fields to group by: training_family, "
                   "extra_data, arch, size (parameter count, by decade), threat, eps, venue, year")
    q.add_argument("--target", choices=["OOD", "OOD-D", "OOD-T"], default="OOD", help="the trend's target (default OOD)")
    q.add_argument("--scale", choices=["raw", "probit"], default="raw", help="the trend's scale (default raw)")
    q.add_argument("--json", action="store_true", help="print exactly one JSON object")
    q.add_argument("--out", default=None, help="also write the plot (PNG): the groups coloured on the trend")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    _add_common(q)
    q.set_defaults(fn=cmd_analyze)

    q = sub.add_parser("site", help="write the static web leaderboard (opens from disk, no network)")
    q.add_argument("--suite", default=None, help="one suite")
    q.add_argument("--all", action="store_true", help="every suite with results")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    _add_common(q)
    q.set_defaults(fn=cmd_site)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="shiftbench", description=__doc__.split("\n")[0])
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
    _add_filters(q)
    q.add_argument("--limit", type=int, default=None, help="run at most N pending cells")
    q.add_argument("--n", type=int, default=None, help="examples per cell (default: the suite's)")
    q.add_argument("--seed", type=int, default=None)
    _add_protocol(q)
    q.add_argument("--shard", default=None, help="run slice i/N of the grid (for any scheduler)")
    q.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: one per visible GPU, else 1)")
    q.add_argument("--batch-size", type=int, default=1000, help="examples per forward/attack batch")
    q.add_argument("--dry-run", action="store_true", help="list the cells that would run")
    q.add_argument("--no-preflight", action="store_true",
                   help="real suites: skip the check that every file the cells need is here and matches its checksum "
                        "(e.g. when the data is only on a cluster's nodes)")
    q.add_argument("--no-progress", action="store_true")
    q.add_argument("--leaderboard", action="store_true", help="regenerate the leaderboard afterwards")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    q.add_argument("--out", default=None, help="leaderboard path (with --leaderboard)")
    q.add_argument("--allow-code", action="store_true",
                   help="let python:module:factory model entries and python:module:function threat attacks import "
                        "their module (off by default)")
    _add_device(q)
    _add_common(q)
    _add_data(q)
    _add_executor_args(q)
    q.set_defaults(fn=cmd_run)

    q = sub.add_parser("preflight", help="what a run needs (files, checksums, disk) and costs; exit 1 if not ready")
    q.add_argument("--suite", default="digits")
    _add_filters(q)
    q.add_argument("--n", type=int, default=None, help="examples per cell (default: the suite's)")
    q.add_argument("--rate", type=float, default=None,
                   help="forward+backward passes per second of your device (default: measured here on one planned "
                        "model's architecture with random weights)")
    _add_protocol(q)
    q.add_argument("--no-measure", action="store_true", help="do not measure a rate (no hours without --rate)")
    q.add_argument("--no-checksums", action="store_true", help="check presence only (no hashing)")
    q.add_argument("--clean-acc", type=float, default=1.0,
                   help="expected clean accuracy: only clean-correct images are attacked (default 1: an upper bound)")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    q.add_argument("--verbose", action="store_true", help="list every file, not only those not verified")
    _add_device(q)
    _add_common(q)
    _add_data(q)
    q.set_defaults(fn=cmd_preflight)

    q = sub.add_parser("leaderboard", help="regenerate leaderboard.md from results/")
    q.add_argument("--suite", default="digits")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    q.add_argument("--out", default=None, help="output markdown (default: ./leaderboard.md for digits)")
    _add_protocol(q)
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

    q = sub.add_parser("calibrate", help="each threat's own attack vs AutoAttack, side by side (randomized "
                                         "models: vs AutoAttack-rand)")
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
    q.add_argument("--fast", default=None,
                   help="comma-separated attacks to compare with AutoAttack on every threat instead of each "
                        "threat's own attack (the default); the first is the one the targets apply to, e.g. "
                        "apgd-mm,mm5")
    _add_device(q)
    _add_common(q)
    _add_data(q)
    q.add_argument("--allow-code", action="store_true",
                   help="let python:module:factory model entries import their module (off by default)")
    q.set_defaults(fn=cmd_calibrate)

    _add_reliability_commands(sub)
    _add_workflow_parsers(sub)
    _add_trends_site(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .run.store import StoreError

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


if __name__ == "__main__":
    sys.exit(main())
