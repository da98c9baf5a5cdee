"""Leaderboard: results/ -> aggregate -> trends -> a markdown page and its plots.

Generated from stored results only, never edited by hand.  Regenerating from unchanged
results gives byte-identical markdown and PNG: no timestamps, a fixed bootstrap seed, a
stable model order, and a PNG written by the Agg canvas at a fixed dpi with no software tag.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis import aggregate, groups, trends
from ..registry import Registry, SuiteSpec, ThreatSpec

DPI = 100
MISSING_SHOWN = 10  # missing cells named on the page; the rest are counted
LABEL_MAX = 30  # label the points of the OOD panel (by rank) up to this many models
DEFAULT_SUITE = "digits"
REFERENCE_LABEL = "OOD-T (reference set)"  # the column of aggregate.REFERENCE_METRIC


def default_out(suite_id: str) -> Path:
    """``leaderboard.md`` in the current folder (the repository root) for the default suite,
    ``leaderboards/<suite>.md`` otherwise; like ``results/``, relative to where shiftbench runs."""
    return Path("leaderboard.md") if suite_id == DEFAULT_SUITE else Path("leaderboards") / f"{suite_id}.md"


def plot_path(out: Path, suite_id: str) -> Path:
    """The trend plot lives in ``docs/`` next to the markdown that embeds it."""
    return out.parent / "docs" / f"{suite_id}-trend.png"


# --------------------------------------------------------------------------- formatting
def _finite(v: float) -> bool:
    return v is not None and isinstance(v, (int, float, np.floating)) and math.isfinite(v)


def pct(v: float, lo: float | None = None, hi: float | None = None) -> str:
    """``53.2 ±4.0`` (percent, 1 decimal; the half-width of the 95% interval)."""
    if not _finite(v):
        return "-"
    s = f"{100 * v:.1f}"
    if lo is not None and hi is not None and _finite(lo) and _finite(hi):
        s += f" ±{100 * (hi - lo) / 2:.1f}"
    return s


def signed_pp(v: float, lo: float, hi: float) -> str:
    """AER in percentage points with its bootstrap interval: ``+2.1 [-0.4, +4.5]``."""
    def sp(x: float) -> str:
        t = f"{100 * x:+.1f}"
        return "0.0" if t in ("+0.0", "-0.0") else t

    if not _finite(v):
        return "-"
    return sp(v) + (f" [{sp(lo)}, {sp(hi)}]" if _finite(lo) and _finite(hi) else "")


def num(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}f}".replace("-0.000", "0.000") if _finite(v) else "-"


def eps_text(t: ThreatSpec) -> str:
    """``Linf 8/255`` style budget text (fractions of 255 written as such)."""
    if t.kind != "lp":
        params = t.params_text()
        return f"{t.kind}" + (f" ({params})" if params else "")
    k = t.eps * 255
    as_255 = t.norm == "Linf" and 0 < k <= 32 and abs(k - round(k)) < 1e-6  # 8/255, not 0.03137
    eps = f"{round(k)}/255" if as_255 else f"{t.eps:.4g}"
    return f"{t.norm} eps={eps}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] * len(header)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return lines


def integrity_text(res: aggregate.SuiteResults) -> str:
    """The header's integrity sentence: how many results were verified by their digest."""
    text = f"Integrity: {res.n_verified} of {res.n_present} results verified (content digest and per-example outcomes)"
    if res.n_unsigned:
        text += f", {res.n_unsigned} unsigned (no digest, written before digests; outcomes checked)"
    if res.n_corrupt:
        text += f"; {res.n_corrupt} corrupt file(s) excluded (listed below)"
    return text + "."


# --------------------------------------------------------------------------- ranking
def ranking(models) -> list[str]:
    """Complete model ids by OOD robust accuracy (desc), then ID robust (desc), then id; NaN last.

    A model with missing cells is not ranked (its means would rest on the cells it has, which
    favours a model that lacks the hard ones): see :func:`incomplete`.
    """
    def key(m: str):
        r = models.loc[m]
        o, i = float(r["ood_robust"]), float(r["id_robust"])
        return (not math.isfinite(o), -o if math.isfinite(o) else 0.0, -i if math.isfinite(i) else 0.0, m)

    complete = aggregate.is_complete(models) if len(models) else {}
    return sorted((m for m in models.index if complete[m]), key=key)


def incomplete(models) -> list[str]:
    """Model ids with missing cells (listed below the ranking, never ranked), by id."""
    if not len(models):
        return []
    complete = aggregate.is_complete(models)
    return sorted(m for m in models.index if not complete[m])


@dataclass
class Board:
    """Everything a leaderboard page (Markdown or site) shows, computed once."""

    registry: Registry
    suite: SuiteSpec
    res: aggregate.SuiteResults
    summ: aggregate.Summary
    fits: dict[str, trends.Trend]  # raw scale: OOD, OOD-D, OOD-T, family:<f>, shifts
    probit: dict[str, trends.Trend]  # the same targets in probit scale
    ranked: list[str]
    incomplete: list[str]
    missing: dict[str, list[str]]  # model -> "data x threat" of its missing cells
    families: dict[str, str]  # dataset shift -> family
    mixed: dict[str, dict[str, int]]  # versions key -> value -> cells, only keys with > 1 value
    reference: tuple[str, ...] = ()  # threat shifts marked reference_set (the OOD-T (reference set) column)
    noise: dict | None = None  # per-example bootstrap of the complete models (aggregate.example_bootstrap)

    @property
    def ceiling(self) -> trends.Ceiling | None:
        return trends.ceiling(self.fits["OOD"])


