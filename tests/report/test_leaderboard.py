"""Aggregation and the rendered leaderboard, from synthetic result files written in a tmp dir.

The results are made with the real path: a registry of real entries, the real plan (so keys
are the ones the suite expects), ``evaluate.result_payload`` and ``store.write_result``.
Only the per-example outcomes are synthetic (drawn from a fixed seed), which keeps this fast.
Set ``UPDATE_GOLDEN=1`` to rewrite tests/report/golden/leaderboard_toy.md.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmark.analysis import aggregate
from benchmark.report import leaderboard
from benchmark.run import store
from benchmark.run.evaluate import Outcome, result_payload
from benchmark.run.plan import plan_suite
from benchmark.registry import Registry

GOLDEN = Path(__file__).parent / "golden" / "leaderboard_toy.md"
SUITE = "toy"
N = 40
# model id -> (architecture, training, clean accuracy, robust/clean ratio under the ID threat)
MODELS = {
    "toy-mlp-std": ("MLP", "standard", 0.95, 0.05),
    "toy-mlp-at": ("MLP", "PGD-AT", 0.85, 0.55),
    "toy-cnn-std": ("SmallCNN", "standard", 0.97, 0.10),
    "toy-cnn-at": ("SmallCNN", "PGD-AT", 0.90, 0.70),
    "toy-cnn-trades": ("SmallCNN", "TRADES", 0.88, 0.75),
}
MISSING = ("toy-mlp-std", "noise-3")  # (model, data) of the one cell we leave out
FLAGGED = ("toy-cnn-trades", "toy-l2")  # (model, threat) of a cell whose budget check fails


def _yaml(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def make_registry(root: Path) -> Registry:
    """Five models (user-code sources: never loaded here), two dataset shifts, two threat shifts."""
    for mid, (arch, training, _, _) in MODELS.items():
        meta = {"training_family": {"standard": "standard", "PGD-AT": "pgd-at", "TRADES": "trades"}[training],
                "extra_data": "none", "arch": {"MLP": "mlp", "SmallCNN": "cnn"}[arch], "threat": "Linf",
                "provenance": {"recipe": "tests/report/test_leaderboard.py"}}
        _yaml(root / "models" / "digits" / f"{mid}.yaml", {
            "id": mid, "source": f"python:toy_models:{mid.replace('-', '_')}", "dataset": "digits",
            "architecture": arch, "training": training, "meta": meta})
    _yaml(root / "shifts" / "digits" / "noise.yaml", {
        "id": "noise", "dataset": "digits", "source": "synthetic:gaussian_noise", "family": "noise",
        "severities": [1, 3]})
    _yaml(root / "shifts" / "digits" / "blur.yaml", {
        "id": "blur", "dataset": "digits", "source": "synthetic:gaussian_blur", "family": "blur"})
    threats = {"toy-linf": ("Linf", 0.1, "pgd"), "toy-linf-big": ("Linf", 0.2, "pgd"), "toy-l2": ("L2", 1.0, "apgd")}
    for tid, (norm, eps, attack) in threats.items():
        _yaml(root / "threats" / "digits" / f"{tid}.yaml", {
            "id": tid, "kind": "lp", "norm": norm, "eps": eps, "attack": attack, "attack_args": {"steps": 2}})
    _yaml(root / "suites" / f"{SUITE}.yaml", {
        "id": SUITE, "dataset": "digits", "id_threat": "toy-linf", "dataset_shifts": ["noise", "blur"],
        "threat_shifts": ["toy-linf-big", "toy-l2"], "n_examples": N, "seed": 0,
        "description": "A synthetic suite for the leaderboard tests."})
    return Registry(root)


def mark_reference(root: Path, *threats: str) -> Registry:
    """Mark threat entries ``reference_set: true`` (no number changes, so no result goes stale)."""
    for tid in threats:
        path = root / "threats" / "digits" / f"{tid}.yaml"
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "reference_set": True}, sort_keys=False))
    return Registry(root)


def _difficulty(cell) -> float:
    """How much harder than ID a cell is (a fraction of accuracy kept)."""
    if cell.role == "dataset":
        return {"noise": 0.9 - 0.1 * (cell.severity or 0), "blur": 0.8}[cell.shift.id]
    if cell.role == "threat":
        return {"toy-linf-big": 0.5, "toy-l2": 0.7}[cell.threat.id]
    return 1.0


def write_results(reg: Registry, results_root: Path) -> list:
    """One result file per planned cell (but one), plus one stale file from an older setting."""
    cells = plan_suite(reg, SUITE)
    folder = results_root / SUITE
    for i, cell in enumerate(cells):
        if (cell.model.id, cell.data_name) == MISSING:
            continue
        _, _, clean_p, ratio = MODELS[cell.model.id]
        rng = np.random.default_rng(1000 + i)
        keep = _difficulty(cell)
        clean = rng.random(N) < clean_p * (keep if cell.role == "dataset" else 1.0)
        robust = clean & (rng.random(N) < ratio * (keep if cell.role != "id" else 1.0))
        checks = {"robust_le_clean": {"ok": True}, "in_range": {"ok": True},
                  "in_budget": {"ok": True, "max_norm": cell.threat.eps}, "deterministic": {"ok": True}}
        if (cell.model.id, cell.threat.id) == FLAGGED:
            checks["in_budget"] = {"ok": False, "max_norm": 1.5}
        payload = result_payload(cell, Outcome(clean, robust, 0.01, 0.02, checks), cell.threat.attack)
        store.write_result(folder / cell.filename, payload)
    old = plan_suite(reg, SUITE, models="toy-mlp-at", shifts="id", n_examples=N // 2)[0]  # other n: other key
    clean = np.ones(N // 2, bool)
    store.write_result(folder / old.filename, result_payload(old, Outcome(clean, clean, 0, 0, {}), "pgd"))
    return cells


@pytest.fixture()
def toy(tmp_path: Path):
    reg = make_registry(tmp_path / "registry")
    results = tmp_path / "results"
    cells = write_results(reg, results)
    return reg, results, cells


def test_aggregation_drops_stale_and_counts_missing(toy):
    reg, results, cells = toy
    res = aggregate.load(reg, SUITE, results)
    assert res.n_planned == len(cells) == 5 * (1 + 3 + 2)
    assert res.n_missing == 1 and res.n_stale == 1
    assert res.n_present == len(cells) - 1 == len(res.cells)
    assert res.cells["key"].is_unique and set(res.cells["key"]) <= {c.key for c in cells}
    assert all(p.stat().st_size > 0 for p in res.stale)
    assert "__" in res.stale[0].name and res.stale[0].name.startswith("id__toy-linf__")
    missing = res.planned[~res.planned["present"]]
    assert list(zip(missing["model"], missing["data"])) == [MISSING]


def test_summary_matches_hand_computed_means(toy):
    reg, results, _ = toy
    res = aggregate.load(reg, SUITE, results)
    summ = aggregate.summarize(reg, res)
    m = summ.models
    assert list(m.index) == sorted(MODELS)
    c = res.cells.set_index(["model", "data", "threat"])
    mid = "toy-cnn-at"

    def rob(data, threat="toy-linf"):
        return c.loc[(mid, data, threat), "robust_acc"]

    noise = (rob("noise-1") + rob("noise-3")) / 2
    ood_d = (noise + rob("blur")) / 2
    ood_t = (rob("id", "toy-linf-big") + rob("id", "toy-l2")) / 2
    assert m.loc[mid, "id_robust"] == pytest.approx(rob("id"))
    assert m.loc[mid, "ood_d_robust"] == pytest.approx(ood_d)
    assert m.loc[mid, "ood_t_robust"] == pytest.approx(ood_t)
    assert m.loc[mid, "ood_robust"] == pytest.approx((ood_d + ood_t) / 2)
    # the model with a missing severity averages what is present, and says so
    std = m.loc["toy-mlp-std"]
    assert std["ood_d_clean"] == pytest.approx(
        (c.loc[("toy-mlp-std", "noise-1", "toy-linf"), "clean_acc"] + c.loc[("toy-mlp-std", "blur", "toy-linf"),
                                                                             "clean_acc"]) / 2)
    assert any("incomplete: 1 of 6" in f for f in std["flags"])
    assert any("in_budget" in f and "toy-l2" in f for f in m.loc["toy-cnn-trades", "flags"])
    assert m.loc["toy-cnn-at", "flags"] == ()
    assert m.loc["toy-cnn-trades", "attacks"] == ("apgd", "pgd")
    assert m.loc["toy-cnn-trades", "architecture"] == "SmallCNN" and m.loc["toy-cnn-trades", "training"] == "TRADES"
    # invariants: robust <= clean; every interval holds its estimate
    assert (m["id_robust"] <= m["id_clean"]).all() and (m["ood_d_robust"] <= m["ood_d_clean"]).all()
    for col in aggregate.METRICS:
        assert ((m[f"{col}_lo"] <= m[col] + 1e-12) & (m[col] <= m[f"{col}_hi"] + 1e-12)).all(), col


def test_leaderboard_golden(toy, tmp_path):
    reg, results, _ = toy
    out = leaderboard.write(reg, SUITE, results, tmp_path / "site" / "leaderboard.md")
    text = out.read_text(encoding="utf-8")
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert GOLDEN.is_file(), f"{GOLDEN} missing: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == GOLDEN.read_text(encoding="utf-8"), "leaderboard changed; if intended, rerun with UPDATE_GOLDEN=1"
    assert text.startswith("<!-- generated by: shiftbench leaderboard --suite toy; do not edit -->\n")
    assert (out.parent / "docs" / "toy-trend.png").is_file() and "](docs/toy-trend.png)" in text


def test_ranking_by_ood_robust(toy):
    reg, results, _ = toy
    _, summ, fits = leaderboard.build(reg, SUITE, results)
    order = leaderboard.ranking(summ.models)
    ood = [summ.models.loc[m, "ood_robust"] for m in order]
    assert ood == sorted(ood, reverse=True)
    # the model with a missing cell is not ranked and not fitted, though it has the lowest numbers
    assert MISSING[0] not in order and leaderboard.incomplete(summ.models) == [MISSING[0]]
    assert len(order) == 4
    # the synthetic zoo has a clear positive ID -> OOD trend, fitted on the four complete models
    assert fits["OOD"].line.slope > 0 and fits["OOD"].line.n == 4 and MISSING[0] not in fits["OOD"].models
    assert set(fits) == {"OOD", "OOD-D", "OOD-T", "family:noise", "family:blur", "noise", "blur", "toy-linf-big",
                         "toy-l2"}


def test_regeneration_is_byte_identical(toy, tmp_path):
    reg, results, _ = toy
    a = leaderboard.write(reg, SUITE, results, tmp_path / "a" / "board.md")
    b = leaderboard.write(reg, SUITE, results, tmp_path / "b" / "board.md")
    png_a, png_b = a.parent / "docs" / "toy-trend.png", b.parent / "docs" / "toy-trend.png"
    assert a.read_bytes() == b.read_bytes()
    for kind in ("trend", "shifts", "severity"):  # every plot: same bytes, a real PNG, embedded in the page
        pa, pb = a.parent / "docs" / f"toy-{kind}.png", b.parent / "docs" / f"toy-{kind}.png"
        assert pa.read_bytes() == pb.read_bytes() and pa.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", kind
        assert f"](docs/toy-{kind}.png)" in a.read_text()
        assert b"Software" not in pa.read_bytes()
    first = png_a.read_bytes()
    leaderboard.write(reg, SUITE, results, a)  # rewrite in place: unchanged
    assert png_a.read_bytes() == first
    # a changed result changes the output
    victim = sorted((results / SUITE / "toy-cnn-at").glob("id__toy-linf__*.json"))[0]
    payload = store.read_json(victim)
    payload["robust_correct"] = "0" * N
    payload["robust_acc"] = 0.0
    store.write_result(victim, payload)  # re-signed: a legitimate new result
    c = leaderboard.write(reg, SUITE, results, tmp_path / "c" / "board.md")
    assert c.read_bytes() != a.read_bytes()


def test_cli_leaderboard_and_errors(toy, tmp_path, capsys):
    from benchmark import cli

    reg, results, _ = toy
    out = tmp_path / "cli" / "lb.md"
    rc = cli.main(["leaderboard", "--suite", SUITE, "--registry", str(reg.root), "--results", str(results),
                   "--out", str(out)])
    assert rc == 0 and out.is_file() and "| Rank | Model |" in out.read_text()
    rc = cli.main(["leaderboard", "--suite", SUITE, "--registry", str(reg.root), "--results",
                   str(tmp_path / "empty"), "--out", str(tmp_path / "x.md")])
    assert rc == 2 and "shiftbench run --suite toy" in capsys.readouterr().err


def test_corrupt_result_is_excluded_named_and_counted(toy, tmp_path):
    """A truncated bit string no longer aborts the board: the file is excluded, named with its
    reason, counted as missing (so `run` recomputes it) and the header says so."""
    reg, results, _ = toy
    victim = sorted((results / SUITE / "toy-mlp-at").glob("blur__*.json"))[0]
    payload = store.read_json(victim)
    payload["clean_correct"] = payload["clean_correct"][:-1]
    store.write_json_atomic(victim, payload)
    res = aggregate.load(reg, SUITE, results)
    assert [v.path for v in res.corrupt] == [victim] and "digest mismatch" in res.corrupt[0].problem
    assert res.n_missing == 2 and res.n_present == res.n_verified == 28
    text = leaderboard.write(reg, SUITE, results, tmp_path / "lb.md").read_text()
    assert "Integrity: 28 of 28 results verified" in text and "1 corrupt file(s) excluded" in text
    assert f"`toy-mlp-at/{victim.name}` (digest mismatch" in text


def test_formatting_helpers():
    assert leaderboard.pct(0.5321, 0.49, 0.57) == "53.2 ±4.0"
    assert leaderboard.pct(float("nan")) == "-"
    assert leaderboard.signed_pp(0.021, -0.004, 0.045) == "+2.1 [-0.4, +4.5]"
    assert math.isnan(float("nan")) and leaderboard.signed_pp(float("nan"), 0, 0) == "-"


def test_real_evaluator_results_render(tiny_registry, tmp_path):
    """Result files written by the real evaluator (tiny MLP, PGD) aggregate and render; with a
    single model there is no trend, which the page must survive."""
    from benchmark.run.evaluate import run_grid

    reg = Registry(tiny_registry)
    cells = plan_suite(reg, "tiny", n_examples=60)
    results = tmp_path / "results"
    run_grid(cells, reg, results / "tiny", progress=False)
    res = aggregate.load(reg, "tiny", results)
    # the suite's own n is 120: results made with n=60 are not the current plan
    assert res.n_present == 0 and res.n_stale == len(cells) == 4 and res.n_missing == 4
    run_grid(plan_suite(reg, "tiny"), reg, results / "tiny", progress=False)
    out = leaderboard.write(reg, "tiny", results, tmp_path / "lb" / "tiny.md")
    _, summ, fits = leaderboard.build(reg, "tiny", results)
    row = summ.models.loc["tiny"]
    assert 0.5 < row["id_clean"] <= 1 and row["id_robust"] <= row["id_clean"]
    assert row["ood_robust"] == pytest.approx((row["ood_d_robust"] + row["ood_t_robust"]) / 2)
    assert row["flags"] == () and row["attacks"] == ("pgd",)
    assert fits["OOD"].line.n == 1 and math.isnan(fits["OOD"].line.slope)
    text = out.read_text()
    assert "| 1 | tiny |" in text and "4 of 4 cells present, 0 missing, 4 stale" in text


def test_suite_without_threat_shifts(toy):
    """Dropping the threat shifts from the suite makes their results stale and OOD = OOD-D."""
    reg, results, _ = toy
    suite_file = reg.root / "suites" / f"{SUITE}.yaml"
    data = yaml.safe_load(suite_file.read_text())
    data["threat_shifts"] = []
    suite_file.write_text(yaml.safe_dump(data, sort_keys=False))
    reg2 = Registry(reg.root)
    res, summ, fits = leaderboard.build(reg2, SUITE, results)
    assert res.n_stale == 1 + 5 * 2 and res.n_planned == 5 * 4
    m = summ.models
    assert np.allclose(m["ood_robust"], m["ood_d_robust"]) and m["ood_t_robust"].isna().all()
    assert fits["OOD-T"].line.n == 0 and set(fits) == {"OOD", "OOD-D", "OOD-T", "family:noise", "family:blur",
                                                       "noise", "blur"}
    text = leaderboard.render(reg2, res.suite, res, summ, fits, command="x", png_ref=None)
    assert "0 threat shift(s): none" in text and "| OOD-T | raw | - | - | - | - | - | 0 | - |" in text
    assert "| OOD-T | probit | - | - | - | - | - | 0 | - |" in text


def test_committed_leaderboard_matches_committed_results(tmp_path):
    """The repository's leaderboard.md and trend plot are what the committed results/ render to,
    and every planned digits cell has a current result: a registry change that alters a cell
    must come with re-run results and a regenerated board."""
    from benchmark.registry import DEFAULT_REGISTRY

    repo = DEFAULT_REGISTRY.parent
    reg = Registry(DEFAULT_REGISTRY)
    planned = plan_suite(reg, "digits")
    missing = [c.filename for c in planned if not (repo / "results" / "digits" / c.filename).is_file()]
    assert not missing, f"{len(missing)} digits cells have no result, e.g. {missing[:3]}; run `make run`"
    out = leaderboard.write(reg, "digits", repo / "results", tmp_path / "leaderboard.md")
    assert out.read_bytes() == (repo / "leaderboard.md").read_bytes(), "run `shiftbench leaderboard`"
    png = tmp_path / "docs" / "digits-trend.png"
    assert png.read_bytes() == (repo / "docs" / "digits-trend.png").read_bytes()


def test_threat_caveat_is_shown_and_keeps_results_current(toy):
    """A caveat on a threat entry appears on the board and leaves every result current (it changes
    no number, so it is not part of a cell's hash); a changed description does not."""
    reg, results, _ = toy
    path = reg.root / "threats" / "digits" / "toy-l2.yaml"
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "caveat": "weaker than\n AutoAttack here."}, sort_keys=False))
    reg2 = Registry(reg.root)
    res, summ, fits = leaderboard.build(reg2, SUITE, results)
    assert res.n_missing == 1 and res.n_stale == 1  # as without the caveat
    text = leaderboard.render(reg2, res.suite, res, summ, fits, command="x", png_ref=None)
    assert "Caveats:\n\n- `toy-l2`: weaker than AutoAttack here.\n" in text
    path.write_text(yaml.safe_dump({**data, "description": "changed"}, sort_keys=False))
    assert leaderboard.build(Registry(reg.root), SUITE, results)[0].n_missing == 1 + 5


