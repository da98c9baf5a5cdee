"""Site: results/ -> a static web leaderboard that opens from disk (no network, no CDN).

Layout of ``--out DIR``::

    index.html                 the suites, each with its best models
    site.css, site.js          shared style and script (alongside, referenced relatively)
    <suite>/index.html         sortable, filterable ranking; incomplete models; fits; plots; caveats
    <suite>/<kind>.png         the leaderboard's plots (trend, shifts, severity)
    <suite>/models/<id>.html   one page per model: per-shift, per-severity, trust checks

Everything is computed by :mod:`benchmark.report.leaderboard` (the same numbers as the Markdown
page) and written deterministically: sorted, no timestamps, so regenerating from unchanged
results gives identical bytes.  The ID-vs-OOD scatter is an inline SVG whose points show the
model's name and numbers on hover (site.js); the PNGs are the static version.
"""
from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..analysis import trends
from ..registry import Registry
from . import leaderboard as lb
from .leaderboard import Board, num, pct

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 1280px;
       padding: 0 1rem; color: #1d2125; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; }
a { color: #0b5cad; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #d8dde2; padding: 0.25rem 0.55rem; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
table.sortable th { cursor: pointer; user-select: none; background: #f3f5f7; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
.sig { font-weight: 700; }
.muted { color: #5f6b76; }
.flag { color: #a04000; }
.note { font-size: 0.88rem; color: #39434c; max-width: 70rem; }
#filter { font-size: 1rem; padding: 0.3rem 0.5rem; width: 22rem; }
.plots img { max-width: 100%; border: 1px solid #e3e7ea; margin: 0.4rem 0; }
.scatters { display: flex; flex-wrap: wrap; gap: 1rem; }
svg.scatter { background: #fff; border: 1px solid #e3e7ea; }
svg.scatter circle.pt { fill-opacity: 0.85; stroke: #fff; stroke-width: 1; }
svg.scatter circle.pt:hover { stroke: #000; stroke-width: 2; }
#tip { position: fixed; display: none; pointer-events: none; background: #1d2125; color: #fff; padding: 0.35rem 0.5rem;
       border-radius: 4px; font-size: 0.82rem; white-space: pre; z-index: 10; }
"""

JS = r"""
(function () {
  "use strict";
  function key(cell, type) {
    var v = cell.getAttribute("data-sort");
    if (v === null) { v = cell.textContent; }
    if (type === "num") { return v === "" ? NaN : parseFloat(v); }
    return v.toLowerCase();
  }
  function sortBy(table, col, th) {
    var type = th.getAttribute("data-type") || "text";
    var current = th.getAttribute("aria-sort");
    var desc = current ? current === "ascending" : type === "num";  // numbers: best (highest) first
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (r, i) { r._i = i; });
    rows.sort(function (a, b) {
      var x = key(a.cells[col], type), y = key(b.cells[col], type);
      var xn = type === "num" && isNaN(x), yn = type === "num" && isNaN(y);
      if (xn || yn) { return xn === yn ? a._i - b._i : (xn ? 1 : -1); }  // missing values last
      if (x < y) { return desc ? 1 : -1; }
      if (x > y) { return desc ? -1 : 1; }
      return a._i - b._i;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", desc ? "descending" : "ascending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener("click", function () { sortBy(table, col, th); });
    });
  });
  var filter = document.getElementById("filter");
  if (filter) {
    var table = document.getElementById(filter.getAttribute("data-table"));
    var shown = document.getElementById("shown");
    var apply = function () {
      var q = filter.value.trim().toLowerCase(), n = 0, total = table.tBodies[0].rows.length;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
        var ok = !q || (r.getAttribute("data-filter") || "").indexOf(q) >= 0;
        r.style.display = ok ? "" : "none";
        if (ok) { n += 1; }
      });
      shown.textContent = n + " of " + total + " models shown";
    };
    filter.addEventListener("input", apply);
    apply();
  }
  var tip = document.getElementById("tip");
  if (tip) {
    Array.prototype.forEach.call(document.querySelectorAll("svg.scatter .pt"), function (pt) {
      pt.addEventListener("mouseenter", function (ev) {
        tip.textContent = pt.getAttribute("data-tip");
        tip.style.display = "block";
        tip.style.left = (ev.clientX + 12) + "px";
        tip.style.top = (ev.clientY + 12) + "px";
      });
      pt.addEventListener("mouseleave", function () { tip.style.display = "none"; });
    });
  }
}());
"""

PLOTS = {"trend": "ID robust vs OOD robust (top: raw axes; bottom: probit-scaled axes; shaded: 95% band)",
         "shifts": "ID robust vs robust accuracy per shift (raw scale)",
         "severity": "Accuracy against corruption severity (best, median and last ranked model)"}


def e(text: object) -> str:
    return html.escape(str(text), quote=True)


def slug(model_id: str) -> str:
    """A file name for a model id (ids are usually safe already)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", model_id)


def _sort_value(v: float) -> str:
    return f"{float(v):.6f}" if v is not None and isinstance(v, (int, float, np.floating)) and math.isfinite(v) else ""


def _page(title: str, body: list[str], *, depth: int, command: str) -> str:
    up = "../" * depth
    return "\n".join([
        "<!DOCTYPE html>",
        f"<!-- generated by: {e(command)}; do not edit -->",
        '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request (no console error from disk)
        f"<title>{e(title)}</title>", f'<link rel="stylesheet" href="{up}site.css">', "</head>", "<body>",
        *body,
        '<div id="tip"></div>',
        f'<script src="{up}site.js"></script>', "</body>", "</html>", ""])


def _table(header: list[tuple[str, str]], rows: Iterable[list[tuple[str, str, str]]], *, id_: str | None = None,
           sortable: bool = False, row_attrs: list[str] | None = None) -> list[str]:
    """``header``: (label, type num|text); rows: (html, sort value or '', css class)."""
    cls = ' class="sortable"' if sortable else ""
    ident = f' id="{id_}"' if id_ else ""
    out = [f"<table{ident}{cls}>", "<thead><tr>" + "".join(
        f'<th data-type="{t}"' + (' class="num"' if t == "num" else "") + f">{e(h)}</th>" for h, t in header)
        + "</tr></thead>", "<tbody>"]
    for i, row in enumerate(rows):
        attrs = row_attrs[i] if row_attrs else ""
        cells = "".join(f'<td{" class=" + chr(34) + c + chr(34) if c else ""}'
                        + (f' data-sort="{e(s)}"' if s is not None and sortable else "") + f">{h}</td>"
                        for h, s, c in row)
        out.append(f"<tr{attrs}>{cells}</tr>")
    out += ["</tbody>", "</table>"]
    return out


def _aer_html(t: trends.Trend, m: str) -> tuple[str, str, str]:
    text = lb.signed_pp(*t.aer_of(m))
    sig = t.aer_significant(m)
    return (f'<span class="sig" title="interval excludes 0">{e(text)}</span>' if sig else e(text),
            _sort_value(t.aer_of(m)[0]), "num")


def _metric(r, col: str) -> tuple[str, str, str]:
    return (e(pct(r[col], r[f"{col}_lo"], r[f"{col}_hi"])), _sort_value(r[col]), "num")


# --------------------------------------------------------------------------- SVG scatter
def scatter_svg(t: trends.Trend, models, ranks: dict[str, int], title: str, ycol: str, w: int = 380,
                h: int = 300) -> str:
    """An inline SVG of one raw-scale trend: points with hover text, the line and its 95% band."""
    left, right, top, bottom = 46, 12, 26, 40
    pw, ph = w - left - right, h - top - bottom

    def X(v: float) -> float:
        return round(left + pw * float(v), 2)

    def Y(v: float) -> float:
        return round(top + ph * (1 - float(v)), 2)

    parts = [f'<svg class="scatter" role="img" aria-label="{e(title)}" width="{w}" height="{h}" '
             f'viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">{e(title)}</text>']
    for k in range(0, 101, 20):
        v = k / 100
        parts.append(f'<line x1="{X(v)}" y1="{Y(0)}" x2="{X(v)}" y2="{Y(1)}" stroke="#eceff1"/>'
                     f'<line x1="{X(0)}" y1="{Y(v)}" x2="{X(1)}" y2="{Y(v)}" stroke="#eceff1"/>'
                     f'<text x="{X(v)}" y="{h - bottom + 14}" text-anchor="middle" font-size="10">{k}</text>'
                     f'<text x="{left - 5}" y="{Y(v) + 3}" text-anchor="end" font-size="10">{k}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{h - 6}" text-anchor="middle" font-size="11">ID robust accuracy (%)</text>')
    parts.append(f'<line x1="{X(0)}" y1="{Y(0)}" x2="{X(1)}" y2="{Y(1)}" stroke="#aab" stroke-dasharray="3 3"/>')
    if math.isfinite(t.line.slope):
        grid = np.linspace(0, 1, 51)
        pred, lo, hi = t.predict_interval(grid)
        clip = lambda a: np.clip(a, 0, 1)  # noqa: E731
        if np.isfinite(lo).all():
            pts = [f"{X(x)},{Y(y)}" for x, y in zip(grid, clip(hi))] + \
                  [f"{X(x)},{Y(y)}" for x, y in zip(grid[::-1], clip(lo)[::-1])]
            parts.append(f'<polygon points="{" ".join(pts)}" fill="#1f77b4" fill-opacity="0.15" stroke="none"/>')
        inside = [(x, y) for x, y in zip(grid, pred) if 0 <= y <= 1]
        if inside:
            parts.append('<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="'
                         + " ".join(f"{X(x)},{Y(y)}" for x, y in inside) + '"/>')
        parts.append(f'<text x="{left + 6}" y="{top + 14}" font-size="11">slope {t.line.slope:.2f}, '
                     f'R² {t.line.r2:.2f}, n {t.line.n}</text>')
    for m, x, y in zip(t.models, t.x, t.y):
        aer = lb.signed_pp(*t.aer_of(m))
        tip = (f"#{ranks.get(m, '-')} {m}\nID robust {100 * x:.1f}%\n{t.name} robust {100 * y:.1f}%\n"
               f"AER {aer}\n{models.loc[m, 'architecture']}, {models.loc[m, 'training']}")
        parts.append(f'<circle class="pt" data-model="{e(m)}" data-tip="{e(tip)}" cx="{X(x)}" cy="{Y(y)}" r="4.5" '
                     f'fill="#1f77b4"><title>{e(tip)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- suite page
def suite_page(board: Board, command: str) -> str:
    suite, models, reg = board.suite, board.summ.models, board.registry
    ranks = {m: i for i, m in enumerate(board.ranked, 1)}
    res = board.res
    body = ['<p><a href="../index.html">All suites</a></p>', f"<h1>Leaderboard: {e(suite.id)}</h1>"]
    id_threat = reg.threat(suite.id_threat)
    body.append(f'<p class="note">{len(models)} models with results on <code>{e(suite.dataset)}</code> under the ID '
                f"threat <code>{e(id_threat.id)}</code> ({e(lb.eps_text(id_threat))}, {e(id_threat.attack)}); "
                f"{len(suite.dataset_shifts)} dataset shift(s), {len(suite.threat_shifts)} threat shift(s); "
                f"{res.n_present} of {res.n_planned} cells present, {res.n_missing} missing, {res.n_stale} stale "
                f"result file(s) ignored.</p>")
    if suite.description:
        body.append(f'<p class="note">{e(suite.description.strip())}</p>')
    mixed = lb.versions_sentence(board.mixed)
    if mixed:
        body.append(f'<p class="note flag">{e(mixed)}</p>')
    caveats = [t for t in (suite.id_threat, *suite.threat_shifts) if reg.threat(t).caveat]
    if caveats:
        body.append("<h2>Caveats</h2><ul>" + "".join(
            f"<li><code>{e(t)}</code>: {e(' '.join(reg.threat(t).caveat.split()))}</li>" for t in caveats) + "</ul>")
    body.append("<h2>Ranking (by OOD robust accuracy)</h2>")
    body.append('<p><label for="filter">Filter by model, architecture or training: </label>'
                '<input id="filter" type="search" data-table="ranking" placeholder="e.g. trades, CNN, noise" '
                'autocomplete="off"> <span id="shown" class="muted"></span></p>')
    ood_t = lb.ranking_metrics(board)
    header = [("Rank", "num"), ("Model", "text"), ("ID clean", "num"), ("ID robust", "num"), ("OOD robust", "num"),
              ("OOD-D robust", "num"), *((label, "num") for label, _ in ood_t), ("AER", "num"), ("AER (probit)", "num"),
              ("Architecture", "text"), ("Training", "text"), ("Flags", "text")]
    rows, attrs = [], []
    for m in board.ranked:
        r = models.loc[m]
        flags = "; ".join(r["flags"])
        rows.append([(str(ranks[m]), str(ranks[m]), "num"),
                     (f'<a href="models/{e(slug(m))}.html">{e(m)}</a>', m, ""),
                     _metric(r, "id_clean"), _metric(r, "id_robust"), _metric(r, "ood_robust"),
                     _metric(r, "ood_d_robust"), *(_metric(r, c) for _, c in ood_t),
                     _aer_html(board.fits["OOD"], m), _aer_html(board.probit["OOD"], m),
                     (e(r["architecture"]), str(r["architecture"]), ""), (e(r["training"]), str(r["training"]), ""),
                     (f'<span class="flag">{e(flags)}</span>' if flags else "", flags, "")])
        attrs.append(f' data-model="{e(m)}" data-filter="{e(" ".join([m, r["architecture"], r["training"]]).lower())}"')
    body += _table(header, rows, id_="ranking", sortable=True, row_attrs=attrs)
    ood = board.fits["OOD"]
    body.append(f'<p class="note">Accuracies in %, ± the half-width of a 95% interval. AER: OOD robust minus the '
                f"OOD trend (raw scale; probit: the probit-scale trend), percentage points, 95% interval from "
                f"{ood.n_boot} bootstrap replicates (seed {ood.seed}) resampling test examples within cells and "
                f"models; <span class=\"sig\">bold</span> when the interval excludes 0. Click a header to sort; "
                f"only models with every planned cell are ranked.</p>")
    ref = lb.reference_sentence(board)
    if ref:
        body.append(f'<p class="note">{e(ref)}</p>')
    if board.incomplete:
        body.append("<h3>Not ranked: incomplete models</h3>")
        irows = []
        for m in board.incomplete:
            r = models.loc[m]
            miss = board.missing.get(m, [])
            irows.append([(f'<a href="models/{e(slug(m))}.html">{e(m)}</a>', None, ""),
                          (f"{int(r['cells'])} of {int(r['planned'])}", None, "num"),
                          (e(", ".join(miss[:lb.MISSING_SHOWN]) + (f", and {len(miss) - lb.MISSING_SHOWN} more"
                                                                    if len(miss) > lb.MISSING_SHOWN else "")), None, ""),
                          _metric(r, "id_robust"), _metric(r, "ood_robust")])
        body += _table([("Model", "text"), ("Cells", "num"), ("Missing", "text"), ("ID robust", "num"),
                        ("OOD robust (cells present)", "num")], irows, id_="incomplete")
    # fits
    body.append("<h2>Trends: OOD robust = intercept + slope × ID robust</h2>")
    body.append(f"<p>{e(lb.ceiling_sentence(board))}</p>")
    better = "; ".join(f"{n}: {lb.better_scale(board.fits[n], board.probit[n])} (R² raw {num(board.fits[n].line.r2)}, "
                       f"probit {num(board.probit[n].line.r2)})" for n in ("OOD-D", "OOD-T"))
    body.append(f"<p>Which scale fits better: {e(better)}.</p>")
    frows = []
    for name in board.fits:
        for t in (board.fits[name], board.probit[name]):
            frows.append([(e(lb.target_label(name, suite)), None, ""), (t.scale, None, ""),
                          (e(num(t.line.slope) + lb._ci_text(t.slope_ci)), None, "num"),
                          (e(num(t.line.intercept) + lb._ci_text(t.intercept_ci)), None, "num"),
                          (num(t.line.r2), None, "num"), (num(t.line.pearson_r), None, "num"),
                          (num(t.line.resid_sd), None, "num"), (str(t.line.n), None, "num"),
                          (e(lb.clipped_text(t)), None, "")])
    body += _table([("Target", "text"), ("Scale", "text"), ("Slope [95% CI]", "num"), ("Intercept [95% CI]", "num"),
                    ("R²", "num"), ("Pearson r", "num"), ("Residual sd", "num"), ("n", "num"),
                    ("Clipped", "text")], frows, id_="fits")
    eps = board.probit["OOD"].line.clip_eps
    body.append(f'<p class="note">Raw: least squares on accuracies as fractions; probit: on Φ⁻¹ of both, accuracies '
                f"of exactly 0 or 1 clipped to [{eps:g}, {1 - eps:g}]. Fitted on complete models. Intervals for OOD, "
                f"OOD-D and OOD-T resample test examples and models, the others models only.</p>")
    analyses = lb.beats_analyses(board)
    if analyses:
        body.append("<h2>What beats the trend</h2>")
        body.append(f'<p class="note">{e(lb.beats_intro(board).replace("**bold**", "bold"))}</p>')
        for ga in analyses:
            header, rows, align = lb.group_rows(ga, markdown=False)
            marked = {g.key for g in ga.groups if g.verdict != "-"}
            body.append(f"<h3>By {e(lb.FIELD_TITLES[ga.by[0]])}</h3>")
            body += _table([(h, "num" if a == "r" else "text") for h, a in zip(header, align)],
                           [[(f'<span class="sig">{e(c)}</span>' if j == 5 and r[0] in marked else e(c), None,
                              "num" if a == "r" else "") for j, (c, a) in enumerate(zip(r, align))] for r in rows],
                           id_=f"groups-{ga.by[0]}")
            body.append(f"<p>{e(lb.group_summary(ga))}</p>")
    # interactive scatter + plots
    body.append("<h2>ID robust vs OOD robust</h2>")
    body.append('<p class="muted">Hover a point for the model and its numbers.</p><div class="scatters">')
    for name in trends.AGGREGATES:
        body.append(scatter_svg(board.fits[name], models, ranks, f"{name} robust (%)", name))
    body.append("</div>")
    body.append('<div class="plots">')
    for kind, caption in PLOTS.items():
        if kind in lb.plot_kinds(board):
            body.append(f"<h3>{e(caption)}</h3><img src=\"{kind}.png\" alt=\"{e(caption)}\">")
    body.append("</div>")
    return _page(f"shiftbench: {suite.id}", body, depth=1, command=command)


# --------------------------------------------------------------------------- model page
def model_page(board: Board, m: str, command: str) -> str:
    suite, reg = board.suite, board.registry
    r = board.summ.models.loc[m]
    spec = reg.entries["models"].get(m)
    rank = board.ranked.index(m) + 1 if m in board.ranked else None
    body = [f'<p><a href="../index.html">{e(suite.id)} leaderboard</a> · <a href="../../index.html">All suites</a></p>',
            f"<h1>{e(m)}</h1>",
            f"<p>{e(r['architecture'])} · {e(r['training'])}"
            + (f" · source <code>{e(spec.source)}</code>" if spec else "")
            + (f' · <a href="{e(spec.reference)}">reference</a>' if spec and spec.reference else "") + "</p>"]
    if rank is not None:
        body.append(f"<p><strong>Rank {rank}</strong> of {len(board.ranked)} on <code>{e(suite.id)}</code>.</p>")
    else:
        miss = board.missing.get(m, [])
        body.append(f'<p class="flag"><strong>Not ranked</strong>: {len(miss)} of {int(r["planned"])} cells missing '
                    f"({e(', '.join(miss))}); its numbers use the cells present.</p>")
    rows = [[(e(label), None, ""), (e(pct(r[c], r[f'{c}_lo'], r[f'{c}_hi'])), None, "num")] for label, c in (
        ("ID clean", "id_clean"), ("ID robust", "id_robust"), ("OOD-D clean", "ood_d_clean"),
        ("OOD-D robust", "ood_d_robust"), *lb.ranking_metrics(board), ("OOD robust", "ood_robust"))]
    rows += [[("AER (raw)", None, ""), _aer_html(board.fits["OOD"], m)],
             [("AER (probit)", None, ""), _aer_html(board.probit["OOD"], m)]]
    body += ["<h2>Summary</h2>"] + _table([("Metric", "text"), ("Value (%)", "num")], rows, id_="summary")
    checks = r.get("reference_checks", ()) or ()
    if checks:  # the ID cell against the entry's published (or claimed) accuracies
        body.append("<ul>" + "".join(f'<li{" class=" + chr(34) + "flag" + chr(34) if c.flagged else ""}>'
                                     f"{e(c.text())}</li>" for c in checks) + "</ul>")
    ps = board.summ.per_shift
    mine = ps[ps["model"] == m]
    lookup = {(x.kind, x.shift): x for x in mine.itertuples()}
    srows = []
    for kind, shifts in (("dataset", suite.dataset_shifts), ("threat", suite.threat_shifts)):
        for s in shifts:
            x = lookup.get((kind, s))
            fam = board.families.get(s, "") if kind == "dataset" else "threat shift"
            if x is None:
                srows.append([(e(s), None, ""), (e(fam), None, ""), ("-", None, "num"), ("-", None, "num"),
                              ("missing", None, "")])
                continue
            srows.append([(e(s), None, ""), (e(fam), None, ""), (e(pct(x.clean, x.clean_lo, x.clean_hi)), None, "num"),
                          (e(pct(x.robust, x.robust_lo, x.robust_hi)), None, "num"), (str(x.cells), None, "num")])
    body += ["<h2>Per shift</h2>"] + _table([("Shift", "text"), ("Family", "text"), ("Clean", "num"),
                                            ("Robust", "num"), ("Cells", "num")], srows, id_="per-shift")
    cells = board.res.cells[board.res.cells["model"] == m]
    d = cells[cells["role"] == "dataset"]
    planned_sevs = {s: tuple(reg.shift(s).severities or ()) for s in suite.dataset_shifts}
    sevs = sorted({v for vs in planned_sevs.values() for v in vs})
    if sevs:
        grid = {(x.shift, int(x.severity)): x for x in d.itertuples() if x.severity == x.severity}
        vrows = []
        for s, planned in planned_sevs.items():
            if not planned:
                continue
            row = [(e(s), None, "")]
            for v in sevs:
                x = grid.get((s, v))
                text = (f"{100 * x.robust_acc:.1f} / {100 * x.clean_acc:.1f}" if x is not None
                        else "missing" if v in planned else "")
                row.append((text, None, "num"))
            vrows.append(row)
        body += ["<h2>Per severity (robust / clean, %)</h2>"] + _table(
            [("Shift", "text")] + [(f"Severity {v}", "num") for v in sevs], vrows, id_="per-severity")
    # trust checks
    body.append("<h2>Trust checks</h2>")
    names = sorted({c for cs in cells["checks"] for c in cs})
    failed = [(x.data, x.threat, f) for x in cells.itertuples() for f in x.failed_checks]
    body.append(f"<p>{len(cells)} cell(s) evaluated; checks run: {e(', '.join(names) or 'none')}. "
                + (f'<span class="flag">{len(failed)} failed check(s):</span>' if failed else "All passed.") + "</p>")
    if failed:
        body += _table([("Data", "text"), ("Threat", "text"), ("Failed check", "text")],
                       [[(e(a), None, ""), (e(b), None, ""), (e(c), None, "")] for a, b, c in failed], id_="failed")
    caveats = [t for t in (suite.id_threat, *suite.threat_shifts) if reg.threat(t).caveat]
    if caveats:
        body.append("<h2>Caveats</h2><ul>" + "".join(
            f"<li><code>{e(t)}</code>: {e(' '.join(reg.threat(t).caveat.split()))}</li>" for t in caveats) + "</ul>")
    return _page(f"shiftbench: {m} on {suite.id}", body, depth=2, command=command)


# --------------------------------------------------------------------------- index and entry point
def index_page(boards: list[Board], command: str) -> str:
    body = ["<h1>shiftbench leaderboards</h1>",
            '<p class="note">Adversarial robustness under distribution shift, generated from stored results only.</p>']
    rows = []
    for b in boards:
        top = ", ".join(b.ranked[:3]) or "-"
        rows.append([(f'<a href="{e(b.suite.id)}/index.html">{e(b.suite.id)}</a>', None, ""),
                     (e(b.suite.dataset), None, ""), (str(len(b.ranked)), None, "num"),
                     (str(len(b.incomplete)), None, "num"), (e(top), None, "")])
    body += _table([("Suite", "text"), ("Dataset", "text"), ("Ranked models", "num"), ("Incomplete", "num"),
                    ("Top 3", "text")], rows, id_="suites")
    return _page("shiftbench leaderboards", body, depth=0, command=command)


def write(registry: Registry, suites: list[str], results_root: Path, out: Path, *, command: str,
          skip_empty: bool = False, report: Callable[[str], None] | None = None) -> Path:
    """Write the site for ``suites`` into ``out``; return the index path.

    A suite without current results is an error, or skipped (and reported) with ``skip_empty``.
    """
    out = Path(out)
    boards = []
    for sid in suites:
        board = lb.build_board(registry, sid, results_root)
        if board.res.n_present == 0:
            msg = (f"no current results for suite '{sid}' under {Path(results_root) / sid}; "
                   f"run `shiftbench run --suite {sid}` first")
            if not skip_empty:
                raise FileNotFoundError(msg)
            if report:
                report(f"skipped: {msg}")
            continue
        boards.append(board)
    if not boards:
        raise FileNotFoundError(f"no suite has current results under {results_root}; run `shiftbench run` first")
    lb.write_if_changed(out / "site.css", CSS.lstrip().encode())
    lb.write_if_changed(out / "site.js", JS.lstrip().encode())
    for board in boards:
        folder = out / board.suite.id
        for kind, data in lb.plots(board).items():
            lb.write_if_changed(folder / f"{kind}.png", data)
        lb.write_if_changed(folder / "index.html", suite_page(board, command).encode())
        for m in list(board.ranked) + list(board.incomplete):
            lb.write_if_changed(folder / "models" / f"{slug(m)}.html", model_page(board, m, command).encode())
        if report:
            report(f"{board.suite.id}: {len(board.ranked)} ranked, {len(board.incomplete)} incomplete model(s)")
    index = out / "index.html"
    lb.write_if_changed(index, index_page(boards, command).encode())
    return index

