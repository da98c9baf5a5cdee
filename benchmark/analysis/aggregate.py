"""Aggregate: a suite's result files -> one table row per cell -> one summary row per model.

Only results whose key is in the suite's *current* plan count: a file left over from older
weights, settings or harness versions has a key the plan no longer produces and is ignored
(and counted as stale).  Planned cells without a file are counted as missing.  Every planned
cell's file is verified (:func:`benchmark.run.store.check_result`): a corrupt one (truncated,
edited after it was written, numbers contradicting its per-example outcomes) is excluded, listed
in ``corrupt`` with its path and the reason, and counts as missing, so `shiftbench run` recomputes
it; results without a digest (written before digests existed) count, as ``unsigned``.  Reading is
driven by file names (the key is the last ``__`` part), so stale files are never parsed.

Summary per model (accuracies are fractions; each has ``_lo``/``_hi`` 95% bounds):

* ``id_clean``, ``id_robust``: the ID cell; Wilson intervals from the per-example bits.
* per dataset shift: mean over its severities (clean and robust);
  ``ood_d_clean``/``ood_d_robust``: mean over dataset shifts;
* per threat shift: robust accuracy; ``ood_t_robust``: mean over threat shifts;
* ``ood_t_ref_robust`` (:data:`REFERENCE_METRIC`), only when the suite has threat shifts marked
  ``reference_set: true``: mean over those alone, OODRobustBench's OOD-T; a model missing any of
  them gets NaN (a mean over part of the six is not the reference's number) and a flag naming them;
* ``ood_robust``: mean of OOD-D robust and OOD-T robust (the one present when the suite has
  only one kind of shift);
* ``reference_checks``: the ID cell against the entry's published (or claimed) clean and robust
  accuracy (:mod:`benchmark.analysis.published`); a failed check is the first of the model's flags.
Means over cells get the paired normal-approximation interval of
:func:`benchmark.analysis.stats.weighted_mean_interval`.

A suite's results are read under one protocol (the suite's, or ``protocol``): the plan of a
protocol holds only its own dataset-shift cells (a lean cell's key covers its design), so a lean
and a reference cell never meet in one mean; the other protocol's files are counted apart
(``other_protocol``), neither stale nor used.  A lean cell's row carries the test images it
holds (``images``), which its intervals follow.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..run import plan as planner
from ..run import store
from ..registry import Registry, SuiteSpec
from . import published
from .stats import bootstrap_weighted_means, weighted_mean_interval, wilson

METRICS = ("id_clean", "id_robust", "ood_d_clean", "ood_d_robust", "ood_t_robust", "ood_robust")
REFERENCE_METRIC = "ood_t_ref_robust"  # OOD-T over the reference set; a column only where the suite has one
CELL_COLUMNS = ("key", "model", "role", "data", "shift", "severity", "threat", "attack", "n", "clean_acc",
                "robust_acc", "clean_correct", "robust_correct", "failed_checks", "path", "versions", "checks", "images",
                "escalated")


@dataclass
class SuiteResults:
    """The present, current cells of a suite plus what is missing or stale."""

    suite: SuiteSpec
    cells: pd.DataFrame  # one row per planned cell with a result file (CELL_COLUMNS)
    planned: pd.DataFrame  # one row per planned cell: key, model, role, data, shift, severity, threat, present
    stale: list[Path] = field(default_factory=list)  # result files whose key is not in the plan
    corrupt: list[store.Verdict] = field(default_factory=list)  # planned cells whose file failed verification
    n_verified: int = 0  # present cells whose digest matched
    n_unsigned: int = 0  # present cells without a digest (written before digests; still checked for consistency)
    protocol: str = "reference"  # the design of the dataset-shift cells read (benchmark/run/design.py)
    other_protocol: list[Path] = field(default_factory=list)  # files of the other protocol's cells: not used

    @property
    def n_planned(self) -> int:
        return len(self.planned)

    @property
    def n_present(self) -> int:
        return len(self.cells)

    @property
    def n_missing(self) -> int:
        return int((~self.planned["present"]).sum()) if len(self.planned) else 0

    @property
    def n_stale(self) -> int:
        return len(self.stale)

    @property
    def n_corrupt(self) -> int:
        return len(self.corrupt)


def _scan(folder: Path) -> dict[str, list[Path]]:
    """Result files under ``folder`` grouped by the key in their name (os.scandir is fast)."""
    found: dict[str, list[Path]] = {}
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except FileNotFoundError:
            continue
        for e in entries:
            if e.is_dir():
                stack.append(Path(e.path))
            elif e.name.endswith(".json") and not e.name.startswith(".tmp-"):
                found.setdefault(store.key_of_name(e.name), []).append(Path(e.path))
    return found


def _failed_checks(checks: Any) -> tuple[str, ...]:
    """``name (detail=value, ...)`` for every check whose ``ok`` is false."""
    out = []
    for name, val in sorted((checks or {}).items()):
        if isinstance(val, dict) and val.get("ok") is False:
            detail = ", ".join(f"{k}={v}" for k, v in sorted(val.items()) if k != "ok")
            out.append(f"{name} ({detail})" if detail else name)
    return tuple(out)


def _row(path: Path, payload: dict[str, Any], planned: dict[str, Any]) -> dict[str, Any]:
    """A table row: identity from the plan (the key matched), numbers from the file."""
    try:
        n = int(payload["n"])
        clean = store.unbits(payload["clean_correct"])
        robust = store.unbits(payload["robust_correct"])
        row = {c: planned[c] for c in ("key", "model", "role", "data", "shift", "severity", "threat")}
        row["attack"] = str(payload["attack"])
        design = payload.get("design")
        images = None if design is None else np.asarray(design["images"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a shiftbench result ({exc!r}); delete it and re-run `shiftbench run`") from None
    if (design is not None) != planned["lean"] or (images is not None and images.size != n):
        raise ValueError(f"{path}: key 'design' says {'lean' if design else 'reference'} protocol"
                         f"{'' if images is None else f' over {images.size} images'} for a "
                         f"{'lean' if planned['lean'] else 'reference'} cell of {n} outcomes; "
                         "delete the file and re-run `shiftbench run`")
    if clean.size != n or robust.size != n:
        raise ValueError(f"{path}: key 'clean_correct'/'robust_correct' hold {clean.size}/{robust.size} outcomes, "
                         f"'n' says {n}; delete the file and re-run `shiftbench run`")
    row.update(n=n, clean_acc=float(clean.mean()) if n else float("nan"),
               robust_acc=float(robust.mean()) if n else float("nan"), clean_correct=clean,
               robust_correct=robust, failed_checks=_failed_checks(payload.get("checks")), path=str(path),
               versions=tuple(sorted((str(k), str(v)) for k, v in (payload.get("versions") or {}).items())),
               checks=tuple(sorted(payload.get("checks") or {})), images=images,
               escalated=tuple((payload.get("escalation") or {}).get("reasons") or ()))
    return row


def load(registry: Registry, suite_id: str, results_root: Path, protocol: str | None = None) -> SuiteResults:
    """Read ``results_root/<suite>/`` against the suite's current plan under ``protocol``
    (default: the suite's)."""
    suite = registry.suite(suite_id)
    protocol = protocol or suite.protocol
    cells = planner.plan_suite(registry, suite_id, protocol=protocol)
    folder = Path(results_root) / suite_id
    files = _scan(folder)
    # Cell.key hashes the whole spec: compute it once per cell (via the file name)
    names = [c.filename for c in cells]
    keys = [store.key_of_name(n) for n in names]
    planned_keys = set(keys)
    other = set()
    if any(k not in planned_keys for k in files):  # the other protocol's files are not stale
        other = {c.key for c in planner.plan_suite(registry, suite_id, protocol=planner.OTHER_PROTOCOL[protocol])} - planned_keys
    stale = sorted(p for k, ps in files.items() if k not in planned_keys and k not in other for p in ps)
    rows, plan_rows = [], []
    corrupt: list[store.Verdict] = []
    counted = {store.VERIFIED: 0, store.UNSIGNED: 0}
    for c, name, key in zip(cells, names, keys):
        expected = folder / name
        found = sorted(files.get(key, []))
        path = expected if expected in found else (found[0] if found else None)
        plan_rows.append(_plan_row(c, key, path is not None))
        if path is None:
            continue
        verdict = store.check_result(path, expected_key=key)
        if not verdict.ok:  # truncated, edited, self-contradicting: excluded, reported, recomputed by `run`
            corrupt.append(verdict)
            plan_rows[-1]["present"] = False
            continue
        counted[verdict.status] += 1
        rows.append(_row(path, verdict.payload, plan_rows[-1]))
    return SuiteResults(suite, pd.DataFrame(rows, columns=list(CELL_COLUMNS)),
                        pd.DataFrame(plan_rows, columns=["key", "model", "role", "data", "shift", "severity",
                                                         "threat", "present", "lean"]), sorted(stale), corrupt,
                        counted[store.VERIFIED], counted[store.UNSIGNED], protocol,
                        sorted(p for k in other for p in files.get(k, [])))



def _plan_row(c: planner.Cell, key: str, present: bool) -> dict[str, Any]:
    return {"key": key, "model": c.model.id, "role": c.role, "data": c.data_name, "shift": c.shift_id,
            "severity": c.severity, "threat": c.threat.id, "present": present, "lean": c.design is not None}


def from_files(suite: SuiteSpec, cells: list[planner.Cell], folders: list[Path], protocol: str) -> SuiteResults:
    """``cells`` read from the first of ``folders`` (each a suite's results folder) that holds
    each, verified as :func:`load` does: a grid assembled from several runs (perf/design_comparison.py
    sets designs computed into separate folders beside the stored ID and threat cells)."""
    rows, plan_rows = [], []
    for c in cells:
        path = next((Path(f) / c.filename for f in folders if (Path(f) / c.filename).is_file()), None)
        plan_rows.append(_plan_row(c, c.key, path is not None))
        if path is None:
            continue
        verdict = store.check_result(path, expected_key=c.key)
        if not verdict.ok:
            raise ValueError(f"{verdict.describe()}: delete it and re-run `shiftbench run`")
        rows.append(_row(path, verdict.payload, plan_rows[-1]))
    return SuiteResults(suite, pd.DataFrame(rows, columns=list(CELL_COLUMNS)), pd.DataFrame(plan_rows),
                        n_verified=len(rows), protocol=protocol)


# --------------------------------------------------------------------------- summary
def _mean(rows: list[dict[str, Any]], weights: list[float], col: str) -> tuple[float, float, float]:
    return weighted_mean_interval([r[col] for r in rows], weights, images=[_images(r) for r in rows])


def _images(row: dict[str, Any]) -> np.ndarray | None:
    """A lean cell's test images (None for a reference cell, whose outcomes pair by index)."""
    im = row.get("images")
    return im if isinstance(im, np.ndarray) else None


def _id_metric(row: dict[str, Any] | None, col: str) -> tuple[float, float, float]:
    if row is None:
        return (float("nan"),) * 3
    bits = row[col]
    lo, hi = wilson(int(bits.sum()), int(bits.size))
    return (float(bits.mean()) if bits.size else float("nan"), lo, hi)


def _flags(rows: list[dict[str, Any]], n_missing: int, n_planned: int,
           reference_missing: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Human-readable reasons to distrust a model's numbers.  A failed ``convergence`` check whose
    cell was escalated to the stronger run is not one (the cell stores what the stronger run finds:
    the attack stopped short, not the model; the board counts those cells per threat instead)."""
    by_check: dict[str, list[str]] = {}
    for r in rows:
        for f in r["failed_checks"]:
            name = f.split(" ", 1)[0]
            if name == "convergence" and "convergence" in r.get("escalated", ()):
                continue
            by_check.setdefault(name, []).append(f"{r['data']} x {r['threat']}: {f}")
    out = [f"trust check '{name}' failed in {len(w)} cell(s), e.g. {w[0]}" for name, w in sorted(by_check.items())]
    if n_missing:
        out.append(f"incomplete: {n_missing} of {n_planned} cells missing; not ranked, its means use the cells present")
    if reference_missing:
        out.append(f"no OOD-T (reference set): missing {', '.join(reference_missing)}")
    return tuple(out)


_COLUMN = {"id_clean": "clean_correct", "id_robust": "robust_correct", "ood_d_clean": "clean_correct",
           "ood_d_robust": "robust_correct", "ood_t_robust": "robust_correct", "ood_robust": "robust_correct",
           REFERENCE_METRIC: "robust_correct"}


def reference_threats(registry: Registry, suite: SuiteSpec) -> tuple[str, ...]:
    """The suite's threat shifts marked ``reference_set: true`` (OODRobustBench's six), in suite order."""
    return tuple(t for t in suite.threat_shifts if registry.threat(t).reference_set)


def _equal(rows: list[dict[str, Any]]) -> list[float]:
    """Equal weights summing to 1 (none for no rows)."""
    return [1.0 / len(rows)] * len(rows) if rows else []


def metric_parts(rows: list[dict[str, Any]], suite: SuiteSpec, reference: tuple[str, ...] = (),
                 ) -> dict[str, tuple[list[dict[str, Any]], list[float]]]:
    """metric -> (cells, weights summing to 1) whose weighted mean of outcomes is that metric.

    The aggregation order: severities averaged within a dataset shift, then dataset shifts
    averaged (OOD-D); threat shifts averaged (OOD-T); OOD the mean of the two (or the one present).
    With ``reference`` (:func:`reference_threats`) also :data:`REFERENCE_METRIC`: the threat
    shifts in it averaged, nothing (NaN) unless every one of them has a cell.
    """
    id_rows = [r for r in rows if r["role"] == "id"][:1]
    groups = [[r for r in rows if r["role"] == "dataset" and r["shift"] == s] for s in suite.dataset_shifts]
    groups = [g for g in groups if g]
    d_rows = [r for g in groups for r in g]
    d_w = [1.0 / len(g) / len(groups) for g in groups for _ in g]
    t_rows = [r for t in suite.threat_shifts for r in rows if r["role"] == "threat" and r["threat"] == t]
    t_w = _equal(t_rows)
    both = [p for p in ((d_rows, d_w), (t_rows, t_w)) if p[0]]
    o_rows = [r for p in both for r in p[0]]
    o_w = [w / len(both) for p in both for w in p[1]]
    parts = {"id_clean": (id_rows, [1.0] * len(id_rows)), "id_robust": (id_rows, [1.0] * len(id_rows)),
             "ood_d_clean": (d_rows, d_w), "ood_d_robust": (d_rows, d_w), "ood_t_robust": (t_rows, t_w),
             "ood_robust": (o_rows, o_w)}
    if reference:
        ref_rows = [r for r in t_rows if r["threat"] in reference]
        if {r["threat"] for r in ref_rows} != set(reference):
            ref_rows = []
        parts[REFERENCE_METRIC] = (ref_rows, _equal(ref_rows))
    return parts


@dataclass
class Summary:
    """Per-model summary (``models``) and per-shift numbers in long form (``per_shift``)."""

    models: pd.DataFrame  # index: model id; METRICS (+ _lo/_hi), attacks, flags, architecture, training
    per_shift: pd.DataFrame  # model, kind (dataset|threat), shift, clean(+lo/hi), robust(+lo/hi), cells


def summarize(registry: Registry, results: SuiteResults) -> Summary:
    """One row per model of the suite (models without any result are left out)."""
    suite = results.suite
    cells = results.cells
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in cells.to_dict("records"):
        by_model.setdefault(r["model"], []).append(r)
    planned_by_model = results.planned.groupby("model")["present"].agg(["size", "sum"]) \
        if len(results.planned) else pd.DataFrame(columns=["size", "sum"])
    model_rows, shift_rows = [], []
    reference = reference_threats(registry, suite)
    id_threat = registry.threat(suite.id_threat)
    for model_id in sorted(by_model):
        rows = by_model[model_id]
        spec = registry.entries["models"].get(model_id)
        id_row = next((r for r in rows if r["role"] == "id"), None)
        out: dict[str, Any] = {"model": model_id}
        for name, col in (("id_clean", "clean_correct"), ("id_robust", "robust_correct")):
            out[name], out[f"{name}_lo"], out[f"{name}_hi"] = _id_metric(id_row, col)
        parts = metric_parts(rows, suite, reference)
        for s in suite.dataset_shifts:
            g = [r for r in rows if r["role"] == "dataset" and r["shift"] == s]
            if not g:
                continue
            w = [1.0 / len(g)] * len(g)
            c, clo, chi = _mean(g, w, "clean_correct")
            rb, rlo, rhi = _mean(g, w, "robust_correct")
            shift_rows.append({"model": model_id, "kind": "dataset", "shift": s, "clean": c, "clean_lo": clo,
                               "clean_hi": chi, "robust": rb, "robust_lo": rlo, "robust_hi": rhi, "cells": len(g)})
        for r in parts["ood_t_robust"][0]:
            c, clo, chi = _id_metric(r, "clean_correct")
            rb, rlo, rhi = _id_metric(r, "robust_correct")
            shift_rows.append({"model": model_id, "kind": "threat", "shift": r["threat"], "clean": c,
                               "clean_lo": clo, "clean_hi": chi, "robust": rb, "robust_lo": rlo,
                               "robust_hi": rhi, "cells": 1})
        for name, (g, w) in parts.items():
            if name in ("id_clean", "id_robust"):  # one cell: its Wilson interval above
                continue
            out[name], out[f"{name}_lo"], out[f"{name}_hi"] = _mean(g, w, _COLUMN[name])
        out["attacks"] = tuple(sorted({str(r["attack"]) for r in rows}))
        size = int(planned_by_model.loc[model_id, "size"]) if model_id in planned_by_model.index else len(rows)
        out["cells"] = len(rows)
        out["planned"] = size
        have = {r["threat"] for r in parts["ood_t_robust"][0]}
        checks = published.compare(spec, id_threat, id_row["clean_correct"], id_row["robust_correct"]) \
            if spec is not None and id_row is not None else ()
        out["reference_checks"] = checks
        out["flags"] = published.flag_texts(checks) + _flags(rows, size - len(rows), size,
                                                             tuple(t for t in reference if t not in have))
        out["architecture"] = spec.architecture if spec else "?"
        out["training"] = spec.training if spec else "?"
        model_rows.append(out)
    models = pd.DataFrame(model_rows)
    if len(models):
        models = models.set_index("model")
    per_shift = pd.DataFrame(shift_rows, columns=["model", "kind", "shift", "clean", "clean_lo", "clean_hi", "robust",
                                                  "robust_lo", "robust_hi", "cells"])
    return Summary(models, per_shift)


# --------------------------------------------------------------------------- completeness, versions, noise
def missing_by_model(results: SuiteResults) -> dict[str, list[str]]:
    """model -> ``data x threat`` of each planned cell without a current result (planned order)."""
    out: dict[str, list[str]] = {}
    if len(results.planned):
        for r in results.planned[~results.planned["present"]].itertuples():
            out.setdefault(r.model, []).append(f"{r.data} x {r.threat}")
    return out


def is_complete(models: pd.DataFrame) -> pd.Series:
    """Per model of a summary: True when every planned cell has a current result."""
    if not len(models):
        return pd.Series(dtype=bool)
    return models["cells"] >= models["planned"]


def mixed_versions(results: SuiteResults) -> dict[str, dict[str, int]]:
    """Keys of the results' ``versions`` (packages, and whatever else is recorded there) that take
    more than one value across the present cells: key -> value -> number of cells.  A result
    that does not record a key counts under ``"unrecorded"``."""
    if not len(results.cells):
        return {}
    dicts = [dict(v) for v in results.cells["versions"]]
    keys = sorted({k for d in dicts for k in d})
    out: dict[str, dict[str, int]] = {}
    for k in keys:
        counts: dict[str, int] = {}
        for d in dicts:
            v = d.get(k, "unrecorded")
            counts[v] = counts.get(v, 0) + 1
        if len(counts) > 1:
            out[k] = dict(sorted(counts.items()))
    return out


def example_bootstrap(results: SuiteResults, summary: Summary, *, n_boot: int, seed: int,
                      metrics: tuple[str, ...] = ("id_robust", "ood_d_robust", "ood_t_robust", "ood_robust"),
                      ) -> dict[str, Any]:
    """metric -> array ``(n_boot, n_models)`` (models in ``summary.models`` order): each model's
    metric recomputed on resampled test examples.  Cells of the same size evaluate the same test
    images (for every model), so one draw of example indices per size and replicate is shared
    by all cells and all models; see :func:`benchmark.analysis.stats.bootstrap_weighted_means`."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in results.cells.to_dict("records"):
        by_model.setdefault(r["model"], []).append(r)
    parts = []
    for m in summary.models.index:
        mp = metric_parts(by_model.get(m, []), results.suite)
        for name in metrics:
            g, w = mp[name]
            parts.append(([r[_COLUMN[name]] for r in g], w, [_images(r) for r in g]))
    values = bootstrap_weighted_means(parts, n_boot=n_boot, seed=seed)
    n_models, k = len(summary.models), len(metrics)
    return {name: values[:, i::k] if n_models else values[:, :0] for i, name in enumerate(metrics)}