def test_mixed_versions_are_stated(toy, tmp_path):
    """Results computed with different package versions (or settings recorded next to them) are
    named on the board with their cell counts; uniform versions say nothing."""
    reg, results, _ = toy
    text = leaderboard.write(reg, SUITE, results, tmp_path / "a" / "lb.md").read_text()
    assert "Mixed versions" not in text
    victims = sorted((results / SUITE / "toy-cnn-at").glob("*.json"))[:2]
    for v in victims:
        payload = store.read_json(v)
        payload["versions"] = {**payload["versions"], "torch": "0.0.1-old"}
        store.write_result(v, payload)  # re-signed: results really computed with another version
    res = aggregate.load(reg, SUITE, results)
    mixed = aggregate.mixed_versions(res)
    assert list(mixed) == ["torch"] and mixed["torch"]["0.0.1-old"] == 2
    assert sum(mixed["torch"].values()) == res.n_present
    text = leaderboard.write(reg, SUITE, results, tmp_path / "b" / "lb.md").read_text()
    assert "Mixed versions" in text and "torch 0.0.1-old (2 cells), " in text


def test_aer_intervals_include_example_noise_and_bold_only_when_significant(toy):
    reg, results, _ = toy
    res = aggregate.load(reg, SUITE, results)
    summ = aggregate.summarize(reg, res)
    board = leaderboard.analyse(reg, res, summ)
    ood = board.fits["OOD"]
    assert ood.example_noise and board.probit["OOD"].example_noise and not board.fits["noise"].example_noise
    from benchmark.analysis import trends

    # the board's intervals are those of the fit fed with the per-example bootstrap of the complete
    # models (that this widens intervals is tested in tests/analysis/test_trends.py)
    complete = leaderboard.ranking(summ.models)
    sub = aggregate.Summary(summ.models.loc[sorted(complete)], summ.per_shift)
    noise = aggregate.example_bootstrap(res, sub, n_boot=ood.n_boot, seed=ood.seed)
    again = trends.fit_trend("OOD", tuple(sub.models.index), sub.models["id_robust"], sub.models["ood_robust"],
                             x_boot=noise["id_robust"], y_boot=noise["ood_robust"])
    models_only = trends.fit_trend("OOD", ood.models, ood.x, ood.y)
    assert np.array_equal(again.aer_ci, ood.aer_ci) and not np.array_equal(models_only.aer_ci, ood.aer_ci)
    # each model's bootstrap ID robust accuracy scatters around its value by about its binomial sd
    sd = noise["id_robust"].std(axis=0)
    p = sub.models["id_robust"].to_numpy()
    assert sd == pytest.approx(np.sqrt(p * (1 - p) / N), rel=0.15)
    for m in ood.models:
        cell = leaderboard.aer_text(ood, m)
        assert cell.startswith("**") == ood.aer_significant(m)