def _complete_summary(summ: aggregate.Summary, keep: list[str]) -> aggregate.Summary:
    ps = summ.per_shift
    return aggregate.Summary(summ.models.loc[keep] if len(summ.models) else summ.models,
                             ps[ps["model"].isin(keep)].reset_index(drop=True))


def analyse(registry: Registry, res: aggregate.SuiteResults, summ: aggregate.Summary, *,
            n_boot: int = trends.N_BOOT, seed: int = trends.SEED) -> Board:
    """Fits (raw and probit) over the complete models, with AER intervals that resample test
    examples within cells and models."""
    suite = res.suite
    ranked = ranking(summ.models) if len(summ.models) else []
    comp = _complete_summary(summ, sorted(ranked))
    families = {s: registry.shift(s).family for s in suite.dataset_shifts}
    noise = aggregate.example_bootstrap(res, comp, n_boot=n_boot, seed=seed) if len(comp.models) else None
    fits = {sc: trends.fit_summary(comp, suite, n_boot=n_boot, seed=seed, scale=sc, noise=noise, families=families)
            for sc in ("raw", "probit")}
    return Board(registry, suite, res, summ, fits["raw"], fits["probit"], ranked,
                 incomplete(summ.models), aggregate.missing_by_model(res), families, aggregate.mixed_versions(res),
                 aggregate.reference_threats(registry, suite), noise)


def ranking_metrics(board: Board) -> list[tuple[str, str]]:
    """(label, summary column) of the ranking's OOD-T columns: ours, and the reference set's when
    the suite marks threat shifts ``reference_set: true`` (no empty column otherwise)."""
    return [("OOD-T robust", "ood_t_robust")] + ([(REFERENCE_LABEL, aggregate.REFERENCE_METRIC)]
                                                 if board.reference else [])


def reference_sentence(board: Board) -> str | None:
    """One line naming the threat shifts the reference-set column averages (None without one)."""
    if not board.reference:
        return None
    return (f"{REFERENCE_LABEL}: mean robust accuracy over the {len(board.reference)} threat shift(s) that stand for "
            f"OODRobustBench's six ({', '.join(board.reference)}), comparable with its OOD-T in kind, not number by "
            f"number: our non-Lp attacks are checked for convergence, while the reference's LPA loses about half of "
            f"its successes, so its published LPA numbers sit far above ours (docs/threats.md); OOD-T robust averages "
            f"all {len(board.suite.threat_shifts)} of the suite's threat shifts. Same interval as OOD-T; no value "
            f"for a model missing any of these cells (its flag names them).")


def escalation_sentence(res: aggregate.SuiteResults) -> str | None:
    """Per threat, how many of its cells failed the convergence check and store what the stronger
    run of their attack finds (None when none did)."""
    cells = res.cells
    if not len(cells) or "escalated" not in cells:
        return None
    hit = cells[[("convergence" in e) for e in cells["escalated"]]]
    if not len(hit):
        return None
    total = cells.groupby("threat").size()
    parts = [f"`{t}` {n} of {int(total[t])}" for t, n in hit.groupby("threat").size().items()]
    return ("Escalated to the stronger run (its attack's iterations x4, 2 runs), the cell storing what neither broke, "
            "because the stronger run broke significantly more of a sample of the examples the attack left robust "
            f"(the convergence check; docs/attacks.md): {', '.join(parts)} cells. The attack stopped short, not the "
            "model: no flag.")


def target_label(name: str, suite: SuiteSpec) -> str:
    """``OOD-D``, ``noise (family)``, ``gaussian_noise (D)``, ``digits-l2 (T)``."""
    if name in trends.AGGREGATES:
        return name
    if name.startswith("family:"):
        return f"{name.split(':', 1)[1]} (family)"
    return f"{name} (D)" if name in suite.dataset_shifts else f"{name.split(':', 1)[-1]} (T)"


def clipped_text(t: trends.Trend, names: int = 3) -> str:
    """``-`` or ``2 (y: a, b)``: the points a probit/logit fit clipped."""
    if not t.clipped:
        return "-"
    by_axis: dict[str, list[str]] = {}
    for m, axis, _ in t.clipped:
        by_axis.setdefault(axis, []).append(m)
    parts = []
    for axis, ms in sorted(by_axis.items()):
        more = f" +{len(ms) - names} more" if len(ms) > names else ""
        parts.append(f"{axis}: {', '.join(ms[:names])}{more}")
    return f"{len(t.clipped)} ({'; '.join(parts)})"


def better_scale(raw: trends.Trend, probit: trends.Trend) -> str:
    """``raw``, ``probit``, ``tie`` (R^2 equal to 3 decimals) or ``-``."""
    a, b = raw.line.r2, probit.line.r2
    if not (_finite(a) and _finite(b)):
        return "-"
    if round(a, 3) == round(b, 3):
        return "tie"
    return "raw" if a > b else "probit"


