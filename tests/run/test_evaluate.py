"""Evaluator: invariants, caching, resume after an interrupted run, sharding, the Python API."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmark
from benchmark import cli
from benchmark.run import plan, store
from benchmark.run.evaluate import attack_outcome, cell_data, run_grid
from benchmark.registry import Registry, ThreatSpec


def linf(eps: float, steps: int = 10) -> ThreatSpec:
    return ThreatSpec(id=f"linf-{eps}", kind="lp", norm="Linf", eps=eps, attack="pgd",
                      attack_args={"steps": steps})


@pytest.fixture(scope="module")
def id_data():
    from benchmark.data.datasets import load_id

    x, y = load_id("digits", "test")
    return x[:200], y[:200]


def test_eps_zero_gives_clean_accuracy(tiny_model, id_data):
    x, y = id_data
    out = attack_outcome(tiny_model, x, y, linf(0.0), seed=0)
    assert out.clean_correct.mean() > 0.8
    np.testing.assert_array_equal(out.robust_correct, out.clean_correct)


def test_robust_never_exceeds_clean_and_budget_is_monotone(tiny_model, id_data):
    x, y = id_data
    accs = []
    for eps in (0.0, 0.03, 0.1, 0.3):
        out = attack_outcome(tiny_model, x, y, linf(eps), seed=0)
        assert (out.robust_correct <= out.clean_correct).all()
        assert all(c["ok"] for c in out.checks.values()), out.checks
        accs.append(out.robust_correct.mean())
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < accs[0], "a large budget must hurt an undefended model"


def test_attack_is_deterministic(tiny_model, id_data):
    x, y = id_data
    a = attack_outcome(tiny_model, x, y, linf(0.1), seed=3)
    b = attack_outcome(tiny_model, x, y, linf(0.1), seed=3)
    np.testing.assert_array_equal(a.robust_correct, b.robust_correct)


def test_plan_covers_id_dataset_and_threat_shifts(tiny_registry):
    reg = Registry(tiny_registry)
    cells = plan.plan_suite(reg, "tiny")
    names = sorted((c.role, c.data_name, c.threat.id) for c in cells)
    assert names == [
        ("dataset", "gaussian_noise-1", "tiny-linf"),
        ("dataset", "gaussian_noise-3", "tiny-linf"),
        ("id", "id", "tiny-linf"),
        ("threat", "id", "tiny-linf-large"),
    ]
    assert len({c.key for c in cells}) == len(cells)
    only = plan.plan_suite(reg, "tiny", shifts="id", threats="tiny-linf")
    assert [c.role for c in only] == ["id"]


def test_cell_key_tracks_what_changes_the_number(tiny_registry):
    import dataclasses

    reg = Registry(tiny_registry)
    cell = plan.plan_suite(reg, "tiny", shifts="id", threats="tiny-linf")[0]
    same = plan.plan_suite(Registry(tiny_registry), "tiny", shifts="id", threats="tiny-linf")[0]
    assert cell.key == same.key
    variants = [
        dataclasses.replace(cell, n=cell.n + 1),
        dataclasses.replace(cell, seed=cell.seed + 1),
        dataclasses.replace(cell, threat=dataclasses.replace(cell.threat, eps=0.11)),
        dataclasses.replace(cell, threat=dataclasses.replace(cell.threat, attack_args={"steps": 11})),
        dataclasses.replace(cell, model=dataclasses.replace(cell.model, sha256="0" * 64)),
    ]
    assert len({v.key for v in variants} | {cell.key}) == len(variants) + 1


def test_run_writes_results_then_hits_cache(tiny_registry, tmp_path):
    reg = Registry(tiny_registry)
    cells = plan.plan_suite(reg, "tiny")
    out = tmp_path / "results"
    counts = run_grid(cells, reg, out, progress=False)
    assert counts == {"planned": 4, "cached": 0, "ran": 4}
    files = sorted(out.rglob("*.json"))
    assert len(files) == 4
    mtimes = [f.stat().st_mtime_ns for f in files]
    for path, res in store.iter_results(out):
        assert res["robust_acc"] <= res["clean_acc"]
        assert len(res["robust_correct"]) == res["n"] == 120
        assert store.unbits(res["robust_correct"]).mean() == pytest.approx(res["robust_acc"])
        assert res["attack"] == "pgd" and res["key"] in path.name
    again = run_grid(cells, reg, out, progress=False)
    assert again == {"planned": 4, "cached": 4, "ran": 0}
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_interrupted_run_resumes_without_loss(tiny_registry, tmp_path, capsys):
    reg = Registry(tiny_registry)
    cells = plan.plan_suite(reg, "tiny")
    out = tmp_path / "results"
    assert [c.role for c in cells] == ["id", "dataset", "dataset", "threat"]
    # the last cell crashes (its attack does not exist): it is reported failed, the others are kept
    broken = list(cells)
    import dataclasses

    broken[3] = dataclasses.replace(cells[3], threat=dataclasses.replace(cells[3].threat, attack="no-such-attack"))
    counts = run_grid(broken, reg, out, progress=False, chunk=1)
    assert counts["ran"] == 3 and counts["failed"] == 1
    assert "unknown attack" in capsys.readouterr().err
    assert len(list(out.rglob("*.json"))) == 3
    assert not list(out.rglob(".tmp-*")), "no partial files are left behind"
    counts = run_grid(cells, reg, out, progress=False)
    assert counts["cached"] == 3 and counts["ran"] == 1


def test_severities_are_one_batch_whatever_the_filter(tiny_registry, tmp_path):
    """Asking for one severity computes and stores its whole batch, with the same numbers as a
    full run: a cell's result never depends on how the run was filtered."""
    reg = Registry(tiny_registry)
    full = plan.plan_suite(reg, "tiny")
    one = plan.plan_suite(reg, "tiny", shifts="gaussian_noise-3")
    assert [c.data_name for c in one] == ["gaussian_noise-3"]
    assert [c.data_name for c in one[0].batch] == ["gaussian_noise-1", "gaussian_noise-3"]
    counts = run_grid(one, reg, tmp_path / "one", progress=False)
    assert counts == {"planned": 1, "cached": 0, "ran": 2}
    run_grid(full, reg, tmp_path / "full", progress=False)
    for c in one[0].batch:
        a = store.read_json(tmp_path / "one" / c.filename)
        b = store.read_json(tmp_path / "full" / c.filename)
        assert a["clean_correct"] == b["clean_correct"] and a["robust_correct"] == b["robust_correct"]
        assert {"gradients", "budget_monotone", "black_box"} <= set(a["checks"])  # deep checks on every Lp cell
    # a half-written batch is recomputed and completed without touching the file already there
    victim = tmp_path / "one" / one[0].batch[0].filename
    kept = tmp_path / "one" / one[0].filename
    mtime = kept.stat().st_mtime_ns
    victim.unlink()
    assert run_grid(one[0].batch, reg, tmp_path / "one", progress=False)["ran"] == 1
    assert victim.is_file() and kept.stat().st_mtime_ns == mtime


