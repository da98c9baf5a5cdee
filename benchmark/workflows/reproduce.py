"""Reproduce the leaderboard: re-run stored cells into a scratch folder and compare them with the
stored results example by example.

    shiftbench reproduce [--suite S] [--models PAT] [--shifts PAT] [--threats PAT] [--sample K]
                         [--seed N] [--json] [--update]

Stored results are never touched unless ``--update`` asks for it.  A stored file whose key is no
longer in the suite's plan (its entry, weights, settings or the harness changed) is *stale*: it is
reported as such and not compared, since recomputing it would answer a different question.
"""
from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis.stats import discordant, mcnemar_exact
from ..registry import Registry, filter_ids
from ..run import plan as planner
from ..run import store
from ..run.evaluate import run_grid

from .rules import REPRODUCE_ALPHA as ALPHA, TOLERANCE_RULE, flip_cap, mcnemar_alpha  # noqa: F401  (API)


def judge(stored: dict[str, Any], recomputed: dict[str, Any]) -> dict[str, Any]:
    """Compare two results of one cell: flips per direction, McNemar p-values and the status
    (``exact``, ``within`` tolerance, ``differs``)."""
    n = int(stored["n"])
    out: dict[str, Any] = {"n": n}
    status = "exact"
    if int(recomputed["n"]) != n:
        return {**out, "status": "differs", "reason": f"n {n} stored, {recomputed['n']} recomputed"}
    for kind in ("clean", "robust"):
        a, b = store.unbits(stored[f"{kind}_correct"]), store.unbits(recomputed[f"{kind}_correct"])
        lost, gained = discordant(a, b)
        p = mcnemar_exact(lost, gained)
        out.update({f"{kind}_lost": lost, f"{kind}_gained": gained, f"{kind}_p": p,
                    f"{kind}_acc_stored": float(a.mean()) if n else float("nan"),
                    f"{kind}_acc_now": float(b.mean()) if n else float("nan")})
        if lost + gained > flip_cap(n, stored.get("threat_kind")) or p < mcnemar_alpha(stored.get("threat_kind")):
            status = "differs"
        elif lost + gained and status == "exact":
            status = "within"
    out["d_robust_acc"] = out["robust_acc_now"] - out["robust_acc_stored"]
    out["status"] = status
    return out


@dataclass
class ReproduceResult:
    """What ``reproduce`` found: one row per compared cell, plus what it could not compare."""

    suite: str
    cells: pd.DataFrame  # model, data, threat, key, n, status, flips per direction, p-values, accuracies
    stale: list[Path] = field(default_factory=list)  # stored files of the selected models no longer planned
    missing: int = 0  # selected planned cells without a stored result
    updated: list[Path] = field(default_factory=list)  # stored files rewritten (``update=True`` only)
    rule: str = TOLERANCE_RULE

    @property
    def counts(self) -> dict[str, int]:
        s = self.cells["status"] if len(self.cells) else pd.Series(dtype=str)
        return {k: int((s == k).sum()) for k in ("exact", "within", "differs")}

    @property
    def ok(self) -> bool:
        """Every compared cell exact or within tolerance (and at least one compared)."""
        return len(self.cells) > 0 and self.counts["differs"] == 0

    def markdown(self) -> str:
        c = self.counts
        lines = [f"Reproduced {len(self.cells)} stored cell(s) of suite `{self.suite}`: {c['exact']} exactly, "
                 f"{c['within']} within tolerance, {c['differs']} differing; {len(self.stale)} stale result file(s) "
                 f"not compared, {self.missing} planned cell(s) without a stored result.", "",
                 "| Cells | Count |", "| :--- | ---: |", f"| reproduced exactly | {c['exact']} |",
                 f"| within tolerance | {c['within']} |", f"| differing | {c['differs']} |",
                 f"| stale (not compared) | {len(self.stale)} |", f"| no stored result | {self.missing} |", ""]
        shown = self.cells[self.cells["status"] != "exact"] if len(self.cells) else self.cells
        if len(shown):
            lines += ["| Model | Data | Threat | n | Robust flips (lost / gained) | Clean flips (lost / gained) "
                      "| Robust acc stored -> now | Change (pp) | McNemar p | Status |",
                      "| :--- | :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: | :--- |"]
            for r in shown.itertuples():
                lines.append(f"| {r.model} | {r.data} | {r.threat} | {r.n} | {r.robust_lost} / {r.robust_gained} | "
                             f"{r.clean_lost} / {r.clean_gained} | {100 * r.robust_acc_stored:.1f} -> "
                             f"{100 * r.robust_acc_now:.1f} | {100 * r.d_robust_acc:+.2f} | {r.robust_p:.3g} | "
                             f"{r.status} |")
            lines.append("")
        if self.updated:
            lines += [f"Updated {len(self.updated)} stored result(s) with the recomputed ones.", ""]
        lines.append("Rule: " + self.rule)
        return "\n".join(lines) + "\n"


