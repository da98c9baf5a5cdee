"""RobustBench entries carry no sha256: their checkpoints are pinned in the registry's lock file the
first time they are read (trust on first use, with a message), verified on every later load, and
their checksums are part of the cell key, so a replaced checkpoint is an error, never a stale
result.  Ensembles pin every part.  All on files the tests make (no download)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import benchmark  # noqa: F401
from benchmark.models import robustbench as zoo
from benchmark.models.weights import WeightsError, lock_path, pinned, read_lock
from benchmark.registry import ModelSpec, Registry
from benchmark.run.plan import Cell

REAL = Registry(check_files=False)


def _spec(name: str, sha: str | None = None) -> ModelSpec:
    return ModelSpec(id=f"rb-cifar10-Linf-{name}", source=f"robustbench:{name}", dataset="cifar10",
                     architecture="x", training="x", threat_model="Linf", sha256=sha, path=f"<{name}.yaml>")


def _checkpoint(tmp_path: Path, name: str, seed: int) -> Path:
    model_dicts, BD, TM, _ = zoo._robustbench()
    torch.manual_seed(seed)
    ref = model_dicts[BD("cifar10")][TM("Linf")][name]["model"]()
    path = tmp_path / "models" / "cifar10" / "Linf" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref.state_dict(), path)
    return path


def test_first_load_pins_later_loads_verify(tmp_path, capsys):
    name = "Addepalli2021Towards_RN18"
    spec = _spec(name)
    path = _checkpoint(tmp_path, name, 0)
    lock = lock_path(REAL.root)
    assert lock == Path(os.environ["SHIFTBENCH_WEIGHTS_LOCK"]) and not lock.exists()
    zoo.load(spec, REAL, model_dir=tmp_path / "models")
    err = capsys.readouterr().err
    assert "trust on first use" in err and str(lock) in err
    from benchmark.registry import sha256_file

    assert read_lock(lock) == {spec.id: {f"{name}.pt": sha256_file(path)}}
    zoo.load(spec, REAL, model_dir=tmp_path / "models")  # verified, no new message
    assert "trust on first use" not in capsys.readouterr().err
    _checkpoint(tmp_path, name, 1)  # the checkpoint is replaced
    with pytest.raises(WeightsError, match="pinned .* when it was first loaded"):
        zoo.load(spec, REAL, model_dir=tmp_path / "models")


def test_pinned_checksums_are_in_the_cell_key(tmp_path):
    name = "Addepalli2021Towards_RN18"
    spec = _spec(name)
    _checkpoint(tmp_path, name, 0)
    w = zoo.cell_weights(spec, REAL, tmp_path / "models")  # planning a cell pins on first use too
    assert w is not None and w == tuple(sorted(read_lock(lock_path(REAL.root))[spec.id].items()))
    t = REAL.threat("cifar10-linf-8")
    keys = {Cell("s", spec, None, None, t, "id", 8, 0, ww).key
            for ww in (None, w, ((f"{name}.pt", "0" * 64),))}
    assert len(keys) == 3
    # an entry with its own sha256 pins itself: nothing from the lock
    assert zoo.cell_weights(_spec("Carmon2019Unlabeled", "a" * 64), REAL, tmp_path / "models") is None
    # no files yet: nothing to pin, nothing recorded
    assert zoo.cell_weights(_spec("Carmon2019Unlabeled"), REAL, tmp_path / "models") is None
    assert "rb-cifar10-Linf-Carmon2019Unlabeled" not in read_lock(lock_path(REAL.root))


def test_ensembles_pin_every_part(tmp_path):
    name = "Chen2020Adversarial"  # three checkpoints <Name>.pt_m<i>.pt
    spec = _spec(name, sha="f" * 64)  # the entry's sha256 would cover the first part only
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{name}.pt_m{i}.pt").write_bytes(f"part {i}".encode())
    files = zoo.weight_files(spec, REAL, tmp_path / "models")
    assert [p.name for p in files] == [f"{name}.pt_m{i}.pt" for i in range(3)]
    w = zoo.cell_weights(spec, REAL, tmp_path / "models")
    assert [n for n, _ in w] == [p.name for p in files]
    (folder / f"{name}.pt_m2.pt").write_bytes(b"replaced")
    with pytest.raises(WeightsError, match=f"{name}.pt_m2.pt has sha256"):
        zoo.load(spec, REAL, model_dir=tmp_path / "models")


def test_corrupt_lock_file_names_the_file(tmp_path, monkeypatch):
    lock = tmp_path / "weights.lock"
    lock.write_text("{not json")
    with pytest.raises(WeightsError, match=str(lock)):
        read_lock(lock)
    lock.write_text(json.dumps({"schema": 1, "models": {}}))
    p = tmp_path / "a.pt"
    p.write_bytes(b"a")
    monkeypatch.setenv("SHIFTBENCH_WEIGHTS_LOCK", str(lock))
    assert pinned(tmp_path, "m", [p]) == read_lock(lock)["m"]