def ceiling_sentence(board: Board) -> str:
    """One sentence: the OOD robust accuracy the trend predicts at 100% and at the best ID robustness."""
    raw, prb = trends.ceiling(board.fits["OOD"]), trends.ceiling(board.probit["OOD"])
    if raw is None:
        return "Ceiling: no OOD trend (fewer than two complete models with distinct ID robust accuracy)."

    def iv(v: tuple[float, float, float]) -> str:
        p, lo, hi = v
        return f"{100 * p:.1f}%" + (f" [{100 * lo:.1f}, {100 * hi:.1f}]" if _finite(lo) and _finite(hi) else "")

    eps = board.probit["OOD"].line.clip_eps
    probit_full = f"; probit scale: {iv(prb.at_full)} at {100 * (1 - eps):g}%" if prb is not None else ""
    probit_best = f" (probit: {iv(prb.at_best)})" if prb is not None else ""
    return (f"Ceiling: the OOD trend predicts {iv(raw.at_full)} OOD robust accuracy at 100% ID robust accuracy "
            f"(raw scale{probit_full}) and {iv(raw.at_best)}{probit_best} at the best model's ID robust accuracy "
            f"({100 * raw.best_x:.1f}%, `{raw.best_model}`), so on this trend no model reaches more than "
            f"{100 * raw.at_full[0]:.1f}% OOD robust accuracy without beating the trend itself.")


def versions_sentence(mixed: dict[str, dict[str, int]]) -> str | None:
    """None when every result was computed with the same versions, else what differs."""
    if not mixed:
        return None
    parts = [f"{k} " + ", ".join(f"{v} ({n} cells)" for v, n in vals.items()) for k, vals in mixed.items()]
    return ("Mixed versions: these results were computed with different versions or settings: "
            + "; ".join(parts) + ". Numbers from different versions may not be comparable; re-run the "
              "affected cells with one environment to remove this warning.")


def aer_text(t: trends.Trend, m: str, markdown: bool = True) -> str:
    """AER with its interval, bold when the interval excludes 0 (significant)."""
    s = signed_pp(*t.aer_of(m))
    if markdown and t.aer_significant(m):
        head, _, tail = s.partition(" ")
        s = f"**{head}** {tail}".rstrip()
    return s


# --------------------------------------------------------------------------- what beats the trend
SECTION_FIELDS = ("training_family", "extra_data", "arch", "size")  # those with >= 2 groups are shown
FIELD_TITLES = {"training_family": "training family", "extra_data": "extra data", "arch": "architecture family",
                "size": "parameter count", "threat": "threat trained for", "eps": "budget trained for",
                "venue": "venue", "year": "year"}


def group_analysis(board: Board, by: tuple[str, ...] | list[str], target: str = "OOD",
                   scale: str = "raw") -> groups.GroupAnalysis:
    """The complete models of a board grouped by ``meta`` fields (:mod:`benchmark.analysis.groups`),
    against the board's own trend and bootstrap."""
    fits = {"raw": board.fits, "probit": board.probit}.get(scale)
    if fits is None:
        raise groups.GroupError(f"unknown scale {scale!r}; use raw or probit")
    if target not in groups.TARGETS:
        raise groups.GroupError(f"unknown target {target!r}; known: {', '.join(groups.TARGETS)}")
    comp = board.summ.models.loc[sorted(board.ranked)] if len(board.summ.models) else board.summ.models
    return groups.analyze(board.registry, comp, fits[target], tuple(by), target=target, noise=board.noise,
                          suite=board.suite.id)


def group_rows(ga: groups.GroupAnalysis, markdown: bool = True) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and alignment of a group table (AER and differences in percentage points)."""
    label = groups.TARGETS[ga.target][1]
    rows = []
    for g in ga.groups:
        diff = signed_pp(g.diff, *g.diff_ci)
        if markdown and g.verdict != "-":
            head, _, tail = diff.partition(" ")
            diff = f"**{head}** {tail}".rstrip()
        p = "-" if not _finite(g.p) else (f"{g.p:.3f}" + (f" ({g.p_holm:.3f})" if _finite(g.p_holm) else ""))
        slope = num(g.trend.line.slope, 2) + (f" [{num(g.trend.slope_ci[0], 2)}, {num(g.trend.slope_ci[1], 2)}]"
                                              if _finite(g.trend.slope_ci[0]) else "")
        rows.append([g.key, str(g.n), pct(g.id_robust), pct(g.target), signed_pp(g.aer, *g.aer_ci), diff, p, slope])
    header = ["Group", "Models", "ID robust", label, "Mean AER [95% CI]", "vs rest [95% CI]", "p (Holm)",
              "Group slope [95% CI]"]
    return header, rows, ["l", "r", "r", "r", "r", "r", "r", "r"]


def group_summary(ga: groups.GroupAnalysis) -> str:
    """One sentence: which groups lie above / below the rest (Holm-corrected p < 0.05)."""
    above = [f"{g.key} ({signed_pp(g.diff, math.nan, math.nan)} pp)" for g in ga.groups if g.verdict == "above"]
    below = [f"{g.key} ({signed_pp(g.diff, math.nan, math.nan)} pp)" for g in ga.groups if g.verdict == "below"]
    if not above and not below:
        return "No group's mean AER differs from the rest's (Holm-corrected p >= 0.05 for every group)."
    parts = ([f"above the rest: {', '.join(above)}"] if above else []) + \
            ([f"below the rest: {', '.join(below)}"] if below else [])
    return "; ".join(parts).capitalize() + "."


def beats_analyses(board: Board) -> list[groups.GroupAnalysis]:
    """One analysis per :data:`SECTION_FIELDS` field that splits the complete models into at
    least two groups; none without an OOD trend."""
    if not board.ranked or not math.isfinite(board.fits["OOD"].line.slope):
        return []
    out = [group_analysis(board, (f,)) for f in SECTION_FIELDS]
    return [ga for ga in out if len(ga.groups) >= 2]


def beats_intro(board: Board) -> str:
    """The sentence above the section's tables: what the numbers are."""
    t = board.fits["OOD"]
    return ("Complete models grouped by their entry's metadata (`meta`; `shiftbench analyze --suite "
            f"{board.suite.id} --by FIELD` for any field, `--json`, a plot). Mean AER: OOD robust minus the OOD "
            f"trend (raw scale), averaged over the group, in percentage points, [95% interval from {t.n_boot} "
            f"bootstrap replicates, seed {t.seed}, resampling test examples within cells, the trend's models and the "
            "group's models]. vs rest: the group's mean AER minus the other models', with a two-sided bootstrap p "
            "(in brackets Holm-corrected across the field's groups); **bold** where the corrected p < 0.05. Group "
            f"slope: the line through the group's models alone (suite: {num(t.line.slope, 2)} "
            f"[{num(t.slope_ci[0], 2)}, {num(t.slope_ci[1], 2)}]).")


