"""Leaderboard: results/ -> aggregate -> trends -> a markdown page and a trend plot.

Generated from stored results only, never edited by hand.  Regenerating from unchanged
results gives byte-identical markdown and PNG: no timestamps, a fixed bootstrap seed, a
stable model order, and a PNG written by the Agg canvas at a fixed dpi with no software tag.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

from ..analysis import aggregate, trends
from ..registry import REPO_ROOT, Registry, SuiteSpec, ThreatSpec

DPI = 100
MISSING_SHOWN = 10  # missing cells named on the page; the rest are counted
LABEL_MAX = 30  # label the points of the OOD panel (by rank) up to this many models
DEFAULT_SUITE = "digits"


def default_out(suite_id: str) -> Path:
    """``leaderboard.md`` at the repo root for the default suite, ``leaderboards/<suite>.md`` otherwise."""
    return REPO_ROOT / "leaderboard.md" if suite_id == DEFAULT_SUITE else REPO_ROOT / "leaderboards" / f"{suite_id}.md"


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
        params = ", ".join(f"{k}={v}" for k, v in sorted(t.params.items()))
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
    """Model ids by OOD robust accuracy (desc), then ID robust (desc), then id; NaN last."""
    def key(m: str):
        r = models.loc[m]
        o, i = float(r["ood_robust"]), float(r["id_robust"])
        return (not math.isfinite(o), -o if math.isfinite(o) else 0.0, -i if math.isfinite(i) else 0.0, m)

    return sorted(models.index, key=key)


# --------------------------------------------------------------------------- markdown
def render(registry: Registry, suite: SuiteSpec, res: aggregate.SuiteResults, summ: aggregate.Summary,
           fits: dict[str, trends.Trend], *, command: str, png_ref: str | None) -> str:
    """The leaderboard page as one string (pure: no I/O)."""
    models = summ.models
    order = ranking(models) if len(models) else []
    id_threat = registry.threat(suite.id_threat)
    attacks = sorted({a for m in order for a in models.loc[m, "attacks"]})
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
    if suite.description:
        lines += ["", suite.description.strip()]
    caveats = [t for t in (suite.id_threat, *suite.threat_shifts) if registry.threat(t).caveat]
    if caveats:
        lines += ["", "Caveats:", ""] + [f"- `{t}`: {' '.join(registry.threat(t).caveat.split())}" for t in caveats]
    lines += ["", "## Ranking (by OOD robust accuracy)", ""]
    ood = fits["OOD"]
    flag_notes: list[str] = []
    rows = []
    for rank, m in enumerate(order, 1):
        r = models.loc[m]
        mark = ""
        if r["flags"]:
            flag_notes.append(f"[{len(flag_notes) + 1}] `{m}`: " + "; ".join(r["flags"]) + ".")
            mark = f"[{len(flag_notes)}]"
        rows.append([str(rank), m] + [pct(r[c], r[f"{c}_lo"], r[f"{c}_hi"]) for c in
                                      ("id_clean", "id_robust", "ood_robust", "ood_d_clean", "ood_d_robust",
                                       "ood_t_robust")]
                    + [signed_pp(*ood.aer_of(m)), r["architecture"], r["training"], mark])
    lines += _table(["Rank", "Model", "ID clean", "ID robust", "OOD robust", "OOD-D clean", "OOD-D robust",
                     "OOD-T robust", "AER", "Architecture", "Training", "Flags"], rows,
                    ["r", "l", "r", "r", "r", "r", "r", "r", "r", "l", "l", "l"])
    lines += [
        "",
        "Accuracies in %, `±` the half-width of a 95% interval. ID: Wilson score interval from the "
        "per-example outcomes. Means over cells (OOD-D: mean over dataset shifts of the mean over severities; "
        "OOD-T: mean over threat shifts; OOD: mean of OOD-D robust and OOD-T robust, or the one present): "
        "normal approximation over examples, outcomes paired by example index across the cells. "
        f"AER (adversarial effective robustness): OOD robust minus the OLS trend below, in percentage points, "
        f"[95% bootstrap interval over models, {ood.n_boot} resamples, seed {ood.seed}].",
    ]
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
    lines += ["", "## Trends: OOD robust = intercept + slope x ID robust", ""]
    frows = []
    for name, t in fits.items():
        lo, hi = t.slope_ci
        ci = f" [{num(lo)}, {num(hi)}]" if _finite(lo) and _finite(hi) else ""
        label = name if name in ("OOD", "OOD-D", "OOD-T") else \
            f"{name} (D)" if name in suite.dataset_shifts else f"{name.split(':', 1)[-1]} (T)"
        frows.append([label, num(t.line.slope) + ci, num(t.line.intercept), num(t.line.r2), str(t.line.n)])
    lines += _table(["Target", "Slope [95% CI]", "Intercept", "R^2", "n"], frows, ["l", "r", "r", "r", "r"])
    lines += ["", "Ordinary least squares on the raw accuracy scale across the models of this suite; "
                  "slope interval: bootstrap over models. (D): one dataset shift, (T): one threat shift."]
    # per-shift table
    ps = summ.per_shift
    targets = [("dataset", s) for s in suite.dataset_shifts] + [("threat", t) for t in suite.threat_shifts]
    if order and targets:
        lookup = {(r.model, r.kind, r.shift): r.robust for r in ps.itertuples()}
        srows = [[m, pct(models.loc[m, "id_robust"])] + [pct(lookup.get((m, k, s), float("nan"))) for k, s in targets]
                 for m in order]
        lines += ["", "## Robust accuracy per shift (%)", ""]
        lines += _table(["Model", "ID"] + [f"{s} (D)" if k == "dataset" else f"{s} (T)" for k, s in targets], srows,
                        ["l"] + ["r"] * (len(targets) + 1))
        lines += ["", "(D): dataset shift under the ID threat, mean over severities; (T): threat shift on the ID data."]
    if png_ref:
        lines += ["", "## ID robust vs OOD robust", "", f"![ID robust vs OOD robust accuracy]({png_ref})"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plot
def plot(fits: dict[str, trends.Trend], suite_id: str, ranks: dict[str, int] | None = None) -> bytes:
    """PNG bytes: one panel per aggregate (OOD, OOD-D, OOD-T), points and the fitted line.

    With few models, the OOD panel labels each point with the model's rank on the page.

    Uses the Agg canvas directly (no pyplot global state), a fixed size and dpi and no
    ``Software`` metadata, so the bytes depend only on the numbers.
    """
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranks = ranks or {}
    with rc_context({"font.family": "DejaVu Sans", "font.size": 9, "axes.unicode_minus": False,
                     "path.simplify": True}):
        fig = Figure(figsize=(10.5, 3.6), dpi=DPI)
        FigureCanvasAgg(fig)
        panels = [("OOD", "o", "C0"), ("OOD-D", "s", "C1"), ("OOD-T", "^", "C2")]
        axes = fig.subplots(1, 3, sharex=True, sharey=True)
        for ax, (name, marker, color) in zip(axes, panels):
            t = fits.get(name)
            ax.plot([0, 100], [0, 100], ls=":", lw=0.8, color="0.6")
            if t is not None and t.x.size:
                ax.scatter(100 * t.x, 100 * t.y, marker=marker, color=color, s=22, zorder=3)
                if name == "OOD" and t.x.size <= LABEL_MAX:  # few models: name them
                    for m, xi, yi in zip(t.models, t.x, t.y):
                        ax.annotate(str(ranks.get(m, "?")), (100 * xi, 100 * yi), xytext=(3, 3),
                                    textcoords="offset points", fontsize=7, color="0.25")
                if math.isfinite(t.line.slope):
                    xs = np.array([0.0, 1.0])
                    ax.plot(100 * xs, 100 * t.line.predict(xs), color=color, lw=1.2)
                    ax.text(0.03, 0.97, f"slope {t.line.slope:.2f}, R$^2$ {t.line.r2:.2f}, n {t.line.n}",
                            transform=ax.transAxes, va="top", ha="left")
            else:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5")
            ax.set_title(f"{name} robust")
            ax.set_xlabel("ID robust accuracy (%)")
            ax.set_xlim(0, 100)
            ax.set_ylim(0, 100)
            ax.grid(True, lw=0.4, color="0.85")
        axes[0].set_ylabel("OOD robust accuracy (%)")
        labelled = fits.get("OOD") is not None and 0 < fits["OOD"].x.size <= LABEL_MAX
        fig.suptitle(f"{suite_id}: ID robust vs OOD robust accuracy (dotted: y = x"
                     + ("; numbers: rank on the leaderboard)" if labelled else ")"))
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write; an unchanged file is left untouched (its mtime too)."""
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- entry point
def build(registry: Registry, suite_id: str, results_root: Path):
    """Load, summarise and fit: (SuiteResults, Summary, trends) for a suite."""
    res = aggregate.load(registry, suite_id, Path(results_root))
    summ = aggregate.summarize(registry, res)
    fits = trends.fit_summary(summ, res.suite)
    return res, summ, fits


def write(registry: Registry, suite_id: str, results_root: Path, out: Path | None = None, *,
          command: str | None = None) -> Path:
    """Regenerate a suite's leaderboard markdown (and its PNG); return the markdown path."""
    out = Path(out) if out is not None else default_out(suite_id)
    res, summ, fits = build(registry, suite_id, results_root)
    if res.n_present == 0:
        raise FileNotFoundError(f"no current results for suite '{suite_id}' under {Path(results_root) / suite_id} "
                                f"({res.n_planned} cells planned, {res.n_stale} stale files); "
                                f"run `shiftbench run --suite {suite_id}` first")
    png = plot_path(out, suite_id)
    command = command or f"shiftbench leaderboard --suite {suite_id}"
    text = render(registry, res.suite, res, summ, fits, command=command,
                  png_ref=os.path.relpath(png, out.parent).replace(os.sep, "/"))
    ranks = {m: i for i, m in enumerate(ranking(summ.models), 1)} if len(summ.models) else {}
    _write_if_changed(png, plot(fits, suite_id, ranks))
    _write_if_changed(out, text.encode("utf-8"))
    return out
