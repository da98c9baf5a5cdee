"""What the trust checks cost beside the attack, and what they find, under two settings side by side.

On a slice of a suite (default: three digits models of three families; the ID cell, every
dataset shift and the Lp threat shifts) each batch of cells is attacked once, then checked once
per setting on the same attack outcomes (``evaluate.check_batch``, the evaluator's own path: the
deep checks on the batch's sample, then each cell's cheap checks and what they act on,
escalation included):

- ``old``: the deep checks of ``--old-ref`` (default: the last commit of harness version 4),
  read from git history: 64 clean-correct examples per batch, each re-attacked at eps/2 and by
  Square (500 queries) whether or not the attack had broken it;
- ``new``: this checkout's (:data:`trust.DEEP_SAMPLE` still-robust examples per one-cell batch,
  :data:`trust.SHIFT_SAMPLE` per dataset-shift batch; Square at :data:`trust.SQUARE_QUERIES`
  queries on the ID cell, :data:`trust.SHIFT_SQUARE_QUERIES` on the others); ``--variant`` adds
  others.

It prints, per model and kind of batch and in all, the CPU seconds (``time.process_time`` on one
thread: on a busy machine wall time is noise; every setting runs on the same batches, one after
the other) of the attack and of the checks under each setting, their ratio, and the findings:
examples the checks' attacks broke, examples the escalation broke, cells flagged and escalated,
robust examples stored.  ``--masked`` adds the suite's ``cnn-standard`` behind
``round(8x)/8 + 0.02 sin(500x)`` (tests/helpers.py: ``QuantisedSine``): gradients that point
nowhere, which the black-box check must catch and escalate on dataset-shift cells too; for it,
what Square breaks in the new sample at 50, 250 and 500 queries.  Then the power of the one-sided
binomial test at each sample size, and (when the suite's results are stored) the estimate for a
full run: the stored checks time of each kind of batch times its measured new/old ratio.

    PYTHONPATH=. .venv/bin/python perf/check_cost.py
    PYTHONPATH=. .venv/bin/python perf/check_cost.py --variant 32/16/500/500 --variant 32/16/250/250
    PYTHONPATH=. .venv/bin/python perf/check_cost.py --models '' --masked --shifts 'id,gaussian_noise,fonts' \
        --threats digits-linf
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OLD_REF = "29f5e2537ba942a6cb7e92f0a674c7b93c3dbb7f"  # harness version 4's deep checks
DEFAULT_MODELS = "cnn-pgd-0.10,lenet-standard,mlp-trades-6"
SQUARE_CURVE = (50, 250, 500)  # --masked: Square's budgets compared on the new sample


def old_trust(ref: str):
    """``benchmark/run/trust.py`` as it was at ``ref``, imported as a sibling of today's (its
    relative imports resolve to this checkout's attacks)."""
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:benchmark/run/trust.py"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"cannot read benchmark/run/trust.py at {ref} from git ({exc}); this script needs the "
                         "repository's history (a full clone), or pass --old-ref") from exc
    spec = importlib.util.spec_from_loader("benchmark.run._trust_old", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "benchmark.run"
    exec(compile(src, f"{ref[:10]}:benchmark/run/trust.py", "exec"), mod.__dict__)
    return mod


def findings(results) -> dict[str, int]:
    """What a setting's checks found in one batch: examples broken by the checks' attacks and by
    the escalation, cells whose deep checks failed, deep-check examples re-attacked."""
    f = defaultdict(int)
    for _, out in results:
        f["cells"] += 1
        f["broken by checks"] += sum(len(out.broken_by.get(k, [])) for k in ("eps/2-rerun", "square-check"))
        f["broken by escalation"] += len(out.broken_by.get("square-escalation", []))
        f["cells flagged"] += any(out.checks.get(k, {}).get("ok") is False for k in ("budget_monotone", "black_box"))
        f["black_box flagged"] += out.checks.get("black_box", {}).get("ok") is False
        f["escalated"] += out.escalation is not None
        f["robust"] += int(out.robust_correct.sum())
    return f


KINDS = {"shift": "dataset-shift batches", "one": "one-cell batches (ID, Lp threat shifts)"}
KEYS = ["broken by checks", "broken by escalation", "cells flagged", "escalated", "robust"]


def committed_timings(results_dir: Path) -> dict[str, dict[str, float]]:
    """Summed ``timing.attack_s`` / ``timing.checks_s`` of the stored results of Lp cells, by kind
    of batch, and of every other cell (no deep checks)."""
    import json

    out = {k: defaultdict(float) for k in (*KINDS, "other")}
    for f in sorted(results_dir.glob("*/*.json")):
        r = json.loads(f.read_text())
        kind = "other" if r.get("threat_kind") != "lp" else "shift" if r["role"] == "dataset" else "one"
        out[kind]["cells"] += 1
        for t in ("clean_s", "attack_s", "checks_s"):
            out[kind][t] += r["timing"][t]
        out[kind]["harness"] = r["harness"]
    return out


def main(argv: list[str] | None = None) -> int:
    import benchmark  # noqa: F401  (aliases pyautoattack as autoattack)
    from benchmark.models.load import load_model
    from benchmark.registry import Registry, default_registry_root
    from benchmark.run import plan, trust
    from benchmark.run.evaluate import attack_outcome, check_batch, prepare

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", default="digits")
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated model patterns ('' for none)")
    p.add_argument("--shifts", default=None, help="shift patterns (default: the ID data and every dataset shift)")
    p.add_argument("--threats", default=None,
                   help="threat patterns (default: the ID threat and the suite's Lp threat shifts)")
    p.add_argument("--masked", action="store_true",
                   help="add cnn-standard behind round(8x)/8 + 0.02 sin(500x) (its checks must flag and escalate)")
    p.add_argument("--variant", action="append", default=[], metavar="ONE/SHIFT/ID_QUERIES/OTHER_QUERIES",
                   help="another setting to measure beside the default, e.g. 32/16/500/500: still-robust examples "
                        "re-attacked per one-cell batch / per dataset-shift batch, Square queries on the ID cell / "
                        "on the other cells (repeatable)")
    p.add_argument("--old-ref", default=OLD_REF, help="git commit whose deep checks are the old setting")
    p.add_argument("--results", default=None,
                   help="stored results to estimate a full run from (default: results/<suite> when present)")
    p.add_argument("--registry", default=str(default_registry_root()))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    old = old_trust(a.old_ref)

    def old_deep(*args, sample=None, square_queries=None, bounds=None, **kw):  # 64 over the batch, 500 queries
        return old.deep_checks(*args, **kw)

    settings = {"old": (old_deep, {}), "new": (trust.deep_checks, {})}
    for v in a.variant:
        one, shift, id_q, other_q = (int(t) for t in v.split("/"))
        settings[v] = (trust.deep_checks, {"id": {"sample": one, "square_queries": id_q},
                                           "threat": {"sample": one, "square_queries": other_q},
                                           "dataset": {"sample": shift, "square_queries": other_q}})
    reg = Registry(a.registry)
    suite = reg.suite(a.suite)
    threats = a.threats or ",".join([suite.id_threat] + [t for t in suite.threat_shifts if reg.threat(t).kind == "lp"])
    runs = [(m.strip(), m.strip(), None) for m in a.models.split(",") if m.strip()]
    if a.masked:
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import QuantisedSine

        runs.append(("cnn-standard (masked)", "cnn-standard", QuantisedSine))
    # (row label, kind) -> cells, CPU seconds ("attack" and one per setting), findings per setting
    rows: dict[tuple[str, str], dict] = {}
    curve: list[tuple[str, int, list[int]]] = []  # masked model: Square's breaks in the sample by budget

    def row(label: str, kind: str) -> dict:
        return rows.setdefault((label, kind), {"cells": 0, "cpu": defaultdict(float),
                                               "found": {k: defaultdict(int) for k in settings}})

    for label, pattern, wrap in runs:
        cells = plan.plan_suite(reg, suite.id, models=pattern, shifts=a.shifts, threats=threats)
        models: dict[str, torch.nn.Module] = {}
        for batch in plan.batches(cells):
            if batch[0].threat.kind != "lp":
                continue
            mid = batch[0].model.id
            if mid not in models:
                m = load_model(reg.model(mid), reg).eval()
                models[mid] = wrap(m).eval() if wrap else m
            kind = "shift" if batch[0].role == "dataset" else "one"
            targets = [row(label, kind), row("all", kind), row(label, "all"), row("all", "all")]
            prepared = [prepare(c, models[mid]) for c in batch]
            x = torch.cat([q[1] for q in prepared])
            y = torch.cat([q[2] for q in prepared])
            c0 = time.process_time()
            out = attack_outcome(prepared[0][0], x, y, batch[0].threat, seed=batch[0].seed, checks=False)
            dt = {"attack": time.process_time() - c0}
            found = {}
            for name, (deep, args) in settings.items():
                c0 = time.process_time()
                res = check_batch(batch, prepared, x, y, out, deep=deep, **args.get(batch[0].role, {}))
                dt[name] = time.process_time() - c0
                found[name] = findings(res)
            if wrap is not None:  # what Square breaks in the new sample at other budgets
                from benchmark.attacks.autoattack import square

                robust = out.clean_correct & out.robust_correct
                ends = [0]
                for q in prepared:
                    ends.append(ends[-1] + len(q[2]))
                m = trust.SHIFT_SAMPLE if kind == "shift" else trust.DEEP_SAMPLE
                idx = trust.deep_sample(robust, m, batch[0].seed, list(zip(ends[:-1], ends[1:])))
                t = torch.from_numpy(idx)
                got = []
                for queries in SQUARE_CURVE:
                    xs = square(prepared[0][0], x[t], y[t], eps=batch[0].threat.eps, norm=batch[0].threat.norm,
                                queries=queries, seed=batch[0].seed)
                    with torch.no_grad():
                        got.append(int((prepared[0][0](xs).argmax(1) != y[t]).sum()))
                curve.append((f"{batch[0].data_name.rsplit('-', 1)[0]} x {batch[0].threat.id}", len(idx), got))
            for r in targets:
                r["cells"] += len(batch)
                for k, v in dt.items():
                    r["cpu"][k] += v
                for name in settings:
                    for k, v in found[name].items():
                        r["found"][name][k] += v
        r = rows.get((label, "all"))
        if r:
            print(f"{label}: {r['cells']} cells, attack {r['cpu']['attack']:.1f} s, checks "
                  + ", ".join(f"{k} {r['cpu'][k]:.1f} s" for k in settings), file=sys.stderr, flush=True)

    print(f"CPU seconds (one thread) and findings, suite {suite.id}: old = {a.old_ref[:10]} (64 clean-correct "
          f"examples per batch, Square {old.SQUARE_QUERIES} queries), new = {trust.DEEP_SAMPLE} still-robust "
          f"examples per one-cell batch, {trust.SHIFT_SAMPLE} per dataset-shift batch, Square "
          f"{trust.SQUARE_QUERIES} queries on the ID cell, {trust.SHIFT_SQUARE_QUERIES} on the others"
          + "".join(f"; {v} = {v.replace('/', ' / ')} (one-cell / shift examples, ID / other queries)"
                    for v in a.variant) + "\n")
    print("| model | batches of | cells | attack s | setting | checks s | old/this | checks/attack | "
          + " | ".join(KEYS) + " |")
    print("|---|---|---:|---:|---|" + "---:|" * (3 + len(KEYS)))
    single = len({label for label, _ in rows}) == 2  # one model: its rows are the totals
    order = sorted((k for k in rows if not (single and k[0] == "all")), key=lambda k: (k[0] == "all", k[1] == "all", k))
    for label, kind in order:
        r = rows[(label, kind)]
        cpu = r["cpu"]
        for name in settings:
            print(f"| {label} | {KINDS.get(kind, 'all')} | {r['cells']} | {cpu['attack']:.1f} | {name} | "
                  f"{cpu[name]:.1f} | {cpu['old'] / max(cpu[name], 1e-9):.2f}x | "
                  f"{cpu[name] / max(cpu['attack'], 1e-9):.2f} | "
                  + " | ".join(str(r["found"][name][k]) for k in KEYS) + " |")

    print("\nPower of the one-sided binomial test (flags when a check's attack breaks significantly more "
          f"than {trust.CHECK_RATE:.0%} of the m re-attacked examples, level {trust.ALPHA}): P(flag) when it "
          "breaks each with probability p")
    ps = (0.05, 0.1, 0.2, 0.3, 0.5)
    print("| m | flags at | " + " | ".join(f"p={q}" for q in ps) + " |")
    print("|---:|---:|" + "---:|" * len(ps))
    for m in sorted({8, trust.SHIFT_SAMPLE, trust.DEEP_SAMPLE, 64}):
        print(f"| {m} | {trust.flags_at(m)} | " + " | ".join(f"{trust.power(m, q):.2f}" for q in ps) + " |")

    if curve:
        print(f"\nSquare on the new sample of each batch of the masked model, examples broken (all robust "
              "against the gradient attack), by queries per example")
        print("| batch | sample | " + " | ".join(f"{q} queries" for q in SQUARE_CURVE) + " |")
        print("|---|---:|" + "---:|" * len(SQUARE_CURVE))
        for name, m, got in curve:
            print(f"| {name} | {m} | " + " | ".join(map(str, got)) + " |")

    stored = Path(a.results) if a.results else ROOT / "results" / suite.id
    if stored.is_dir() and not a.masked and all(("all", k) in rows for k in KINDS):
        t = committed_timings(stored)
        ratio = {k: rows[("all", k)]["cpu"]["new"] / max(rows[("all", k)]["cpu"]["old"], 1e-9) for k in KINDS}
        old_checks = sum(t[k]["checks_s"] for k in KINDS)
        new_checks = sum(t[k]["checks_s"] * ratio[k] for k in KINDS)
        rest = sum(t[k][s] for k in t for s in ("clean_s", "attack_s")) + t["other"]["checks_s"]
        print(f"\nEstimate for the stored run in {stored} (harness {t['shift'].get('harness')}, "
              f"{sum(int(t[k]['cells']) for k in t)} cells; timings as stored, i.e. wall seconds per cell): "
              f"deep-checked cells' checks {old_checks:.0f} s -> {new_checks:.0f} s "
              f"(dataset-shift {t['shift']['checks_s']:.0f} x {ratio['shift']:.2f}, one-cell "
              f"{t['one']['checks_s']:.0f} x {ratio['one']:.2f}: {old_checks / max(new_checks, 1e-9):.2f}x); "
              f"attack + clean + other checks {rest:.0f} s; all {rest + old_checks:.0f} s -> {rest + new_checks:.0f} s "
              f"({(rest + new_checks) / (rest + old_checks):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