def beats_section(board: Board) -> list[str]:
    """The leaderboard's "What beats the trend" section (nothing when no field splits the models)."""
    analyses = beats_analyses(board)
    if not analyses:
        return []
    lines = ["", "## What beats the trend", "", beats_intro(board)]
    for ga in analyses:
        header, rows, align = group_rows(ga)
        lines += ["", f"### By {FIELD_TITLES[ga.by[0]]}", ""] + _table(header, rows, align) + ["", group_summary(ga)]
    return lines


# --------------------------------------------------------------------------- markdown
def design_sentence(suite: SuiteSpec, res: aggregate.SuiteResults) -> str:
    """What design made the dataset-shift cells, where the suite has a choice (none for a suite
    whose protocol is the reference one, read as such)."""
    if res.protocol == suite.protocol == "reference":
        return ""
    other = f"{len(res.other_protocol)} result file(s) of the other protocol not used. " if res.other_protocol else ""
    if res.protocol == "reference":
        return ("Dataset-shift design: **reference** (`--protocol reference`; the suite's own is lean): every test "
                "image attacked under every shift at every severity, as OODRobustBench does. " + other).strip()
    lean = res.planned[res.planned["lean"]] if len(res.planned) else res.planned
    groups = sorted(set(lean["shift"])) if len(lean) else []
    sizes = sorted({int(n) for n, im in zip(res.cells["n"], res.cells["images"]) if isinstance(im, np.ndarray)}) \
        if len(res.cells) else []
    per = f" ({sizes[0]}-{sizes[-1]} images each)" if sizes else ""
    return (f"Dataset-shift design: **lean** (`protocol: lean`): the {suite.n_examples:,} test images are shared out "
            f"among the {len(groups)} shifts that corrupt them{per}, each image attacked under "
            f"{suite.shifts_per_image} of them at every severity, stratified by class, fixed by seed {suite.seed}; "
            "per-shift intervals follow each shift's own images; `--protocol reference` attacks every image under "
            "every shift, as OODRobustBench does. " + other).strip()


