"""`shiftbench preflight` and the check `shiftbench run` makes on a real suite before any cell.

The files are made by the tests in the real layouts; the cost figures are checked against the
real attacks, counted call by call on a model they cannot fool.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import benchmark  # noqa: F401
from benchmark import cli
from benchmark.attacks import run_attack
from benchmark.data import loaders
from benchmark.data.pins import pin
from benchmark.registry import Registry, sha256_file
from benchmark.run import preflight
from benchmark.run.plan import plan_suite

REAL = Registry(check_files=False)


def never_fooled(n_in: int, classes: int = 10) -> torch.nn.Module:
    """Class 0 by a margin no attack within these budgets can close (1, against at most 0.2 that
    any image can move a logit), close enough to class 1 that apgd-mm polishes it and soft enough
    that cross-entropy has a gradient."""
    lin = torch.nn.Linear(n_in, classes)
    torch.nn.init.normal_(lin.weight, std=1e-3)
    with torch.no_grad():
        lin.bias.zero_()
        lin.bias[0], lin.bias[1] = 20.0, 19.0
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


DIGITS_THREATS = ["digits-linf", "digits-l1", "digits-ppgd", "digits-lpa", "digits-stadv", "digits-recolor",
                  "digits-rotation-translation", "digits-pixel-flow", "digits-brightness-contrast", "digits-jpeg"]


@pytest.mark.parametrize("tid", DIGITS_THREATS)
def test_attack_cost_bounds_the_real_attacks(tid):
    """The per-image passes preflight plans with are an upper bound of what the attack runs, and
    close to it where nothing is fooled (every stage runs in full)."""
    threat = REAL.threat(tid)
    counter = preflight.PassCounter(never_fooled(256))
    n = 3
    x = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(n, dtype=torch.long)
    cost = preflight.attack_cost(threat.attack, threat.attack_args, 10)
    assert cost is not None, threat.attack
    x_adv = run_attack(counter.module, x, y, threat, seed=0, index=torch.arange(n))
    got = counter.cost(n)
    with torch.no_grad():
        assert (counter.module(x_adv).argmax(1) == 0).all()  # nothing fooled: the bound is reached, not undercut
    assert got.passes <= cost.passes + 1e-9 and got.total <= cost.total + 1e-9, (got, cost)
    assert got.total >= 0.8 * cost.total, (got, cost)


def test_attack_cost_follows_the_settings():
    base = preflight.attack_cost("apgd-mm", {}, 10)
    assert base.passes == 51 + 9 * 21 + 41
    assert preflight.attack_cost("apgd-mm", {}, 2).passes == 51 + 21 + 41  # one other class to target
    assert preflight.attack_cost("apgd-mm", {"polish_steps": 0}, 10).passes == 51 + 9 * 21
    assert preflight.attack_cost("stadv", {"steps": 200}, 1000).passes == 200
    assert preflight.attack_cost("autoattack", {}, 10) is None


def test_preflight_digits_is_ready(capsys):
    assert cli.main(["preflight", "--suite", "digits", "--rate", "1000"]) == 0
    out = capsys.readouterr().out
    assert "ready: every file" in out and "2472 cells (24 models)" in out
    assert "| digits-linf | apgd-mm |" in out and "hours" in out


def _expected_files(suite: str, root) -> set[str]:
    """Every dataset file and folder the suite's entries list, under ``root``."""
    s = REAL.suite(suite)
    want = {str(root / f["path"]).rstrip("/") for f in loaders.ID_SOURCES[s.dataset]["files"]}
    for sid in s.dataset_shifts:
        want |= {str(root / f["path"]).rstrip("/") for f in REAL.shift(sid).files}
    return want