def _stale_files(registry: Registry, suite_id: str, results_dir: Path, models: list[str]) -> list[Path]:
    """Stored files of ``models`` whose key is not in the suite's current plan."""
    keys = {c.key for c in planner.plan_suite(registry, suite_id, models=",".join(models))} if models else set()
    out = []
    for m in models:
        for path in sorted((results_dir / m).glob("*.json")) if (results_dir / m).is_dir() else []:
            if not path.name.startswith(".tmp-") and path.name[:-5].rsplit("__", 1)[-1] not in keys:
                out.append(path)
    return out


def reproduce(registry: Registry, suite: str = "digits", results: str | Path = "results", *,
              models: str | None = None, shifts: str | None = None, threats: str | None = None,
              sample: int | None = None, seed: int = 0, update: bool = False, workers: int = 1,
              progress: bool = False, data_dir: str | Path | None = None, model_dir: str | Path | None = None,
              scratch: str | Path | None = None) -> ReproduceResult:
    """Re-run the selected stored cells (all matching the filters, or a seeded random sample of
    ``sample`` of them) in a scratch folder and compare each with its stored result.

    Cells run by :attr:`plan.Cell.batch` as in ``shiftbench run`` (the other severities of a
    shift are recomputed with a sampled one, so the numbers are the same), but only the selected
    cells are compared.  ``update`` rewrites the stored result of every compared cell that was not
    reproduced exactly.  ``scratch``: where to recompute (default: a temporary folder, removed).
    """
    results_dir = Path(results) / suite
    cells = planner.plan_suite(registry, suite, models=models, shifts=shifts, threats=threats)
    if not cells:
        raise ValueError(f"no cells of suite {suite} match models={models}, shifts={shifts}, threats={threats}")
    stored: dict[str, dict[str, Any]] = {}
    present, missing = [], 0
    for c in cells:
        path = results_dir / c.filename
        if not path.is_file():
            missing += 1
            continue
        payload = store.read_json(path)
        if payload.get("key") != c.key:  # renamed or hand-edited: not this cell's result
            missing += 1
            continue
        stored[c.key] = payload
        present.append(c)
    selected_models = [m.id for m in filter_ids(registry.suite_models(registry.suite(suite)), models)]
    stale = _stale_files(registry, suite, results_dir, selected_models)
    if sample is not None:
        if sample <= 0:
            raise ValueError(f"--sample must be positive, got {sample}")
        rng = random.Random(seed)
        picked = set(rng.sample(range(len(present)), min(sample, len(present))))
        present = [c for i, c in enumerate(present) if i in picked]
    rows: list[dict[str, Any]] = []
    updated: list[Path] = []
    if present:
        own = scratch is None
        work = Path(tempfile.mkdtemp(prefix="shiftbench-reproduce-")) if own else Path(scratch)
        try:
            run_grid(present, registry, work / suite, data_dir=data_dir, model_dir=model_dir, workers=workers,
                     progress=progress)
            for c in present:
                row = {"model": c.model.id, "data": c.data_name, "threat": c.threat.id, "key": c.key}
                if not (work / suite / c.filename).is_file():  # the re-run failed (its error was printed)
                    rows.append({**row, "n": c.n, "status": "differs", "reason": "the re-run failed"})
                    continue
                new = store.read_json(work / suite / c.filename)
                row.update(judge(stored[c.key], new))
                rows.append(row)
                if update and row["status"] != "exact":
                    store.write_json_atomic(results_dir / c.filename, new)
                    updated.append(results_dir / c.filename)
        finally:
            if own:
                shutil.rmtree(work, ignore_errors=True)
    columns = ["model", "data", "threat", "key", "n", "status", "robust_lost", "robust_gained", "robust_p",
               "clean_lost", "clean_gained", "clean_p", "robust_acc_stored", "robust_acc_now", "d_robust_acc",
               "clean_acc_stored", "clean_acc_now"]
    return ReproduceResult(suite, pd.DataFrame(rows, columns=columns), stale, missing, updated)


def to_json(result: ReproduceResult) -> str:
    """``--json``: the counts, the rule and one object per compared cell."""
    return json.dumps({"suite": result.suite, "counts": result.counts, "ok": result.ok,
                       "stale": [str(p) for p in result.stale], "missing": result.missing,
                       "updated": [str(p) for p in result.updated], "rule": result.rule,
                       "cells": result.cells.to_dict("records")}, indent=1, default=str)