def render(registry: Registry, suite: SuiteSpec, res: aggregate.SuiteResults, summ: aggregate.Summary,
           fits: dict[str, trends.Trend], *, command: str, png_ref: str | None,
           board: Board | None = None, plot_refs: dict[str, str] | None = None,
           defenses: list[str] | None = None) -> str:
    """The leaderboard page as one string (pure: no I/O).

    ``board`` (from :func:`analyse`) is computed when not given; ``fits`` then replaces its raw
    fits.  ``png_ref`` is the trend plot's path; ``plot_refs`` the others (``shifts``, ``severity``);
    ``defenses``: the lines of the "Defenses" section (:func:`..report.defenses.section`).
    """
    if board is None:
        board = analyse(registry, res, summ)
        board.fits = fits
    models = summ.models
    order = board.ranked
    id_threat = registry.threat(suite.id_threat)
    attacks = sorted({a for m in models.index for a in models.loc[m, "attacks"]}) if len(models) else []
    sevs = {s: registry.shift(s).severities for s in suite.dataset_shifts}
    common = {v for v in sevs.values() if v}
    if len(common) == 1 and len(sevs) > 1 and all(sevs.values()):  # say the shared severities once
        shift_desc = list(sevs)
        shift_desc[-1] += f" (severities {','.join(map(str, common.pop()))} each)"
    else:
        shift_desc = [f"{s} (severities {','.join(map(str, v))})" if v else s for s, v in sevs.items()]
    ns = sorted({int(v) for v in res.cells["n"]}) if len(res.cells) else [suite.n_examples]
    threat_desc = [f"{t} ({eps_text(registry.threat(t))}, {registry.threat(t).attack})" for t in suite.threat_shifts]
    n_models = len({*res.planned["model"]}) if len(res.planned) else 0
    lines = [f"<!-- generated by: {command}; do not edit -->", f"# Leaderboard: {suite.id}", ""]
    lines.append(
        f"Evaluated: {n_models} models on `{suite.dataset}` under the ID threat `{id_threat.id}` "
        f"({eps_text(id_threat)}, {id_threat.attack}); "
        f"{len(suite.dataset_shifts)} dataset shift(s): {', '.join(shift_desc) or 'none'}; "
        f"{len(suite.threat_shifts)} threat shift(s): {', '.join(threat_desc) or 'none'}; "
        f"n={'/'.join(map(str, ns))} examples per cell, seed {suite.seed}; "
        f"attack(s) used: {', '.join(attacks) or 'none'}; "
        f"{res.n_present} of {res.n_planned} cells present, {res.n_missing} missing, "
        f"{res.n_stale} stale result file(s) ignored. " + integrity_text(res)
    )
    design = design_sentence(suite, res)
    if design:
        lines += ["", design]
    mixed = versions_sentence(board.mixed)
    if mixed:
        lines += ["", mixed]
    if suite.description:
        lines += ["", suite.description.strip()]
    caveats = [t for t in (suite.id_threat, *suite.threat_shifts) if registry.threat(t).caveat]
    if caveats:
        lines += ["", "Caveats:", ""] + [f"- `{t}`: {' '.join(registry.threat(t).caveat.split())}" for t in caveats]
    lines += ["", "## Ranking (by OOD robust accuracy)", ""]
    ood, ood_p = board.fits["OOD"], board.probit["OOD"]
    flag_notes: list[str] = []

    def mark_of(m: str) -> str:
        flags = models.loc[m, "flags"]
        if not flags:
            return ""
        flag_notes.append(f"[{len(flag_notes) + 1}] `{m}`: " + "; ".join(flags) + ".")
        return f"[{len(flag_notes)}]"

    rows = []
    ood_t = ranking_metrics(board)
    for rank, m in enumerate(order, 1):
        r = models.loc[m]
        rows.append([str(rank), m] + [pct(r[c], r[f"{c}_lo"], r[f"{c}_hi"]) for c in
                                      ("id_clean", "id_robust", "ood_robust", "ood_d_clean", "ood_d_robust",
                                       *(c for _, c in ood_t))]
                    + [aer_text(ood, m), aer_text(ood_p, m), r["architecture"], r["training"], mark_of(m)])
    lines += _table(["Rank", "Model", "ID clean", "ID robust", "OOD robust", "OOD-D clean", "OOD-D robust",
                     *(label for label, _ in ood_t), "AER", "AER (probit)", "Architecture", "Training", "Flags"],
                    rows, ["r", "l", "r", "r", "r", "r", "r"] + ["r"] * len(ood_t) + ["r", "r", "l", "l", "l"])
    lines += [
        "",
        "Accuracies in %, `±` the half-width of a 95% interval. ID: Wilson score interval from the "
        "per-example outcomes. Means over cells (OOD-D: mean over dataset shifts of the mean over severities; "
        "OOD-T: mean over threat shifts; OOD: mean of OOD-D robust and OOD-T robust, or the one present): "
        "normal approximation over examples, outcomes paired by example index across the cells. "
        f"AER (adversarial effective robustness): OOD robust minus the OOD trend below (raw scale; "
        f"probit: minus the probit-scale trend), in percentage points, [95% interval from {ood.n_boot} bootstrap "
        f"replicates, seed {ood.seed}, each resampling the test examples within cells (the same draw for every "
        f"model, which saw the same images) and the models]. **Bold**: the interval excludes 0 (significant); "
        f"otherwise the model is not distinguishable from the trend. Only models with every planned cell "
        f"are ranked and fitted.",
    ]
    ref = reference_sentence(board)
    if ref:
        lines += ["", ref]
    escalated = escalation_sentence(res)
    if escalated:
        lines += ["", escalated]
    if board.incomplete:
        lines += ["", "### Not ranked: incomplete models", ""]
        irows = []
        for m in board.incomplete:
            r = models.loc[m]
            miss = board.missing.get(m, [])
            shown = ", ".join(miss[:MISSING_SHOWN]) + (f", and {len(miss) - MISSING_SHOWN} more"
                                                       if len(miss) > MISSING_SHOWN else "")
            irows.append([m, f"{int(r['cells'])} of {int(r['planned'])}", shown,
                          pct(r["id_robust"], r["id_robust_lo"], r["id_robust_hi"]),
                          pct(r["ood_robust"], r["ood_robust_lo"], r["ood_robust_hi"]), r["architecture"],
                          r["training"], mark_of(m)])
        lines += _table(["Model", "Cells", "Missing", "ID robust", "OOD robust (cells present)", "Architecture",
                         "Training", "Flags"], irows, ["l", "r", "l", "r", "r", "l", "l", "l"])
        lines += ["", f"Run `shiftbench run --suite {suite.id}` to complete them; their numbers use only the cells "
                      "present and are not comparable with the ranking."]
    if flag_notes:
        lines += ["", "Flags:", ""] + [f"- {n}" for n in flag_notes]
    if res.n_corrupt:
        shown = [f"`{'/'.join(v.path.parts[-2:])}` ({v.problem})" for v in res.corrupt[:MISSING_SHOWN]]
        more = f", and {res.n_corrupt - MISSING_SHOWN} more" if res.n_corrupt > MISSING_SHOWN else ""
        lines += ["", f"Corrupt result files ({res.n_corrupt}; excluded, counted as missing; "
                  f"`shiftbench run --suite {suite.id}` recomputes them, `shiftbench verify-results --suite {suite.id}` "
                  "checks every file): " + "; ".join(shown) + more + "."]
    if res.n_missing:
        miss = res.planned[~res.planned["present"]]
        shown = [f"`{r.model}` {r.data} x {r.threat}" for r in miss.head(MISSING_SHOWN).itertuples()]
        more = f", and {len(miss) - MISSING_SHOWN} more" if len(miss) > MISSING_SHOWN else ""
        lines += ["", f"Missing cells ({len(miss)}; `shiftbench run --suite {suite.id} --dry-run` lists them all): "
                  + ", ".join(shown) + more + "."]
    # trend fits
    lines += ["", "## Trends: OOD robust = intercept + slope x ID robust", "", ceiling_sentence(board), ""]
    better = []
    for name in ("OOD-D", "OOD-T"):
        a, b = board.fits[name], board.probit[name]
        w = better_scale(a, b)
        better.append(f"{name}: {w} (R^2 raw {num(a.line.r2)}, probit {num(b.line.r2)})")
    lines += ["Which scale fits better: " + "; ".join(better) + ".", ""]
    frows = []
    for name in trends.AGGREGATES:
        for t in (board.fits[name], board.probit[name]):
            frows.append([name, t.scale, num(t.line.slope) + _ci_text(t.slope_ci),
                          num(t.line.intercept) + _ci_text(t.intercept_ci), num(t.line.r2), num(t.line.pearson_r),
                          num(t.line.resid_sd), str(t.line.n), clipped_text(t)])
    lines += _table(["Target", "Scale", "Slope [95% CI]", "Intercept [95% CI]", "R^2", "Pearson r", "Residual sd",
                     "n", "Clipped"], frows, ["l", "l", "r", "r", "r", "r", "r", "r", "l"])
    eps = board.probit["OOD"].line.clip_eps
    lines += ["", f"Raw: ordinary least squares on accuracies as fractions. Probit: least squares of "
                  f"Phi^-1(OOD) on Phi^-1(ID) (Phi the normal CDF); slope, intercept, R^2, r and residual sd are "
                  f"those of that fit; accuracies of exactly 0 or 1 are clipped to [{eps:g}, {1 - eps:g}] "
                  f"(Clipped: how many points, on which axis). Fitted on the complete models only. Intervals: "
                  f"bootstrap ({ood.n_boot} replicates, seed {ood.seed}); for OOD, OOD-D and OOD-T it resamples "
                  f"test examples within cells and models, for the rows below models only."]
    srows = []
    for name, t in board.fits.items():
        if name in trends.AGGREGATES:
            continue
        p = board.probit[name]
        srows.append([target_label(name, suite), str(t.line.n), num(t.line.slope) + _ci_text(t.slope_ci),
                      num(t.line.r2), num(p.line.slope) + _ci_text(p.slope_ci), num(p.line.r2),
                      better_scale(t, p), clipped_text(p)])
    if srows:
        lines += ["", "### Per shift family and per shift", ""]
        lines += _table(["Target", "n", "Raw slope [95% CI]", "Raw R^2", "Probit slope [95% CI]", "Probit R^2",
                         "Better", "Clipped (probit)"], srows, ["l", "r", "r", "r", "r", "r", "l", "l"])
        lines += ["", "(family): mean over the family's dataset shifts (" +
                  "; ".join(f"{f}: {', '.join(s for s, g in board.families.items() if g == f)}"
                            for f in sorted(set(board.families.values()))) +
                  "); (D): one dataset shift, mean over severities; (T): one threat shift."]
    lines += beats_section(board)
    lines += defenses or []
    # per-shift table
    ps = summ.per_shift
    targets = [("dataset", s) for s in suite.dataset_shifts] + [("threat", t) for t in suite.threat_shifts]
    shown_models = order + board.incomplete
    if shown_models and targets:
        lookup = {(r.model, r.kind, r.shift): r.robust for r in ps.itertuples()}
        srows = [[m + (" (incomplete)" if m in board.incomplete else ""), pct(models.loc[m, "id_robust"])]
                 + [pct(lookup.get((m, k, s), float("nan"))) for k, s in targets] for m in shown_models]
        lines += ["", "## Robust accuracy per shift (%)", ""]
        lines += _table(["Model", "ID"] + [f"{s} (D)" if k == "dataset" else f"{s} (T)" for k, s in targets], srows,
                        ["l"] + ["r"] * (len(targets) + 1))
        lines += ["", "(D): dataset shift under the ID threat, mean over severities; (T): threat shift on the ID data."]
    plot_refs = plot_refs or {}
    if png_ref:
        lines += ["", "## ID robust vs OOD robust", "",
                  "Top row: raw axes; bottom row: probit-scaled axes. Shaded: 95% bootstrap band of the fitted line.",
                  "", f"![ID robust vs OOD robust accuracy]({png_ref})"]
    if plot_refs.get("shifts"):
        lines += ["", "## Per shift", "", f"![ID robust vs robust accuracy per shift]({plot_refs['shifts']})"]
    if plot_refs.get("severity"):
        lines += ["", "## Robust accuracy against corruption severity", "",
                  f"![Robust accuracy against severity]({plot_refs['severity']})"]
    return "\n".join(lines) + "\n"