def test_no_complete_model_renders_and_fits_nothing(toy, tmp_path):
    """With a cell missing from every model nothing is ranked or fitted; the page lists them all."""
    reg, results, _ = toy
    for m in MODELS:
        victim = sorted((results / SUITE / m).glob("blur__*.json"))[0]
        victim.unlink()
    out = leaderboard.write(reg, SUITE, results, tmp_path / "lb.md")
    text = out.read_text()
    _, summ, fits = leaderboard.build(reg, SUITE, results)
    assert leaderboard.ranking(summ.models) == [] and leaderboard.incomplete(summ.models) == sorted(MODELS)
    assert fits["OOD"].line.n == 0
    assert "Ceiling: no OOD trend" in text and "| toy-cnn-at | 5 of 6 | blur x toy-linf |" in text
    assert all(f"| {m} | " in text for m in MODELS)


def test_reference_set_column_beside_ood_t(toy):
    """A suite with threat shifts marked ``reference_set`` gets an OOD-T (reference set) column right
    after OOD-T, its numbers from the summary, and one line naming the threats it averages; the
    unmarked toy suite (the golden page) has none."""
    reg, results, _ = toy
    res, summ, _ = leaderboard.build(reg, SUITE, results)
    plain = leaderboard.render(reg, res.suite, res, summ, leaderboard.analyse(reg, res, summ).fits, command="x",
                               png_ref=None)
    assert "reference set" not in plain and aggregate.REFERENCE_METRIC not in summ.models.columns
    reg2 = mark_reference(reg.root, "toy-l2")
    board = leaderboard.build_board(reg2, SUITE, results)
    assert board.reference == ("toy-l2",) and board.res.n_missing == 1 and board.res.n_stale == 1
    text = leaderboard.render(reg2, board.suite, board.res, board.summ, board.fits, command="x", png_ref=None,
                              board=board)
    header = next(line for line in text.splitlines() if line.startswith("| Rank |")).split(" | ")
    assert header[header.index("OOD-T robust") + 1] == "OOD-T (reference set)"
    m = board.summ.models
    c = board.res.cells.set_index(["model", "data", "threat"])
    for rank, mid in enumerate(board.ranked, 1):
        row = next(line for line in text.splitlines() if line.startswith(f"| {rank} | {mid} |")).split(" | ")
        col = header.index("OOD-T (reference set)")
        assert m.loc[mid, aggregate.REFERENCE_METRIC] == pytest.approx(c.loc[(mid, "id", "toy-l2"), "robust_acc"])
        assert row[col] == leaderboard.pct(*(m.loc[mid, aggregate.REFERENCE_METRIC + s] for s in ("", "_lo", "_hi")))
        assert row[col] != row[header.index("OOD-T robust")]  # toy-linf-big, not in the set, differs
    assert ("\nOOD-T (reference set): mean robust accuracy over the 1 threat shift(s) that stand for "
            "OODRobustBench's six (toy-l2), comparable with its OOD-T in kind, not number by number: our non-Lp "
            "attacks are checked for convergence, while the reference's LPA loses about half of its successes, so its "
            "published LPA numbers sit far above ours (docs/threats.md); OOD-T robust averages all 2 of the suite's "
            "threat shifts.") in text


