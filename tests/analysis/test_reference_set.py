"""OOD-T (reference set): the mean over the threat shifts marked ``reference_set: true`` only.

A tiny registry of real entries in a tmp dir (three models whose user code is never loaded, an ID
threat and three threat shifts, two of them marked), result files written by the real plan,
``result_payload`` and ``store.write_result``, with outcomes chosen by hand so that every mean is
known exactly.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmark.analysis import aggregate
from benchmark.analysis.stats import weighted_mean_interval
from benchmark.registry import Registry
from benchmark.report import leaderboard, site
from benchmark.run import store
from benchmark.run.evaluate import Outcome, result_payload
from benchmark.run.plan import plan_suite
from conftest import write_yaml

SUITE = "ref"
N = 20
REFERENCE = ("t-big", "t-l2")  # marked reference_set: true; t-extra is not
# model -> threat -> robust examples out of N (the first k of the N examples)
ROBUST = {
    "a": {"t-id": 15, "t-big": 10, "t-l2": 14, "t-extra": 2},
    "b": {"t-id": 12, "t-big": 6, "t-l2": 9, "t-extra": 17},
    "c": {"t-id": 8, "t-big": 3, "t-l2": 5, "t-extra": 4},
}


def bits(model: str, threat: str) -> np.ndarray:
    return np.arange(N) < ROBUST[model][threat]


def mark(root: Path, marked: tuple[str, ...]) -> Registry:
    """Set ``reference_set`` on exactly the ``marked`` threat entries; the registry read anew."""
    for path in (root / "threats").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        data.pop("reference_set", None)
        if data["id"] in marked:
            data["reference_set"] = True
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return Registry(root)


@pytest.fixture()
def ref(tmp_path: Path):
    root = tmp_path / "registry"
    for mid in ROBUST:
        write_yaml(root / "models" / f"{mid}.yaml", {"id": mid, "source": f"python:toy_models:{mid}",
                                                     "dataset": "digits", "architecture": "MLP", "training": "x"})
    for tid, norm, eps in (("t-id", "Linf", 0.1), ("t-big", "Linf", 0.2), ("t-l2", "L2", 1.0),
                           ("t-extra", "Linf", 0.3)):
        write_yaml(root / "threats" / f"{tid}.yaml", {"id": tid, "kind": "lp", "norm": norm, "eps": eps,
                                                      "attack": "pgd", "attack_args": {"steps": 2}})
    write_yaml(root / "suites" / f"{SUITE}.yaml", {"id": SUITE, "dataset": "digits", "id_threat": "t-id",
                                                   "threat_shifts": ["t-big", "t-l2", "t-extra"], "n_examples": N})
    reg = mark(root, REFERENCE)
    results = tmp_path / "results"
    for cell in plan_suite(reg, SUITE):
        ok = {"robust_le_clean": {"ok": True}}
        outcome = Outcome(np.ones(N, bool), bits(cell.model.id, cell.threat.id), 0.01, 0.02, ok)
        store.write_result(results / SUITE / cell.filename, result_payload(cell, outcome, "pgd"))
    return reg, results


def summary(reg: Registry, results: Path) -> aggregate.Summary:
    return aggregate.summarize(reg, aggregate.load(reg, SUITE, results))


def test_reference_column_is_the_mean_of_the_marked_cells(ref):
    reg, results = ref
    assert aggregate.reference_threats(reg, reg.suite(SUITE)) == REFERENCE
    m = summary(reg, results).models
    for mid, k in ROBUST.items():
        assert m.loc[mid, aggregate.REFERENCE_METRIC] == pytest.approx((k["t-big"] + k["t-l2"]) / 2 / N)
        assert m.loc[mid, "ood_t_robust"] == pytest.approx((k["t-big"] + k["t-l2"] + k["t-extra"]) / 3 / N)
        # the same paired interval as OOD-T, over the reference cells only
        expect = weighted_mean_interval([bits(mid, t) for t in REFERENCE], [0.5, 0.5])
        got = tuple(m.loc[mid, f"{aggregate.REFERENCE_METRIC}{s}"] for s in ("", "_lo", "_hi"))
        assert got == pytest.approx(expect) and got[1] < got[0] < got[2]
        assert m.loc[mid, "flags"] == ()
    # t-extra differs from the reference cells' mean, so the two columns differ
    assert m.loc["a", aggregate.REFERENCE_METRIC] == pytest.approx(0.6) and m.loc["a", "ood_t_robust"] < 0.45
    assert m.loc["b", aggregate.REFERENCE_METRIC] < m.loc["b", "ood_t_robust"]
    # every threat shift marked: the reference set is OOD-T, value and interval alike
    m = summary(mark(reg.root, ("t-big", "t-l2", "t-extra")), results).models
    for s in ("", "_lo", "_hi"):
        assert np.array_equal(m[f"{aggregate.REFERENCE_METRIC}{s}"], m[f"ood_t_robust{s}"])


def test_model_missing_a_reference_cell_gets_no_value(ref, tmp_path):
    reg, results = ref
    for mid, threat in (("b", "t-l2"), ("c", "t-extra")):
        (victim,) = (results / SUITE / mid).glob(f"id__{threat}__*.json")
        victim.unlink()
    m = summary(reg, results).models
    assert math.isnan(m.loc["b", aggregate.REFERENCE_METRIC])
    assert math.isnan(m.loc["b", f"{aggregate.REFERENCE_METRIC}_lo"])
    assert "no OOD-T (reference set): missing t-l2" in m.loc["b", "flags"]
    assert m.loc["b", "ood_t_robust"] == pytest.approx((6 + 17) / 2 / N)  # OOD-T: the cells present
    # a missing non-reference cell leaves the reference set whole
    assert m.loc["c", aggregate.REFERENCE_METRIC] == pytest.approx((3 + 5) / 2 / N)
    assert not any("reference set" in f for f in m.loc["c", "flags"])
    assert m.loc["a", aggregate.REFERENCE_METRIC] == pytest.approx(0.6)
    text = leaderboard.write(reg, SUITE, results, tmp_path / "lb.md").read_text()
    assert "`b`: incomplete: 1 of 4 cells missing" in text and "no OOD-T (reference set): missing t-l2" in text


def test_suite_without_marked_threats_has_no_column(ref, tmp_path):
    reg, results = mark(ref[0].root, ()), ref[1]
    assert aggregate.reference_threats(reg, reg.suite(SUITE)) == ()
    m = summary(reg, results).models
    assert not [c for c in m.columns if c.startswith(aggregate.REFERENCE_METRIC)]
    board = leaderboard.build_board(reg, SUITE, results)
    assert [label for label, _ in leaderboard.ranking_metrics(board)] == ["OOD-T robust"]
    text = leaderboard.write(reg, SUITE, results, tmp_path / "lb.md").read_text()
    assert "| OOD-T robust | AER |" in text and "reference set" not in text
    assert "reference set" not in site.suite_page(board, "x") + site.model_page(board, "a", "x")


def test_reference_marker_is_not_part_of_cell_keys(ref):
    """Flipping ``reference_set`` changes no number, so no cell key: every result stays current."""
    reg, results = ref
    keys = [c.key for c in plan_suite(reg, SUITE)]
    for marked in ((), ("t-extra",), ("t-id", "t-big", "t-l2", "t-extra")):
        flipped = mark(reg.root, marked)
        assert [c.key for c in plan_suite(flipped, SUITE)] == keys, marked
        res = aggregate.load(flipped, SUITE, results)
        assert res.n_missing == 0 and res.n_stale == 0 and res.n_present == len(keys)
    # a field that changes the number does change the keys of that threat's cells (the check can fail)
    path = reg.root / "threats" / "t-big.yaml"
    path.write_text(path.read_text().replace("eps: 0.2", "eps: 0.25"))
    changed = [a != b for a, b in zip(keys, (c.key for c in plan_suite(Registry(reg.root), SUITE)))]
    assert sum(changed) == len(ROBUST)
