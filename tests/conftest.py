"""Shared fixtures: a tiny registry of real entries (a model trained in seconds, one shift,
two threats, one suite) built in a temporary folder, so tests exercise the real code path."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

import benchmark  # noqa: F401  (installs the autoattack alias)
from helpers import train_tiny_mlp
from benchmark.registry import sha256_file

# Tiny models: one thread is faster than two fighting over a shared machine.
torch.set_num_threads(1)


# The longest test files (each test up to minutes of CPU: the real suites' rehearsals, the other CPU
# code paths, escalations, worker processes) are collected first, so that `make test`'s parallel
# workers start them first and none is left to run alone at the end; every file keeps its own order.
LONG_FIRST = ("run/test_cross_cpu.py", "run/test_rehearsal.py", "models/test_real_suites.py", "run/test_masked.py",
              "workflows/test_defended_workflows.py", "run/test_calibrate.py", "run/test_executors.py",
              "run/test_reliability.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return next((i for i, name in enumerate(LONG_FIRST) if path.endswith(name)), len(LONG_FIRST))

    items.sort(key=rank)


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_tiny_registry(root: Path, model: torch.nn.Module) -> Path:
    """A registry with one builtin model, one synthetic shift and two Linf threats."""
    wdir = root / "weights" / "digits"
    wdir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), wdir / "tiny.pt")
    write_yaml(root / "models" / "digits" / "tiny.yaml", {
        "id": "tiny", "source": "builtin:mlp", "dataset": "digits", "architecture": "MLP-32",
        "training": "standard", "weights": "weights/digits/tiny.pt",
        "sha256": sha256_file(wdir / "tiny.pt"), "arch_args": {"hidden": 32, "depth": 1},
    })
    write_yaml(root / "shifts" / "digits" / "gaussian_noise.yaml", {
        "id": "gaussian_noise", "dataset": "digits", "source": "synthetic:gaussian_noise",
        "family": "noise", "severities": [1, 3],
    })
    for tid, eps in (("tiny-linf", 0.1), ("tiny-linf-large", 0.2)):
        write_yaml(root / "threats" / f"{tid}.yaml", {
            "id": tid, "kind": "lp", "norm": "Linf", "eps": eps, "attack": "pgd",
            "attack_args": {"steps": 10},
        })
    write_yaml(root / "suites" / "tiny.yaml", {
        "id": "tiny", "dataset": "digits", "id_threat": "tiny-linf",
        "dataset_shifts": ["gaussian_noise"], "threat_shifts": ["tiny-linf-large"], "n_examples": 120,
    })
    return root


@pytest.fixture(autouse=True)
def _weights_lock_in_tmp(tmp_path, monkeypatch):
    """Loading a RobustBench model records its checksums in the registry's lock file on first use;
    tests keep theirs in a temporary folder, never in the repository's registry."""
    monkeypatch.setenv("SHIFTBENCH_WEIGHTS_LOCK", str(tmp_path / "lock" / "weights.lock"))


@pytest.fixture(scope="session")
def tiny_model() -> torch.nn.Module:
    return train_tiny_mlp()


@pytest.fixture()
def tiny_registry(tmp_path: Path, tiny_model) -> Path:
    return make_tiny_registry(tmp_path / "registry", tiny_model)


@pytest.fixture()
def copy_registry(tmp_path: Path):
    """Copy a registry folder so a test can break it."""
    def _copy(src: Path) -> Path:
        dst = tmp_path / "broken"
        shutil.copytree(src, dst)
        return dst
    return _copy


@pytest.fixture(scope="session")
def digits_baseline(tmp_path_factory):
    """A real digits baseline made once: an adversarially trained zoo model (shipped weights) run on
    a slice of the built-in digits suite (the ID cell, one dataset shift at every severity, one Lp
    threat shift; n=60), exported with `shiftbench export-baseline`.  Also names a weaker model."""
    from benchmark import cli

    info = {"model": "mlp-pgd-0.10", "weaker": "mlp-standard", "n": "60"}
    root = tmp_path_factory.mktemp("digits-baseline")
    results, out = root / "results", root / "baseline.json"
    assert cli.main(["run", "--suite", "digits", "--models", info["model"], "--shifts", "id,gaussian_noise",
                     "--threats", "digits-linf,digits-l2", "--n", info["n"], "--results", str(results),
                     "--no-progress"]) == 0
    assert cli.main(["export-baseline", "--suite", "digits", "--model", info["model"], "--n", info["n"],
                     "--results", str(results), "--out", str(out)]) == 0
    return {**info, "results": results, "baseline": out}


@pytest.fixture(scope="module")
def trained():
    """A standard MLP trained for ~1 s on the digits train split, and 48 clean-correct test images
    (the attack tests' model)."""
    from benchmark.data import datasets

    m = train_tiny_mlp(epochs=6, hidden=64, depth=2, lr=2e-3, batch=64)
    m.eval()
    x, y = datasets.load_id("digits", "test")
    x, y = x[:64], y[:64]
    with torch.no_grad():
        ok = m(x).argmax(1) == y
    assert ok.float().mean() > 0.8, "the test model did not train"
    return m, x[ok][:48], y[ok][:48]
