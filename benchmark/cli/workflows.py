"""User journeys: ``submit``, ``reproduce``, ``export-baseline`` and ``regress``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import registry as reg
from .common import RESULTS_ROOT, add_common, add_data, add_filters, registry_of


def cmd_submit(args) -> int:
    from ..workflows import submit

    r = registry_of(args)
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


def add_submit_parser(sub) -> None:
    from ..workflows.rules import CLEAN_TOLERANCE_RULE

    q = sub.add_parser("submit", help="add a model entry: check it, run the suite for it, regenerate the leaderboard",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=(
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
    add_common(q)
    add_data(q)
    q.set_defaults(fn=cmd_submit)


def cmd_reproduce(args) -> int:
    from ..workflows import reproduce

    r = registry_of(args)
    res = reproduce.reproduce(r, args.suite, args.results, models=args.models, shifts=args.shifts,
                              threats=args.threats, sample=args.sample, seed=args.seed, update=args.update,
                              workers=args.workers, progress=not args.no_progress and not args.json,
                              data_dir=args.data_dir, model_dir=args.model_dir)
    print(reproduce.to_json(res) if args.json else res.markdown())
    if not len(res.cells):
        print(f"error: nothing to compare: no current stored result matches under {Path(args.results) / args.suite}",
              file=sys.stderr)
    return 0 if res.ok else 1


def add_reproduce_parser(sub) -> None:
    from ..workflows.rules import TOLERANCE_RULE

    q = sub.add_parser("reproduce", help="re-run stored cells in a scratch folder and compare them example by example",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=(
                           "Re-run stored cells (all, a filter, or a seeded sample) into a scratch folder and compare "
                           "each with its stored result. Exit 0 when every cell is exact or within tolerance, 1 "
                           "otherwise. Stale results (their key is no longer planned) are reported, not compared.\n\n"
                           "Tolerance: " + TOLERANCE_RULE))
    q.add_argument("--suite", default="digits")
    add_filters(q)
    q.add_argument("--sample", type=int, default=None, help="compare a random sample of K stored cells")
    q.add_argument("--seed", type=int, default=0, help="seed of --sample")
    q.add_argument("--json", action="store_true", help="print JSON instead of the Markdown table")
    q.add_argument("--update", action="store_true",
                   help="rewrite the stored results of compared cells that were not reproduced exactly")
    q.add_argument("--workers", type=int, default=1, help="worker processes")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    q.add_argument("--no-progress", action="store_true")
    add_common(q)
    add_data(q)
    q.set_defaults(fn=cmd_reproduce)


def cmd_export_baseline(args) -> int:
    from ..workflows import regress

    r = registry_of(args)
    data = regress.export_baseline(r, args.suite, args.model, args.results, n_examples=args.n, seed=args.seed)
    out = regress.write_baseline(data, args.out)
    print(f"wrote {out}: {len(data['cells'])} of {data['planned']} cells of model {data['model']} (suite "
          f"{data['suite']}, harness {data['harness']}, seed {data['seed']})", file=sys.stderr)
    if data["missing"]:
        print(f"warning: {len(data['missing'])} planned cell(s) have no stored result and are not in the baseline, "
              f"e.g. {data['missing'][0]}", file=sys.stderr)
    return 0


def add_export_baseline_parser(sub) -> None:
    q = sub.add_parser("export-baseline", help="write a model's per-example outcomes for `shiftbench regress`")
    q.add_argument("--suite", default="digits")
    q.add_argument("--model", required=True, help="model id")
    q.add_argument("--out", required=True, help="baseline JSON file to write")
    q.add_argument("--n", type=int, default=None, help="examples per cell, as given to `shiftbench run` (default: the suite's)")
    q.add_argument("--seed", type=int, default=None, help="as given to `shiftbench run` (default: the suite's)")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    add_common(q)
    q.set_defaults(fn=cmd_export_baseline)


def key_values(text: str | None, option: str) -> dict | None:
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

    from ..workflows import regress

    torch.set_num_threads(args.threads)
    r = registry_of(args)
    res = regress.regress(args.model, args.baseline, quick=args.quick, alpha=args.alpha, registry=r,
                          weights=args.weights, allow_code=args.allow_code, n_examples=args.n, seed=args.seed,
                          data_dir=args.data_dir, model_dir=args.model_dir, progress=not args.no_progress,
                          randomized=key_values(args.randomized, "--randomized"),
                          input_transform=key_values(args.input_transform, "--input-transform"),
                          attack=args.attack)
    print(res.markdown())
    for path in regress.publish(res, args.report):
        print(f"wrote {path}", file=sys.stderr)
    if res.worse:
        print(f"regression: {len(res.worse)} cell(s) significantly less robust: {', '.join(res.worse)}", file=sys.stderr)
        return 1
    return 0


def add_regress_parser(sub) -> None:
    from ..workflows.rules import QUICK_RULE

    q = sub.add_parser("regress", help="compare a model with a baseline, cell by cell (exit 1 if less robust)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=(
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
    add_common(q)
    add_data(q)
    q.set_defaults(fn=cmd_regress)


def add_parsers(sub) -> None:
    """This family's commands, in the order `shiftbench --help` lists them."""
    add_submit_parser(sub)
    add_reproduce_parser(sub)
    add_export_baseline_parser(sub)
    add_regress_parser(sub)