def test_a_cell_escalated_for_convergence_is_counted_per_threat_not_flagged(toy, tmp_path):
    """A failed ``convergence`` check whose cell was escalated to the stronger run stores the
    stronger run's number: the board counts such cells per threat and flags no model for them; the
    same failure without an escalation (nothing acted on it) is still a flag."""
    reg, results, cells = toy
    by = {(c.model.id, c.data_name, c.threat.id): c for c in cells}
    conv = {"ok": False, "n": 4, "broken_by_stronger": 3, "attack": "apgd"}
    for (mid, tid), escalation in ((("toy-cnn-at", "toy-l2"), {"reasons": ["convergence"], "n": 10, "broken": 3}),
                                   (("toy-mlp-at", "toy-l2"), None)):
        cell = by[(mid, "id", tid)]
        path = results / SUITE / cell.filename
        old = store.read_json(path)
        clean, robust = store.unbits(old["clean_correct"]), store.unbits(old["robust_correct"])
        out = Outcome(clean, robust, 0.01, 0.02, {"in_range": {"ok": True}, "convergence": conv},
                      escalation=escalation)
        store.write_result(path, result_payload(cell, out, cell.threat.attack))
    res = aggregate.load(reg, SUITE, results)
    flags = aggregate.summarize(reg, res).models["flags"]
    assert flags.loc["toy-cnn-at"] == ()
    assert any(f.startswith("trust check 'convergence' failed in 1 cell") for f in flags.loc["toy-mlp-at"])
    sentence = leaderboard.escalation_sentence(res)
    assert sentence is not None and "`toy-l2` 1 of 5 cells" in sentence
    page = leaderboard.write(reg, SUITE, results, tmp_path / "site" / "leaderboard.md").read_text(encoding="utf-8")
    assert sentence in page