def _ci_text(ci: tuple[float, float]) -> str:
    lo, hi = ci
    return f" [{num(lo)}, {num(hi)}]" if _finite(lo) and _finite(hi) else ""


# --------------------------------------------------------------------------- plots
def _png(fig) -> bytes:
    """PNG bytes at a fixed dpi without the ``Software`` tag: the bytes depend only on the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _style():
    from matplotlib import rc_context

    return rc_context({"font.family": "DejaVu Sans", "font.size": 9, "axes.unicode_minus": False,
                       "path.simplify": True})


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


PROBIT_TICKS = (0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 0.999)


def _panel(ax, t: trends.Trend | None, marker: str, color: str, scale: str, ranks: dict[str, int] | None,
           label: bool, size: float = 22) -> None:
    """Points, fitted line and its bootstrap band, on raw (percent) or probit-scaled axes."""
    eps = t.line.clip_eps if t is not None else trends.CLIP_EPS

    def tr(v):
        return 100 * np.asarray(v, dtype=float) if scale == "raw" else trends.transform(v, "probit", eps)

    lim = (0, 100) if scale == "raw" else (float(tr(eps)), float(tr(1 - eps)))
    ax.plot(lim, lim, ls=":", lw=0.8, color="0.6")
    if t is not None and t.x.size:
        ax.scatter(tr(t.x), tr(t.y), marker=marker, color=color, s=size, zorder=3)
        if label and ranks:
            for m, xi, yi in zip(t.models, t.x, t.y):
                ax.annotate(str(ranks.get(m, "?")), (float(tr(xi)), float(tr(yi))), xytext=(3, 3),
                            textcoords="offset points", fontsize=7, color="0.25")
        if math.isfinite(t.line.slope):
            grid = np.linspace(eps, 1 - eps, 101) if scale != "raw" else np.linspace(0, 1, 101)
            pred, lo, hi = t.predict_interval(grid)
            if np.isfinite(lo).all():
                ax.fill_between(tr(grid), tr(lo), tr(hi), color=color, alpha=0.18, lw=0)
            ax.plot(tr(grid), tr(pred), color=color, lw=1.2)
            ax.text(0.03, 0.97, f"slope {t.line.slope:.2f}, R$^2$ {t.line.r2:.2f}, n {t.line.n}",
                    transform=ax.transAxes, va="top", ha="left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5")
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    if scale != "raw":
        ticks = [float(tr(p)) for p in PROBIT_TICKS]
        labels = [f"{100 * p:g}" for p in PROBIT_TICKS]
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.set_yticks(ticks, labels, fontsize=7)
    ax.grid(True, lw=0.4, color="0.85")


def plot(fits: dict[str, trends.Trend], suite_id: str, ranks: dict[str, int] | None = None,
         probit: dict[str, trends.Trend] | None = None) -> bytes:
    """PNG bytes: one column per aggregate (OOD, OOD-D, OOD-T): points, the fitted line and its
    95% bootstrap band, on raw axes and (with ``probit``) below on probit-scaled axes.

    With few models, the OOD panels label each point with the model's rank on the page.
    Uses the Agg canvas directly (no pyplot global state), a fixed size and dpi and no
    ``Software`` metadata, so the bytes depend only on the numbers.
    """
    ranks = ranks or {}
    rows = [("raw", fits)] + ([("probit", probit)] if probit is not None else [])
    with _style():
        fig = _figure(10.5, 3.6 * len(rows))
        axes = np.atleast_2d(fig.subplots(len(rows), 3))
        panels = [("OOD", "o", "C0"), ("OOD-D", "s", "C1"), ("OOD-T", "^", "C2")]
        labelled = fits.get("OOD") is not None and 0 < fits["OOD"].x.size <= LABEL_MAX
        for row, (scale, fs) in zip(axes, rows):
            for ax, (name, marker, color) in zip(row, panels):
                _panel(ax, fs.get(name), marker, color, scale, ranks, name == "OOD" and labelled)
                ax.set_title(f"{name} robust ({scale} scale)")
                ax.set_xlabel("ID robust accuracy (%)")
            row[0].set_ylabel("OOD robust accuracy (%)")
        fig.suptitle(f"{suite_id}: ID robust vs OOD robust accuracy (dotted: y = x; shaded: 95% band"
                     + ("; numbers: rank on the leaderboard)" if labelled and ranks else ")"))
        fig.tight_layout()
        return _png(fig)


def plot_shifts(fits: dict[str, trends.Trend], suite: SuiteSpec, ncols: int = 6) -> bytes:
    """PNG bytes: small multiples, one raw-scale panel per dataset shift (D) and threat shift (T)."""
    names = [n for n in fits if n not in trends.AGGREGATES and not n.startswith("family:")]
    nrows = max(1, math.ceil(len(names) / ncols))
    with _style():
        fig = _figure(2.0 * ncols, 2.0 * nrows + 0.4)
        # fixed 0-100 limits on every panel: no shared axes (sharing 20+ axes is slow to draw)
        axes = np.atleast_2d(fig.subplots(nrows, ncols))
        for i, ax in enumerate(axes.flat):
            if i >= len(names):
                ax.set_axis_off()
                continue
            t = fits[names[i]]
            color = "C1" if names[i] in suite.dataset_shifts else "C2"
            _panel(ax, t, "o", color, "raw", None, False, size=8)
            if ax.texts:
                ax.texts[-1].set_fontsize(6)
            ax.set_title(target_label(names[i], suite), fontsize=7)
            ax.set_xticks([0, 50, 100])
            ax.set_yticks([0, 50, 100])
            ax.tick_params(labelsize=6, labelleft=i % ncols == 0, labelbottom=i + ncols >= len(names))
        fig.suptitle(f"{suite.id}: ID robust (x) vs robust accuracy per shift (y), %; raw scale, "
                     f"95% band (bootstrap over models)", fontsize=9)
        fig.tight_layout()
        return _png(fig)


def representative_models(order: list[str]) -> list[str]:
    """The best, the median and the last ranked model (distinct, in rank order)."""
    picks = [order[0], order[(len(order) - 1) // 2], order[-1]] if order else []
    return list(dict.fromkeys(picks))


def severity_curves(res: aggregate.SuiteResults, models: list[str]) -> dict[str, dict[int, tuple[float, float]]]:
    """model -> severity -> (clean, robust) accuracy, mean over the dataset shifts with that
    severity; severity 0 is the ID cell."""
    c = res.cells
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for m in models:
        rows = c[c["model"] == m]
        curve: dict[int, tuple[float, float]] = {}
        idr = rows[rows["role"] == "id"]
        if len(idr):
            curve[0] = (float(idr["clean_acc"].iloc[0]), float(idr["robust_acc"].iloc[0]))
        d = rows[(rows["role"] == "dataset") & rows["severity"].notna()]
        for sev, g in sorted(d.groupby("severity"), key=lambda kv: kv[0]):
            curve[int(sev)] = (float(g["clean_acc"].mean()), float(g["robust_acc"].mean()))
        out[m] = curve
    return out


def plot_severity(res: aggregate.SuiteResults, models: list[str], suite_id: str) -> bytes:
    """PNG bytes: robust (solid) and clean (dashed) accuracy against corruption severity for a few
    models; severity 0 is the ID data."""
    curves = severity_curves(res, models)
    with _style():
        fig = _figure(8.0, 3.8)
        ax = fig.subplots()
        for i, m in enumerate(models):
            sev = sorted(curves[m])
            color = f"C{i}"
            ax.plot(sev, [100 * curves[m][s][1] for s in sev], marker="o", color=color, lw=1.4, label=f"{m} robust")
            ax.plot(sev, [100 * curves[m][s][0] for s in sev], ls="--", color=color, lw=1.0, label=f"{m} clean")
        ax.set_xlabel("corruption severity (0: ID data)")
        ax.set_ylabel("accuracy (%), mean over shifts")
        ax.set_ylim(0, 100)
        ax.grid(True, lw=0.4, color="0.85")
        if models:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.set_title(f"{suite_id}: accuracy against severity (best, median, last ranked model)", fontsize=9)
        fig.tight_layout()
        return _png(fig)


def write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write; an unchanged file is left untouched (its mtime too)."""
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- entry point
def build(registry: Registry, suite_id: str, results_root: Path):
    """Load, summarise and fit: (SuiteResults, Summary, raw-scale trends) for a suite.

    The trends are fitted on the complete models; :func:`analyse` gives the probit fits too.
    """
    board = build_board(registry, suite_id, results_root)
    return board.res, board.summ, board.fits


