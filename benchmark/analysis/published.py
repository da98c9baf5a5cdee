"""Published numbers as a check: a model's measured ID cell against what its source reports.

The reference numbers are an entry's ``meta.published`` (clean and AutoAttack accuracy, e.g. from
RobustBench's model_info), else its ``claimed`` (clean and robust accuracy stated by a submitter).
Computed when results are aggregated, from the stored ID cell and the entry, so stored results and
cell keys do not change.  Two verdicts:

* **clean disagrees**: the reference clean accuracy lies outside the Wilson interval (99%) of the
  measured one at our n: more than sampling explains.  The usual causes: a wrong data folder or
  label order, inputs in [0, 255] instead of [0, 1], normalisation applied twice or not at all,
  the model left in training mode.
* **robust above**: the lower bound of the measured robust accuracy's Wilson interval (99%) lies
  above the reference AutoAttack (or claimed robust) accuracy: our attack is weaker than the one
  behind the reference, or the data is not what the reference used.  Lower is no flag: our attack
  being stronger, or a harder subset, is not an error.  Checked only where the ID threat is the
  one the reference number was measured under (same norm, a budget at least as large).

99% rather than 95%: a zoo of 165 models would otherwise flag about eight good ones by chance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..registry import LP_NORMS, ModelSpec, ThreatSpec, parse_eps
from .stats import wilson

Z_CHECK = 2.5758293035489004  # 99% two-sided
EPS_RTOL = 0.02  # a published budget of 0.031 is RobustBench's 8/255 (0.0314) for this check
CAUSES = ("check the data folder and label order, [0, 255] vs [0, 1] inputs, the normalisation and eval mode")


@dataclass(frozen=True)
class Check:
    """One comparison of a measured ID accuracy with a reference number."""

    metric: str  # "clean" | "robust"
    measured: float
    n: int
    lo: float  # 99% Wilson interval of the measurement
    hi: float
    reference: float
    source: str  # "published: <source>" or "claimed"
    flagged: bool

    def text(self) -> str:
        what = "ID clean" if self.metric == "clean" else "ID robust"
        verdict = ("disagrees with" if self.metric == "clean" else "is above") if self.flagged else "agrees with"
        return (f"{what} {100 * self.measured:.1f}% (99% interval {100 * self.lo:.1f}-{100 * self.hi:.1f}, "
                f"n={self.n}) {verdict} the {self.source} {100 * self.reference:.1f}%")


def references(spec: ModelSpec) -> dict[str, tuple[float, str]]:
    """metric -> (reference accuracy, where it comes from): ``meta.published`` else ``claimed``."""
    out: dict[str, tuple[float, str]] = {}
    pub = spec.meta.get("published") if spec.meta else None
    if pub:
        src = f"published ({pub.get('source', '?')})"
        if "clean_acc" in pub:
            out["clean"] = (float(pub["clean_acc"]), src)
        if "autoattack_acc" in pub:
            out["robust"] = (float(pub["autoattack_acc"]), src.replace("published", "published AutoAttack", 1))
    for metric, key in (("clean", "clean_acc"), ("robust", "robust_acc")):
        if metric not in out and key in spec.claimed:
            out[metric] = (float(spec.claimed[key]), "claimed")
    return out


def same_threat(spec: ModelSpec, threat: ThreatSpec) -> bool:
    """Whether a robust reference number applies under ``threat``: a published number needs the
    entry's ``meta.threat`` norm and a budget at least ``meta.eps``; a claimed one is made under the
    suite's ID threat by definition."""
    pub = spec.meta.get("published") if spec.meta else None
    if not pub or "autoattack_acc" not in pub:
        return True  # a claim: stated for the suite it is submitted to
    norm, eps = spec.meta.get("threat"), spec.meta.get("eps")
    if threat.kind != "lp" or norm not in LP_NORMS or threat.norm != norm or eps is None:
        return False
    ref = parse_eps(eps, spec.path, "meta.eps")
    return threat.eps >= ref * (1 - EPS_RTOL)


def compare(spec: ModelSpec, threat: ThreatSpec, clean_correct: Any, robust_correct: Any) -> tuple[Check, ...]:
    """The checks of one model's ID cell (per-example 0/1 outcomes) against its reference numbers."""
    refs = references(spec)
    out = []
    for metric, bits in (("clean", clean_correct), ("robust", robust_correct)):
        if metric not in refs or (metric == "robust" and not same_threat(spec, threat)):
            continue
        n = int(len(bits))
        if n == 0:
            continue
        k = int(sum(int(b) for b in bits))
        lo, hi = wilson(k, n, Z_CHECK)
        ref, src = refs[metric]
        flagged = (not lo <= ref <= hi) if metric == "clean" else lo > ref
        out.append(Check(metric, k / n, n, lo, hi, ref, src, bool(flagged and math.isfinite(lo))))
    return tuple(out)


def flag_texts(checks: tuple[Check, ...]) -> tuple[str, ...]:
    """The leaderboard flags of the failed checks, with what to look at."""
    out = []
    for c in checks:
        if c.flagged:
            why = CAUSES if c.metric == "clean" else "a weaker attack than the reference's, or other data"
            out.append(f"{c.text()}: {why}")
    return tuple(out)


def check_id_cells(cells: Any, results_dir: Any) -> list[tuple[str, tuple[Check, ...]]]:
    """(model id, checks) for every ID cell among ``cells`` (planned cells) whose result file is
    present and verifies and whose model has reference numbers: what ``shiftbench run`` reports as
    soon as an ID cell is done, before the shifts' cells are paid for."""
    from pathlib import Path

    from ..run import store

    out = []
    for c in cells:
        if c.role != "id" or not references(c.model):
            continue
        path = Path(results_dir) / c.filename
        if not path.is_file():
            continue
        verdict = store.check_result(path, expected_key=c.key)
        if not verdict.ok:
            continue
        p = verdict.payload
        out.append((c.model.id, compare(c.model, c.threat, store.unbits(p["clean_correct"]),
                                        store.unbits(p["robust_correct"]))))
    return out
