"""Trust checks run with every evaluation and stored in the result.

Each check is ``{"ok": bool, ...details}``.  A failed check flags the model on the leaderboard.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .attacks._lp import lp_norm

TOL = 1e-5


def cell_checks(model, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, threat,
                clean_correct: np.ndarray, robust_correct: np.ndarray) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    checks["robust_le_clean"] = {"ok": bool((robust_correct <= clean_correct).all())}
    checks["in_range"] = {"ok": bool(x_adv.min() >= -TOL and x_adv.max() <= 1 + TOL)}
    if threat.kind == "lp":
        worst = float(lp_norm(x_adv - x, threat.norm).max()) if len(x) else 0.0
        checks["in_budget"] = {"ok": worst <= threat.eps * (1 + 1e-4) + TOL, "max_norm": round(worst, 6)}
    with torch.no_grad():
        k = min(64, len(x))
        a, b = model(x[:k]), model(x[:k])
    checks["deterministic"] = {"ok": bool(torch.equal(a, b))}
    return checks
