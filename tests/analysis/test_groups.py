"""What beats the trend: a synthetic zoo where one training family lies 15 points above the trend
by construction and the architecture family has no effect (balanced across the two), written as
real result files (real entries, real plan and keys, `result_payload`, `store.write_result`);
only the per-example outcomes are drawn.  `shiftbench analyze` and the leaderboard section must
find the built-in effect and only it."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmark import cli
from benchmark.analysis import groups
from benchmark.registry import Registry
from benchmark.report import leaderboard
from benchmark.run import store
from benchmark.run.evaluate import Outcome, result_payload
from benchmark.run.plan import plan_suite

N = 300
SUITE = "grp"
# model -> (training family, arch, ID robust accuracy); OOD = 0.5 ID + 0.05 (+ 0.15 for "trades")
MODELS = {f"m{i:02d}": ("trades" if i % 2 else "pgd-at", "cnn" if (i // 2) % 2 else "mlp", 0.2 + 0.05 * i)
          for i in range(12)}
BOOST = {"trades": 0.15, "pgd-at": 0.0}


def _yaml(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def make_registry(root: Path) -> Registry:
    for mid, (family, arch, _) in MODELS.items():
        _yaml(root / "models" / "digits" / f"{mid}.yaml", {
            "id": mid, "source": f"python:grp_models:{mid}", "dataset": "digits", "architecture": arch,
            "training": family, "meta": {"training_family": family, "extra_data": "none", "arch": arch,
                                         "params": 1000 * (1 + int(mid[1:])), "threat": "Linf", "eps": 0.1,
                                         "provenance": {"recipe": "tests/analysis/test_groups.py"}}})
    _yaml(root / "shifts" / "digits" / "blur.yaml", {
        "id": "blur", "dataset": "digits", "source": "synthetic:gaussian_blur", "family": "blur"})
    for tid, eps in (("g-linf", 0.1), ("g-linf-big", 0.2)):
        _yaml(root / "threats" / "digits" / f"{tid}.yaml", {
            "id": tid, "kind": "lp", "norm": "Linf", "eps": eps, "attack": "pgd", "attack_args": {"steps": 2}})
    _yaml(root / "suites" / f"{SUITE}.yaml", {
        "id": SUITE, "dataset": "digits", "id_threat": "g-linf", "dataset_shifts": ["blur"],
        "threat_shifts": ["g-linf-big"], "n_examples": N, "seed": 0})
    return Registry(root)


def write_results(reg: Registry, results: Path) -> None:
    for i, cell in enumerate(plan_suite(reg, SUITE)):
        family, _, id_rob = MODELS[cell.model.id]
        p = id_rob if cell.role == "id" else 0.5 * id_rob + 0.05 + BOOST[family]
        rng = np.random.default_rng(500 + i)
        clean = np.ones(N, bool)
        robust = rng.random(N) < p
        checks = {"robust_le_clean": {"ok": True}}
        store.write_result(results / SUITE / cell.filename,
                           result_payload(cell, Outcome(clean, robust, 0.01, 0.02, checks), "pgd"))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("groups")
    reg = make_registry(root / "registry")
    write_results(reg, root / "results")
    board = leaderboard.build_board(reg, SUITE, root / "results")
    assert len(board.ranked) == len(MODELS)
    return reg, root / "results", board


def test_the_built_in_effect_is_found(zoo):
    _, _, board = zoo
    ga = leaderboard.group_analysis(board, ("training_family",))
    by = {g.key: g for g in ga.groups}
    assert [g.key for g in ga.groups] == ["trades", "pgd-at"]  # highest mean AER first
    t, a = by["trades"], by["pgd-at"]
    assert t.verdict == "above" and a.verdict == "below"
    assert t.p_holm < 0.05 and t.aer_ci[0] > 0 and a.aer_ci[1] < 0
    assert 0.10 < t.diff < 0.20 and t.diff_ci[0] < t.diff < t.diff_ci[1]  # the 15 points built in
    # each group's own line: slope ~0.5 as built; the suite's line is flattened by the offset groups
    for g in (t, a):
        assert g.trend.slope_ci[0] < 0.5 < g.trend.slope_ci[1]


def test_no_effect_where_none_was_built(zoo):
    _, _, board = zoo
    ga = leaderboard.group_analysis(board, ("arch",))
    assert {g.key for g in ga.groups} == {"cnn", "mlp"}
    assert all(g.verdict == "-" and g.diff_ci[0] < 0 < g.diff_ci[1] for g in ga.groups)
    assert "No group's mean AER differs" in leaderboard.group_summary(ga)


def test_group_aer_is_the_mean_of_the_boards_aer_and_groups_partition_the_models(zoo):
    _, _, board = zoo
    ood = board.fits["OOD"]
    for by in (("training_family",), ("arch",), ("training_family", "arch"), ("size",)):
        ga = leaderboard.group_analysis(board, by)
        members = [m for g in ga.groups for m in g.models]
        assert sorted(members) == sorted(board.ranked)
        for g in ga.groups:
            assert g.aer == pytest.approx(np.mean([ood.aer_of(m)[0] for m in g.models]))
            assert g.aer_ci[0] <= g.aer <= g.aer_ci[1]
        # raw-scale least squares: residuals sum to zero, so the groups' AERs balance out
        assert sum(g.n * g.aer for g in ga.groups) == pytest.approx(0.0, abs=1e-12)
    cross = leaderboard.group_analysis(board, ("training_family", "arch"))
    assert {g.key for g in cross.groups} == {"trades / cnn", "trades / mlp", "pgd-at / cnn", "pgd-at / mlp"}
    assert {g.key for g in leaderboard.group_analysis(board, ("size",)).groups} == {"<10K", "10K-100K"}


def test_analysis_is_deterministic_and_errors_are_named(zoo):
    _, _, board = zoo
    a = leaderboard.group_analysis(board, ("training_family",)).to_json()
    b = leaderboard.group_analysis(board, ("training_family",)).to_json()
    assert a == b and a["groups"][0]["verdict"] == "above"
    with pytest.raises(groups.GroupError, match="did you mean 'arch'"):
        groups.parse_by("arc")
    with pytest.raises(groups.GroupError, match="twice"):
        groups.parse_by("arch,arch")
    with pytest.raises(groups.GroupError, match="unknown target"):
        leaderboard.group_analysis(board, ("arch",), target="ID")


def test_cli_analyze_text_json_and_plot(zoo, tmp_path, capsys):
    reg, results, _ = zoo
    base = ["analyze", "--suite", SUITE, "--registry", str(reg.root), "--results", str(results)]
    png = tmp_path / "groups.png"
    assert cli.main(base + ["--by", "training_family", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["Group", "Models", "ID"] and lines[3].split()[:2] == ["trades", "6"]
    assert "Above the rest: trades" in out and "below the rest: pgd-at" in out
    first = png.read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    png.unlink()
    assert cli.main(base + ["--by", "training_family", "--out", str(png), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert png.read_bytes() == first  # the same plot, byte for byte
    assert doc["by"] == ["training_family"] and doc["target"] == "OOD" and doc["scale"] == "raw"
    assert [g["group"] for g in doc["groups"]] == ["trades", "pgd-at"]
    assert doc["groups"][0]["vs_rest_ci"][0] > 0 and math.isfinite(doc["trend"]["slope"])
    assert cli.main(base + ["--by", "arch", "--json", "--target", "OOD-D", "--scale", "probit"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["target"] == "OOD-D" and doc["scale"] == "probit" and len(doc["groups"]) == 2
    assert cli.main(base + ["--by", "colour"]) == 2
    assert "unknown field 'colour'" in capsys.readouterr().err
    assert cli.main(["analyze", "--suite", SUITE, "--registry", str(reg.root), "--results", str(tmp_path / "none"),
                     "--by", "arch"]) == 2
    assert "no current results" in capsys.readouterr().err


def test_leaderboard_section_and_byte_identical_regeneration(zoo, tmp_path):
    reg, results, _ = zoo
    out = leaderboard.write(reg, SUITE, results, tmp_path / "board.md")
    text = out.read_text()
    section = text.split("## What beats the trend", 1)[1].split("\n## ", 1)[0]
    assert "### By training family" in section and "### By architecture family" in section
    assert "### By extra data" not in section  # one group only: nothing to compare
    row = next(ln for ln in section.splitlines() if ln.startswith("| trades |"))
    assert "**+" in row  # above the rest, in bold
    assert "Above the rest: trades" in section
    before = out.read_bytes()
    leaderboard.write(reg, SUITE, results, out)
    assert out.read_bytes() == before