def build_board(registry: Registry, suite_id: str, results_root: Path, protocol: str | None = None) -> Board:
    """Load, summarise and analyse a suite's results (its dataset-shift cells under ``protocol``,
    default the suite's)."""
    res = aggregate.load(registry, suite_id, Path(results_root), protocol)
    summ = aggregate.summarize(registry, res)
    return analyse(registry, res, summ)


def plot_kinds(board: Board) -> list[str]:
    """``trend`` and ``shifts``, and ``severity`` when a dataset shift has severities."""
    kinds = ["trend", "shifts"]
    if any(board.registry.shift(s).severities for s in board.suite.dataset_shifts):
        kinds.append("severity")
    return kinds


def plots(board: Board) -> dict[str, bytes]:
    """The page's PNGs by kind (:func:`plot_kinds`)."""
    ranks = {m: i for i, m in enumerate(board.ranked, 1)}
    make = {"trend": lambda: plot(board.fits, board.suite.id, ranks, board.probit),
            "shifts": lambda: plot_shifts(board.fits, board.suite),
            "severity": lambda: plot_severity(board.res, representative_models(board.ranked), board.suite.id)}
    return {k: make[k]() for k in plot_kinds(board)}


def write(registry: Registry, suite_id: str, results_root: Path, out: Path | None = None, *,
          command: str | None = None, protocol: str | None = None) -> Path:
    """Regenerate a suite's leaderboard markdown (and its PNGs); return the markdown path."""
    out = Path(out) if out is not None else default_out(suite_id)
    board = build_board(registry, suite_id, results_root, protocol)
    res = board.res
    if res.n_present == 0:
        raise FileNotFoundError(f"no current results for suite '{suite_id}' under {Path(results_root) / suite_id} "
                                f"({res.n_planned} cells planned, {res.n_stale} stale files); "
                                f"run `shiftbench run --suite {suite_id}` first")
    pngs = plots(board)
    paths = {k: plot_path(out, suite_id) if k == "trend" else out.parent / "docs" / f"{suite_id}-{k}.png"
             for k in pngs}
    refs = {k: os.path.relpath(p, out.parent).replace(os.sep, "/") for k, p in paths.items()}
    command = command or f"shiftbench leaderboard --suite {suite_id}" + (f" --protocol {protocol}" if protocol else "")
    from . import defenses

    text = render(registry, res.suite, res, board.summ, board.fits, command=command, png_ref=refs["trend"],
                  board=board, plot_refs=refs, defenses=defenses.section(registry, res.suite, Path(results_root)))
    for k, data in pngs.items():
        write_if_changed(paths[k], data)
    write_if_changed(out, text.encode("utf-8"))
    return out


_write_if_changed = write_if_changed  # the old private name
