"""``shiftbench show-shifts``: one picture of every dataset shift of a suite, at every severity.

Reviewers of a benchmark need to see what a shift does before trusting numbers measured on it; a
mis-scaled corruption (pure noise at severity 1, no change at severity 5) is obvious here and
invisible in a table.  Rows are the suite's dataset shifts, columns the clean images and
severities 1..5; each cell shows the same few test examples.  A shift without severities (a
generated or re-collected test set) shows its own examples across the row instead.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import datasets, shifts
from ..registry import Registry, ShiftSpec

N_EXAMPLES = 3  # test images per cell
LEVELS = (1, 2, 3, 4, 5)


def _data_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "the data is not there (or not the right data)", not a bug."""
    errors: tuple[type[BaseException], ...] = (FileNotFoundError, ModuleNotFoundError, OSError)
    try:
        from .loaders import DataChecksumError
    except ImportError:
        return errors
    return errors + (DataChecksumError,)


def pick_examples(labels: np.ndarray, k: int = N_EXAMPLES) -> np.ndarray:
    """Indices of the first test example of ``k`` classes spread over the label range."""
    classes = np.unique(labels)
    chosen = classes[np.round(np.linspace(0, len(classes) - 1, min(k, len(classes)))).astype(int)]
    return np.array([int(np.flatnonzero(labels == c)[0]) for c in chosen])


def strip(images: np.ndarray, gap: int = 1) -> np.ndarray:
    """Images (K, C, H, W) side by side as one (H, K*W + gaps, C) array, separated by grey."""
    imgs = np.transpose(images, (0, 2, 3, 1))
    k, h, w, c = imgs.shape
    out = np.full((h, k * w + (k - 1) * gap, c), 0.5, dtype=np.float32)
    for i, im in enumerate(imgs):
        out[:, i * (w + gap):i * (w + gap) + w] = im
    return out


def collect(registry: Registry, suite_id: str, data_dir: str | None = None) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Per shift: its cells (column index -> strip).  Raises with the shift's file on failure."""
    suite = registry.suite(suite_id)
    x_id, y_id = datasets.load_id(suite.dataset, "test", data_dir)
    idx = pick_examples(y_id.numpy())
    clean = strip(x_id.numpy()[idx])
    rows = []
    for name in suite.dataset_shifts:
        spec: ShiftSpec = registry.shift(name)
        cells: dict[int, np.ndarray] = {}
        try:
            if spec.severities:
                cells[0] = clean
                for s in spec.severities:
                    x, y = shifts.load_shift(spec, s, seed=suite.seed, data_dir=data_dir)
                    # a corruption keeps the ID order; a re-collected set picks its own examples
                    own = idx if len(x) == len(y_id) else pick_examples(y.numpy())
                    cells[s] = strip(x.numpy()[own])
            else:
                x, y = shifts.load_shift(spec, None, seed=suite.seed, data_dir=data_dir)
                per = np.array_split(np.arange(min(len(x), N_EXAMPLES * len(LEVELS))), len(LEVELS))
                for col, part in zip(LEVELS, per):
                    if len(part):
                        cells[col] = strip(x.numpy()[part])
        except _data_errors() as exc:
            raise FileNotFoundError(f"{spec.path}: shift '{spec.id}' could not be loaded: {exc}") from None
        rows.append({"spec": spec, "cells": cells})
    return rows, clean


def draw(rows: list[dict[str, Any]], out: Path, title: str) -> Path:
    """Draw the grid with matplotlib (Agg) and write a PNG with no time stamp (byte-stable)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ncols = 1 + len(LEVELS)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.35 * ncols + 1.6, 0.62 * len(rows) + 0.9),
                             squeeze=False)
    headers = ["clean"] + [f"severity {s}" for s in LEVELS]
    for r, row in enumerate(rows):
        spec: ShiftSpec = row["spec"]
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if r == 0:
                ax.set_title(headers[c], fontsize=8)
            img = row["cells"].get(c)
            if img is None:
                if c:  # column 0 keeps its (invisible) axis so the row label shows
                    ax.axis("off")
                continue
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
        label = f"{spec.id}\n({spec.family})" if spec.severities else f"{spec.id}\n({spec.family}, no levels)"
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7, labelpad=4)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out


def main(args: Any) -> int:
    """CLI entry: ``shiftbench show-shifts --suite S --out FILE.png``."""
    # no weights check: a picture of the shifts needs no models (the zoo may not be trained yet);
    # unknown shift ids still raise with a "did you mean" from Registry.shift
    registry = Registry(args.registry, check_files=False)
    suite = registry.suite(args.suite)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        print(f"error: --out must be a .png file, got {out}", file=sys.stderr)
        return 2
    if not suite.dataset_shifts:
        print(f"error: suite '{suite.id}' ({suite.path}) lists no dataset_shifts to show", file=sys.stderr)
        return 2
    data_dir = getattr(args, "data_dir", None)
    try:
        rows, _ = collect(registry, suite.id, data_dir)
    except _data_errors() as exc:
        print(f"error: suite '{suite.id}' needs data that is not available: {exc}\n"
              f"  put the '{suite.dataset}' files under --data-dir (default: {datasets.data_root(data_dir)}) "
              f"as its shift entries describe, or pick a suite whose data is present (e.g. --suite digits)",
              file=sys.stderr)
        return 2
    title = (f"Dataset shifts of suite '{suite.id}' (seed {suite.seed}); "
             f"made by: shiftbench show-shifts --suite {suite.id} --out {out.name}")
    draw(rows, out, title)
    print(f"wrote {out} ({len(rows)} shifts)", file=sys.stderr)
    return 0
