"""``shiftbench analyze``: the group table as text, JSON or Markdown, and the groups on the trend.

The numbers come from :mod:`benchmark.analysis.groups` on a leaderboard's board (the same complete
models, trend and bootstrap as the page's AER).  The plot is deterministic like the page's.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analysis import groups
from ..registry import Registry
from . import leaderboard as lb

MAX_COLOURS = 10  # tab10; further groups cycle through markers as well


def build(registry: Registry, suite_id: str, results_root: Path, by: str, *, target: str = "OOD",
          scale: str = "raw") -> groups.GroupAnalysis:
    """Group analysis of a suite's stored results (``by``: comma-separated fields)."""
    fields = groups.parse_by(by)
    board = lb.build_board(registry, suite_id, Path(results_root))
    if board.res.n_present == 0:
        raise FileNotFoundError(f"no current results for suite '{suite_id}' under {Path(results_root) / suite_id}; "
                                f"run `shiftbench run --suite {suite_id}` first")
    if not board.ranked:
        raise ValueError(f"suite '{suite_id}' has no complete model to analyse; run `shiftbench run --suite {suite_id}`")
    return lb.group_analysis(board, fields, target=target, scale=scale)


def text(ga: groups.GroupAnalysis) -> str:
    """The table as aligned plain text, with the suite's line and how to read it."""
    header, rows, align = lb.group_rows(ga, markdown=False)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align)).rstrip()

    t = ga.trend
    out = [f"{ga.suite}: {ga.target} robust ~ ID robust ({ga.scale} scale), {t.line.n} complete models, grouped by "
           f"{', '.join(ga.by)}; suite slope {lb.num(t.line.slope, 2)} [{lb.num(t.slope_ci[0], 2)}, "
           f"{lb.num(t.slope_ci[1], 2)}], intercept {lb.num(t.line.intercept)}",
           line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out += [lb.group_summary(ga),
            f"AER in percentage points; 95% intervals from {ga.n_boot} bootstrap replicates (seed {ga.seed}) over "
            "test examples, the trend's models and the group's models; p: two-sided bootstrap test of the group's "
            "mean AER against the rest's, Holm-corrected in brackets."]
    return "\n".join(out) + "\n"


def plot(ga: groups.GroupAnalysis) -> bytes:
    """PNG bytes: every complete model on the suite's trend (raw axes), coloured by group, with
    each group's own line (dashed) where it has one."""
    t = ga.trend
    markers = "osD^vP*Xh<>"
    with lb._style():
        fig = lb._figure(6.4, 5.0)
        ax = fig.subplots()
        ax.plot((0, 100), (0, 100), ls=":", lw=0.8, color="0.6")
        grid = np.linspace(0, 1, 101)
        if math.isfinite(t.line.slope):
            pred, lo, hi = t.predict_interval(grid)
            if np.isfinite(lo).all():
                ax.fill_between(100 * grid, 100 * lo, 100 * hi, color="0.5", alpha=0.15, lw=0)
            ax.plot(100 * grid, 100 * pred, color="0.2", lw=1.4, label=f"suite trend (slope {t.line.slope:.2f})")
        for i, g in enumerate(sorted(ga.groups, key=lambda g: g.key)):
            colour = f"C{i % MAX_COLOURS}"
            idx = [t.models.index(m) for m in g.models]
            ax.scatter(100 * t.x[idx], 100 * t.y[idx], color=colour, marker=markers[i // MAX_COLOURS % len(markers)],
                       s=26, zorder=3, label=f"{g.key} (n={g.n}, AER {100 * g.aer:+.1f} pp)")
            gl = g.trend.line
            if math.isfinite(gl.slope):
                xs = np.linspace(float(min(g.trend.x)), float(max(g.trend.x)), 21)
                ax.plot(100 * xs, 100 * np.asarray(gl.predict(xs)), color=colour, lw=1.0, ls="--")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("ID robust accuracy (%)")
        ax.set_ylabel(f"{groups.TARGETS[ga.target][1]} accuracy (%)")
        ax.set_title(f"{ga.suite}: groups by {', '.join(ga.by)} on the {ga.target} trend ({ga.scale} fit)")
        ax.grid(True, lw=0.4, color="0.85")
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        return lb._png(fig)


def write_plot(ga: groups.GroupAnalysis, out: Path) -> Path:
    lb.write_if_changed(Path(out), plot(ga))
    return Path(out)

