"""Tables from anywhere: a CSV of accuracies (e.g. a published leaderboard) -> fraction columns.

Used by ``shiftbench trends fit`` so users can fit another benchmark's trend and compare.
Units are detected per column: every value carrying a ``%`` sign -> percent; no sign and some
value above 1 -> percent; otherwise fractions.  A column that mixes values with and without
``%`` is an error, as are missing columns, non-numeric or empty cells and values outside
[0, 1] after conversion.  Every error is a :class:`TableError` with a one-line message.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_ROWS = 3


class TableError(ValueError):
    """Bad input table: the message names the file, column and row, and says what to do."""


@dataclass(frozen=True)
class Column:
    """One column in fraction units and how its unit was decided."""

    name: str
    values: np.ndarray
    unit: str  # "fraction", "percent" or "percent (%)"


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file (cells stripped; blank lines skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TableError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise TableError(f"{path}: not a UTF-8 text file ({exc.reason}); save the table as CSV") from None
    reader = csv.reader(text.splitlines())
    rows = [r for r in reader if any(c.strip() for c in r)]
    if not rows:
        raise TableError(f"{path}: empty file; expected a CSV with a header row")
    header = [h.strip() for h in rows[0]]
    out = []
    for i, r in enumerate(rows[1:], 2):
        if len(r) != len(header):
            raise TableError(f"{path}: line {i} has {len(r)} cells, the header has {len(header)}")
        out.append({h: c.strip() for h, c in zip(header, r)})
    return header, out


def column(path: Path, header: list[str], rows: list[dict[str, str]], name: str) -> Column:
    """Column ``name`` converted to fractions, with its detected unit."""
    if name not in header:
        raise TableError(f"{path}: no column {name!r}; columns are: {', '.join(header)}")
    cells = [r[name] for r in rows]
    with_sign = [c.endswith("%") for c in cells]
    if any(with_sign) and not all(with_sign):
        i = with_sign.index(False) if with_sign[0] else with_sign.index(True)
        raise TableError(f"{path}: column {name!r} mixes values with and without '%' (row {i + 1}: {cells[i]!r}); "
                         f"use one unit per column")
    values = []
    for i, c in enumerate(cells, 1):
        text = c[:-1].strip() if c.endswith("%") else c
        try:
            v = float(text)
        except ValueError:
            raise TableError(f"{path}: column {name!r}, row {i}: {c!r} is not a number") from None
        if not math.isfinite(v):
            raise TableError(f"{path}: column {name!r}, row {i}: {c!r} is not a finite number")
        values.append(v)
    arr = np.array(values, dtype=float)
    if all(with_sign) and cells:
        unit = "percent (%)"
    elif arr.size and arr.max() > 1.0:
        unit = "percent"
    else:
        unit = "fraction"
    if unit != "fraction":
        arr = arr / 100.0
    bad = np.flatnonzero((arr < 0) | (arr > 1))
    if bad.size:
        i = int(bad[0])
        raise TableError(f"{path}: column {name!r}, row {i + 1}: {cells[i]!r} is outside [0, 1] as a {unit} "
                         f"accuracy; values must be fractions, percents, or percents with '%'")
    return Column(name, arr, unit)


def read_xy(path: Path, x: str, y: str, label: str | None = None) -> tuple[Column, Column, list[str]]:
    """Columns ``x`` and ``y`` of a CSV as fractions, plus row labels (column ``label`` or row numbers)."""
    header, rows = read_rows(path)
    if len(rows) < MIN_ROWS:
        raise TableError(f"{path}: {len(rows)} data row(s); a trend needs at least {MIN_ROWS}")
    cx, cy = column(path, header, rows, x), column(path, header, rows, y)
    if label is not None and label not in header:
        raise TableError(f"{path}: no column {label!r} for labels; columns are: {', '.join(header)}")
    labels = [r[label] for r in rows] if label is not None else [f"row {i}" for i in range(1, len(rows) + 1)]
    if np.ptp(cx.values) == 0:
        raise TableError(f"{path}: every value of column {x!r} is the same; no line can be fitted")
    return cx, cy, labels
