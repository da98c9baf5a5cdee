"""Stored results and what is made of them: ``verify-results``, ``leaderboard``, ``trends fit``, ``analyze``, ``site``."""
from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path

from .. import registry as reg
from .common import RESULTS_ROOT, UsageError, add_common, add_protocol, registry_of


def cmd_verify_results(args) -> int:
    """Check every stored result file (current or stale) of one suite, or of all; exit 1 on any corrupt file."""
    from ..run import store

    root = Path(args.results)
    if args.suite:
        folders = [root / args.suite]
        if not folders[0].is_dir():
            known = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
            try:
                known = sorted({*known, *registry_of(args).entries["suites"]})
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


def add_verify_results_parser(sub) -> None:
    q = sub.add_parser("verify-results", help="check every stored result's digest and consistency")
    q.add_argument("--suite", default=None, help="only this suite's results (default: all)")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    q.add_argument("--sign", action="store_true",
                   help="add a digest to unsigned results that pass the consistency checks (migration)")
    q.add_argument("--verbose", action="store_true", help="also list unsigned files")
    add_common(q)
    q.set_defaults(fn=cmd_verify_results)


def cmd_leaderboard(args) -> int:
    from ..analysis import aggregate
    from ..report import leaderboard

    r = registry_of(args)
    res = aggregate.load(r, args.suite, Path(args.results), args.protocol)  # to name excluded files (cheap next to the fits)
    for v in res.corrupt:
        print(f"warning: excluded {v.describe()} (`shiftbench run --suite {args.suite}` recomputes it)",
              file=sys.stderr)
    path = leaderboard.write(r, args.suite, Path(args.results), Path(args.out) if args.out else None,
                             protocol=args.protocol)
    print(f"wrote {path} ({leaderboard.integrity_text(res)})", file=sys.stderr)
    return 0


def add_leaderboard_parser(sub) -> None:
    q = sub.add_parser("leaderboard", help="regenerate leaderboard.md from results/")
    q.add_argument("--suite", default="digits")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    q.add_argument("--out", default=None, help="output markdown (default: ./leaderboard.md for digits)")
    add_protocol(q)
    add_common(q)
    q.set_defaults(fn=cmd_leaderboard)


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
    from ..analysis import tables, trends

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


def add_trends_parser(sub) -> None:
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


def cmd_analyze(args) -> int:
    from ..report import groups as report_groups

    ga = report_groups.build(registry_of(args), args.suite, Path(args.results), args.by, target=args.target,
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


def add_analyze_parser(sub) -> None:
    q = sub.add_parser("analyze", help="what beats the trend: models grouped by their metadata, mean AER per group")
    q.add_argument("--suite", required=True, help="the suite whose stored results to analyse")
    q.add_argument("--by", required=True, help="comma-separated metadata fields to group by: training_family, "
                   "extra_data, arch, size (parameter count, by decade), threat, eps, venue, year")
    q.add_argument("--target", choices=["OOD", "OOD-D", "OOD-T"], default="OOD", help="the trend's target (default OOD)")
    q.add_argument("--scale", choices=["raw", "probit"], default="raw", help="the trend's scale (default raw)")
    q.add_argument("--json", action="store_true", help="print exactly one JSON object")
    q.add_argument("--out", default=None, help="also write the plot (PNG): the groups coloured on the trend")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    add_common(q)
    q.set_defaults(fn=cmd_analyze)


def cmd_site(args) -> int:
    from ..report import site

    r = registry_of(args)
    if args.all == bool(args.suite):
        print("error: give exactly one of --suite S and --all", file=sys.stderr)
        return 2
    suites = sorted(r.entries["suites"]) if args.all else [args.suite]
    written = site.write(r, suites, Path(args.results), Path(args.out), skip_empty=args.all,
                         command="shiftbench site " + (f"--suite {args.suite}" if args.suite else "--all")
                         + " --out DIR", report=lambda msg: print(msg, file=sys.stderr))
    print(f"wrote {written}", file=sys.stderr)
    return 0


def add_site_parser(sub) -> None:
    q = sub.add_parser("site", help="write the static web leaderboard (opens from disk, no network)")
    q.add_argument("--suite", default=None, help="one suite")
    q.add_argument("--all", action="store_true", help="every suite with results")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--results", default=str(RESULTS_ROOT))
    add_common(q)
    q.set_defaults(fn=cmd_site)


def add_parsers(sub) -> None:
    """This family's commands, in the order `shiftbench --help` lists them."""
    add_verify_results_parser(sub)
    add_leaderboard_parser(sub)
    add_trends_parser(sub)
    add_analyze_parser(sub)
    add_site_parser(sub)