def test_preflight_on_an_empty_folder_lists_every_missing_file(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = cli.main(["preflight", "--suite", "cifar10-linf", "--data-dir", str(empty), "--model-dir", str(empty),
                   "--no-measure"])
    out = capsys.readouterr().out
    assert rc == 1 and "NOT READY" in out
    listed = {line.split(": ", 1)[1].split(" (")[0].split(" [")[0] for line in out.splitlines()
              if line.startswith("  missing  data")}
    assert listed == _expected_files("cifar10-linf", empty)
    models = REAL.suite_models(REAL.suite("cifar10-linf"))
    for m in models:
        if m.source_kind == "robustbench":
            assert f"missing  weights {m.id}: {empty / 'cifar10' / m.threat_model / m.source_target}" in out, m.id
    assert f"{empty / 'lpips' / 'alexnet_cifar.pt'}" in out  # the LPIPS network of PPGD and LPA
    assert f"{len(plan_suite(REAL, 'cifar10-linf', record_pins=False))} cells ({len(models)} models)" in out


def test_preflight_checks_checksums_and_pins(tmp_path, monkeypatch):
    """A file that differs from its published checksum, or from its pin, is a problem; a file
    with neither is fine (pinned on first read)."""
    root = tmp_path / "data"
    (root / "CIFAR-10.1").mkdir(parents=True)
    np.save(root / "CIFAR-10.1" / "cifar10.1_v6_data.npy", np.zeros((2, 32, 32, 3), np.uint8))
    np.save(root / "CIFAR-10.1" / "cifar10.1_v6_labels.npy", np.zeros(2, np.int64))
    (root / "CIFAR-10.2").mkdir()
    np.savez(root / "CIFAR-10.2" / "cifar102_test.npz", images=np.zeros((2, 32, 32, 3), np.uint8),
             labels=np.zeros(2, np.int64))
    cells = plan_suite(REAL, "cifar10-linf", models="autoattack-resnet18", shifts="cifar10.1,cifar10.2",
                       threats="cifar10-linf-8")
    needs = {(n.owner, n.path.rsplit("/", 1)[-1]): n for n in preflight.data_needs(cells, root)}
    assert needs[("cifar10.1", "cifar10.1_v6_data.npy")].status == preflight.MISMATCH  # published sha256
    assert "sha256" in needs[("cifar10.1", "cifar10.1_v6_data.npy")].detail
    assert needs[("cifar10.2", "cifar102_test.npz")].status == preflight.UNPINNED
    rel = "CIFAR-10.2/cifar102_test.npz"
    pin(root / loaders.DATA_LOCK, rel, {"sha256": sha256_file(root / rel)})
    assert {n.status for n in preflight.data_needs(cells, root) if n.owner == "cifar10.2"} == {preflight.PINNED}
    np.savez(root / rel, images=np.ones((2, 32, 32, 3), np.uint8), labels=np.zeros(2, np.int64))  # replaced
    assert {n.status for n in preflight.data_needs(cells, root) if n.owner == "cifar10.2"} == {preflight.MISMATCH}
    assert {n.status for n in preflight.data_needs(cells, root, checksums=False)
            if n.owner == "cifar10.2"} == {preflight.PINNED}


def test_preflight_checks_robustbench_weights_against_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTBENCH_WEIGHTS_LOCK", str(tmp_path / "weights.lock"))
    spec = REAL.model("rb-cifar10-Linf-Standard")
    path = tmp_path / "models" / "cifar10" / "Linf" / "Standard.pt"
    (st,) = preflight.weights_needs([spec], REAL, tmp_path / "models")
    assert st.status == preflight.MISSING and st.path == str(path)
    path.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, path)
    (st,) = preflight.weights_needs([spec], REAL, tmp_path / "models")
    assert st.status == preflight.UNPINNED  # recorded on first load
    pin(tmp_path / "weights.lock", spec.id, {"Standard.pt": sha256_file(path)})
    (st,) = preflight.weights_needs([spec], REAL, tmp_path / "models")
    assert st.status == preflight.PINNED
    torch.save({"w": torch.ones(2)}, path)
    (st,) = preflight.weights_needs([spec], REAL, tmp_path / "models")
    assert st.status == preflight.MISMATCH


