"""The lean and the reference design of the dataset-shift cells, side by side on the digits zoo.

Three versions of the digits suite's dataset-shift cells, each beside the same stored ID and
threat-shift cells (``results/digits``):

* **full, seed 0**: the stored results (the reference design: 100 fixed test images under every
  shift at every severity), read, not recomputed;
* **full, seed 1**: the same design on another image subset (and other corruption and attack
  draws), made by ``shiftbench run --suite digits --protocol reference --seed 1 --shifts <the
  dataset shifts> --results FULL1``: how far two full designs disagree from sampling alone;
* **lean**: ``shiftbench run --suite digits --protocol lean --results LEAN`` (the fonts cells,
  the same under both protocols, are read from the stored results).

Per model: OOD-D under each with its 95% interval width, lean minus full, whether the lean OOD-D
lies within the full one's interval, and the AER (against the OOD-D trend) with its interval;
then Kendall's tau of the OOD and OOD-D rankings, the trend slopes, per-shift interval widths
and the dataset cells' cost.  The targets: every lean OOD-D within its full interval, and
tau(lean, full) at least tau(full seed 1, full seed 0).

    PYTHONPATH=. .venv/bin/python perf/design_comparison.py --full-other FULL1 --lean LEAN
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau


def design(registry, protocol: str, seed: int, folders: list[Path], stored: Path, models: str | None = None,
           partial: bool = False):
    """Summary and board of the digits suite with its dataset cells under ``protocol``/``seed``
    read from ``folders`` (then the stored results), its other cells from the stored results.
    ``partial``: models with a missing cell are left out (and named) instead of stopping."""
    from benchmark.analysis import aggregate
    from benchmark.report.leaderboard import analyse
    from benchmark.run.plan import plan_suite

    suite = registry.suite("digits")
    cells = [c for c in plan_suite(registry, "digits", protocol="reference", models=models) if c.role != "dataset"]
    cells += [c for c in plan_suite(registry, "digits", protocol=protocol, seed=seed, models=models)
              if c.role == "dataset"]
    res = aggregate.from_files(suite, cells, [*folders, stored], protocol)
    missing = int((~res.planned["present"]).sum())
    if missing and partial:
        gone = sorted(set(res.planned.loc[~res.planned["present"], "model"]))
        print(f"(the {protocol} design, seed {seed}: left out {len(gone)} model(s) with cells still missing: "
              f"{', '.join(gone)})\n")
        return design(registry, protocol, seed, folders, stored,
                      ",".join(sorted(set(res.planned["model"]) - set(gone))))
    if missing:
        raise SystemExit(f"{missing} of {len(cells)} cells of the {protocol} design (seed {seed}) have no result in "
                         f"{', '.join(map(str, [*folders, stored]))}; run them first (see this script's docstring)")
    summ = aggregate.summarize(registry, res)
    return res, summ, analyse(registry, res, summ)


def cost(res, models: list[str]) -> tuple[int, float]:
    """Attacked images (clean-correct) and seconds (attack + checks) of the dataset cells per model."""
    d = res.cells[(res.cells["role"] == "dataset") & res.cells["model"].isin(models)]
    seconds = 0.0
    for p in d["path"]:
        t = json.loads(Path(p).read_text())["timing"]
        seconds += t["attack_s"] + t["checks_s"] + t["clean_s"]
    models = d["model"].nunique()
    return int(sum(int(c.sum()) for c in d["clean_correct"])) // models, seconds / models


def main(argv: list[str] | None = None) -> int:
    from benchmark.registry import Registry

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stored", default="results/digits", help="the stored digits results (full design, seed 0)")
    p.add_argument("--full-other", required=True, help="results folder (suite folder inside) of the full design, seed 1")
    p.add_argument("--lean", required=True, help="results folder (suite folder inside) of the lean design")
    p.add_argument("--other-seed", type=int, default=1)
    p.add_argument("--models", default=None, help="patterns over the zoo (default: the whole zoo)")
    p.add_argument("--cost-models", default=None,
                   help="patterns over the models whose cells' seconds are compared (default: all; leave out "
                        "models whose two runs did not run side by side)")
    a = p.parse_args(argv)
    r = Registry()
    stored = Path(a.stored)
    runs = {"full": design(r, "reference", 0, [], stored, a.models),
            "full-s1": design(r, "reference", a.other_seed, [Path(a.full_other) / "digits"], stored, a.models,
                              partial=True),
            "lean": design(r, "lean", 0, [Path(a.lean) / "digits"], stored, a.models)}
    models = sorted(runs["full"][1].models.index)
    both = sorted(runs["full-s1"][1].models.index)  # the models the second full design has
    m = {k: v[1].models.loc[models if k != "full-s1" else both] for k, v in runs.items()}
    aer = {k: v[2].fits["OOD-D"] for k, v in runs.items()}
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    print(f"# Full vs lean dataset-shift design on the digits zoo ({len(models)} models)\n")
    print("OOD-D robust accuracy (%) with its 95% interval width (pp); AER against the OOD-D trend (raw scale, pp) "
          "with its 95% interval (test examples within cells and models resampled).\n")
    print("| model | OOD-D full [95%] | width | full seed 1 | width | lean | width | lean - full | within | "
          "AER full [95%] | AER lean [95%] |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|:-:|---:|---:|")
    within = 0
    for name in models:
        f, ln = m["full"].loc[name], m["lean"].loc[name]
        f1 = m["full-s1"].loc[name] if name in both else None
        inside = f["ood_d_robust_lo"] <= ln["ood_d_robust"] <= f["ood_d_robust_hi"]
        within += inside
        cols = [f"{pct(f['ood_d_robust'])} [{pct(f['ood_d_robust_lo'])}, {pct(f['ood_d_robust_hi'])}]"]
        for row in (f, f1, ln):
            if row is None:
                cols += ["-", "-"]
                continue
            if row is not f:
                cols.append(pct(row["ood_d_robust"]))
            cols.append(pct(row["ood_d_robust_hi"] - row["ood_d_robust_lo"]))
        cols += [f"{100 * (ln['ood_d_robust'] - f['ood_d_robust']):+.1f}", "yes" if inside else "**no**"]
        for k in ("full", "lean"):
            v, lo, hi = aer[k].aer_of(name)
            cols.append(f"{100 * v:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
        print(f"| {name} | " + " | ".join(cols) + " |")
    widths = {k: 100 * (m[k]["ood_d_robust_hi"] - m[k]["ood_d_robust_lo"]) for k in m}
    print(f"\nmedian OOD-D interval width (pp): full {widths['full'].median():.1f}, full seed 1 "
          f"{widths['full-s1'].median():.1f}, lean {widths['lean'].median():.1f}")
    aer_w = {k: np.median(100 * (aer[k].aer_ci[:, 1] - aer[k].aer_ci[:, 0])) for k in aer}
    print(f"median AER (OOD-D) interval width (pp): full {aer_w['full']:.1f}, full seed 1 {aer_w['full-s1']:.1f}, "
          f"lean {aer_w['lean']:.1f}")
    print(f"\ntarget 1: lean OOD-D within the full design's 95% interval: {within} of {len(models)} models")
    print(f"\nKendall's tau between rankings, on the {len(both)} models the second full design has:\n")
    print("| ranking by | lean vs full | full seed 1 vs full | lean vs full seed 1 |")
    print("|---|---:|---:|---:|")
    taus = {}
    for col, label in (("ood_robust", "OOD (the board's ranking)"), ("ood_d_robust", "OOD-D")):
        t = {pair: kendalltau(m[pair[0]].loc[both, col], m[pair[1]].loc[both, col]).statistic
             for pair in (("lean", "full"), ("full-s1", "full"), ("lean", "full-s1"))}
        taus[col] = t
        print(f"| {label} | {t[('lean', 'full')]:.3f} | {t[('full-s1', 'full')]:.3f} | {t[('lean', 'full-s1')]:.3f} |")
    ok = all(t[("lean", "full")] >= t[("full-s1", "full")] for t in taus.values())
    print(f"\ntarget 2: tau(lean, full) >= tau(full seed 1, full) on both rankings: {'met' if ok else 'NOT met'}")
    print(f"\nTrend slopes (raw scale, 95% bootstrap interval; full seed 1 on its {len(both)} models):\n")
    print("| target | full | full seed 1 | lean |")
    print("|---|---:|---:|---:|")
    for target in ("OOD-D", "OOD"):
        cols = []
        for k in ("full", "full-s1", "lean"):
            fit = runs[k][2].fits[target]
            cols.append(f"{fit.line.slope:.3f} [{fit.slope_ci[0]:.3f}, {fit.slope_ci[1]:.3f}]")
        print(f"| {target} | " + " | ".join(cols) + " |")
    print("\nPer-shift pictures: median over models and shifts of a shift's robust-accuracy interval width (pp), "
          "and images per shift:\n")
    for k in ("full", "full-s1", "lean"):
        ps = runs[k][1].per_shift
        ps = ps[ps["kind"] == "dataset"]
        res = runs[k][0]
        d = res.cells[res.cells["role"] == "dataset"]
        n = sorted({int(v) for v in d["n"]})
        print(f"- {k}: {100 * (ps['robust_hi'] - ps['robust_lo']).median():.1f} pp; images per shift "
              f"{n[0]}-{n[-1]} (each at every severity)")
    print("\nCost of the dataset-shift cells per model (clean-correct images attacked; seconds of the cells' "
          "attack, checks and clean pass as their results record them):\n")
    import fnmatch

    priced = [n for n in models if not a.cost_models
              or any(fnmatch.fnmatchcase(n, q.strip()) for q in a.cost_models.split(","))]
    spent = {}
    for k in ("full", "full-s1", "lean"):
        images, spent[k] = cost(runs[k][0], priced)
        print(f"- {k}: {images:,} images, {spent[k]:.1f} s")
    print(f"- lean / full seed 1 seconds ({len(priced)} models: {', '.join(priced)}): "
          f"{spent['lean'] / spent['full-s1']:.2f}")
    print("\n(full: computed with the stored results; full seed 1 and lean: computed side by side on one machine, "
          "so their seconds compare with each other, not with full's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