def test_parallel_workers_match_serial(tiny_registry, tmp_path):
    reg = Registry(tiny_registry)
    cells = plan.plan_suite(reg, "tiny")
    run_grid(cells, reg, tmp_path / "a", progress=False)
    run_grid(cells, reg, tmp_path / "b", progress=False, workers=2, chunk=1)
    for c in cells:
        ra = store.read_json(tmp_path / "a" / c.filename)
        rb = store.read_json(tmp_path / "b" / c.filename)
        assert ra["robust_correct"] == rb["robust_correct"]


def test_shards_partition_the_grid(tiny_registry):
    cells = plan.plan_suite(Registry(tiny_registry), "tiny")
    parts = [plan.shard(cells, f"{i}/3") for i in (1, 2, 3)]
    keys = sorted(c.key for p in parts for c in p)
    assert keys == sorted(c.key for c in cells)
    with pytest.raises(ValueError, match="i/N"):
        plan.shard(cells, "x")


def test_cell_data_is_a_fixed_subset(tiny_registry):
    cell = plan.plan_suite(Registry(tiny_registry), "tiny", shifts="gaussian_noise-3")[0]
    x1, y1 = cell_data(cell)
    x2, y2 = cell_data(cell)
    assert x1.shape == (120, 1, 16, 16) and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert 0 <= float(x1.min()) and float(x1.max()) <= 1


def test_python_api_on_in_memory_model(tiny_registry, tiny_model):
    df = benchmark.evaluate(tiny_model, suite="tiny", shifts=[], threats=[], n_examples=60,
                            registry=str(tiny_registry))
    assert list(df["role"]) == ["id"]
    for col in ("model", "shift", "threat", "attack", "n", "clean_acc", "robust_acc"):
        assert col in df.columns
    assert df["n"].iloc[0] == 60 and df["robust_acc"].iloc[0] <= df["clean_acc"].iloc[0]
    full = benchmark.evaluate(tiny_model, suite="tiny", n_examples=60, registry=str(tiny_registry))
    assert sorted(full["role"]) == ["dataset", "dataset", "id", "threat"]
    # the larger threat budget never raises robust accuracy
    rob = dict(zip(full["threat"] + "/" + full["role"], full["robust_acc"]))
    assert rob["tiny-linf-large/threat"] <= rob["tiny-linf/id"]


def test_cli_ls_json_and_dry_run(tiny_registry, tmp_path, capsys):
    assert cli.main(["ls", "threats", "--registry", str(tiny_registry), "--json"]) == 0
    items = json.loads(capsys.readouterr().out)  # the tiny registry is layered over the built-in one
    assert {"tiny-linf", "tiny-linf-large", "digits-linf"} <= {i["id"] for i in items}
    assert cli.main(["ls", "threats", "--suite", "tiny", "--registry", str(tiny_registry), "--json"]) == 0
    assert {i["id"] for i in json.loads(capsys.readouterr().out)} == {"tiny-linf", "tiny-linf-large"}
    assert cli.main(["ls", "shifts", "--suite", "tiny", "--registry", str(tiny_registry), "--json"]) == 0
    assert [i["id"] for i in json.loads(capsys.readouterr().out)] == ["gaussian_noise"]
    res = tmp_path / "res"
    assert cli.main(["run", "--suite", "tiny", "--registry", str(tiny_registry), "--results", str(res),
                     "--dry-run", "--shifts", "gaussian*"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("gaussian_noise" in ln for ln in lines)
    assert not res.exists(), "a dry run writes nothing"
    assert cli.main(["run", "--suite", "tiny", "--registry", str(tiny_registry), "--results", str(res),
                     "--models", "nomatch*"]) == 2
    assert "pattern 'nomatch*' matches no model" in capsys.readouterr().err