def test_preflight_refuses_an_unpinned_lpips_network(tmp_path):
    """cifar10-ppgd ships without a checksum for its network: the run would stop, so preflight says so."""
    f = tmp_path / "lpips" / "alexnet_cifar.pt"
    f.parent.mkdir()
    torch.save({"x": torch.zeros(1)}, f)
    (n,) = preflight.network_needs([REAL.threat("cifar10-ppgd")], tmp_path)
    assert n.status == preflight.REFUSED and "params.network.sha256" in n.detail
    (n,) = preflight.network_needs([REAL.threat("cifar100-ppgd")], tmp_path)
    assert n.status == preflight.MISSING  # another file: alexnet-owt-7be5be79.pth
    f2 = tmp_path / "lpips" / "alexnet-owt-7be5be79.pth"
    torch.save({"x": torch.zeros(1)}, f2)
    (n,) = preflight.network_needs([REAL.threat("cifar100-ppgd")], tmp_path)
    assert n.status == preflight.MISMATCH and "7be5be79" in n.detail  # not torchvision's file


def _fake_test_batch(root, n: int = 4) -> None:
    (root / "cifar-10-batches-py").mkdir(parents=True)
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({"data": np.zeros((n, 3072), np.uint8), "labels": [0] * n}, fh)


def test_run_stops_before_any_cell_when_a_file_is_missing(tmp_path, monkeypatch, capsys):
    data, results = tmp_path / "data", tmp_path / "results"
    _fake_test_batch(data)
    args = ["run", "--suite", "cifar10-linf", "--models", "autoattack-resnet18", "--shifts", "id,cifar10.1",
            "--threats", "cifar10-linf-8", "--n", "4", "--no-progress", "--data-dir", str(data),
            "--results", str(results)]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "nothing was run" in err and "MISMATCH" in err and "md5" in err  # a fake test batch: wrong md5
    assert str(data / "CIFAR-10.1" / "cifar10.1_v6_data.npy") in err
    assert str(data / "CIFAR-10.1" / "cifar10.1_v6_labels.npy") in err
    assert not list(results.rglob("*.json"))
    src = dict(loaders.ID_SOURCES["cifar10"], files=({"path": "cifar-10-batches-py/test_batch"},))
    monkeypatch.setitem(loaders.ID_SOURCES, "cifar10", src)  # no md5 to match: only CIFAR-10.1 is missing
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "MISMATCH" not in err and "1 problem" not in err and "cifar10.1_v6_data.npy" in err
    assert not list(results.rglob("*.json"))
    assert cli.main(args + ["--no-preflight"]) == 1  # unchecked, the cells start and the CIFAR-10.1 ones fail
    err = capsys.readouterr().err
    assert "nothing was run" not in err and "cell(s) failed" in err and "cifar10.1_v6_data.npy" in err
    assert len(list(results.rglob("*.json"))) == 1  # the ID cell ran
    assert cli.main(args[:6] + ["id"] + args[7:]) == 0  # the ID cell alone needs only the test batch
    assert len(list(results.rglob("*.json"))) == 1


@pytest.mark.parametrize("rotations,translations", [(5, 3), (2, 2), (3, 2), (1, 1), (3, 1)])
def test_rotation_translation_cost_counts_the_identity(rotations, translations):
    """The grid's candidates plus the identity where the grid lacks it (an even count of angles
    or shifts, or one: linspace's single point is the low end): each a forward pass of every image."""
    threat = REAL.threat("cifar10-rotation-translation")
    args = {"rotations": rotations, "translations": translations}
    counter = preflight.PassCounter(never_fooled(3 * 32 * 32))
    run_attack(counter.module, torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), threat, **args)
    assert counter.cost(2) == preflight.attack_cost("rotation-translation", args, 10)


def test_preflight_refuses_cuda_only_models_on_a_cpu(tmp_path):
    """robustbench builds Bai2023Improving's BiT-M part only where CUDA is available."""
    cells = plan_suite(REAL, "cifar10-linf", models="rb-cifar10-Linf-Bai2023Improving_edm", shifts="id",
                       threats="cifar10-linf-8", record_pins=False)
    for device, refused in (("cpu", True), ("cuda", False)):
        rep = preflight.preflight(REAL, "cifar10-linf", cells, data_dir=tmp_path, model_dir=tmp_path,
                                  results_dir=tmp_path / "results", measure=False, device=device)
        cuda = [n for n in rep.needs if n.status == preflight.REFUSED and "CUDA" in n.detail]
        assert bool(cuda) == refused, device
        assert not rep.ok  # the test batch and the checkpoints are missing either way
