"""The real suites' registry entries, the RobustBench zoo loader and an end-to-end CIFAR-10 run.

The end-to-end test evaluates the robust ResNet-18 that ships in the pyautoattack wheel on a few
fake CIFAR-10 images through ``plan_suite`` + ``run_grid``, the path GPU runs take.
"""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
import yaml

import benchmark  # noqa: F401
from benchmark.data import loaders
from benchmark.models import robustbench as zoo_robustbench
from benchmark.run.evaluate import run_grid
from benchmark.models.load import WeightsError, load_model
from benchmark.run.plan import plan_suite
from benchmark.registry import ModelSpec, Registry, sha256_file

REAL = Registry(check_files=False)  # other suites' weights may not be trained yet
REAL_SUITES = ("cifar10-linf", "cifar10-l2", "cifar100-linf", "imagenet-linf")


def test_real_suites_are_complete():
    for sid in REAL_SUITES:
        suite = REAL.suite(sid)
        assert len(REAL.suite_models(suite)) > 5, sid
        for name in suite.dataset_shifts:
            s = REAL.shift(name)
            assert s.source.startswith("loader:") and s.source.partition(":")[2] in loaders.FORMATS
            assert s.url and s.layout and s.files and s.label_map, name
        c = [s for s in suite.dataset_shifts if "-c-" in s]
        assert len(c) == 15 and all(REAL.shift(s).severities == (1, 2, 3, 4, 5) for s in c)
    linf = REAL.suite("cifar10-linf")
    assert REAL.threat(linf.id_threat).eps == pytest.approx(8 / 255)
    assert {"cifar10.1", "cifar10.2", "cinic10", "cifar10-r"} <= set(linf.dataset_shifts)
    kinds = {REAL.threat(t).kind: REAL.threat(t).attack for t in linf.threat_shifts}
    assert kinds["rotation-translation"] == "rotation-translation" and kinds["pixel-flow"] == "pixel-flow"
    assert kinds["brightness-contrast"] == "brightness-contrast" and kinds["jpeg"] == "jpeg"
    l2_kinds = {REAL.threat(t).kind for t in REAL.suite("cifar10-l2").threat_shifts}
    assert {"rotation-translation", "pixel-flow", "brightness-contrast", "jpeg"} <= l2_kinds
    # OODRobustBench's six threat shifts, marked, with its budgets and iteration counts
    for sid, lp in (("cifar10-linf", {("Linf", 12 / 255), ("L2", 0.5)}), ("cifar10-l2", {("Linf", 8 / 255), ("L2", 1.0)}),
                    ("cifar100-linf", {("Linf", 12 / 255), ("L2", 0.5)}), ("imagenet-linf", {("Linf", 8 / 255), ("L2", 1.0)})):
        ref = [REAL.threat(t) for t in REAL.suite(sid).threat_shifts if REAL.threat(t).reference_set]
        assert len(ref) == 6, sid
        assert {(t.norm, round(t.eps, 6)) for t in ref if t.kind == "lp"} == {(n, round(e, 6)) for n, e in lp}, sid
        by_attack = {t.attack: t for t in ref if t.kind != "lp"}
        assert set(by_attack) == {"ppgd", "lpa", "stadv", "recolor"}, sid
        assert by_attack["ppgd"].params["bound"] == 0.5 and by_attack["lpa"].params["bound"] == 0.5
        assert by_attack["stadv"].params["bound"] == 0.05 and by_attack["recolor"].params["bound"] == 0.06
        assert by_attack["ppgd"].attack_args["steps"] == 40 and by_attack["lpa"].attack_args["steps"] == 40
        iters = 100 if sid.startswith("cifar10-") else 200
        assert by_attack["stadv"].attack_args["steps"] == iters == by_attack["recolor"].attack_args["steps"]
        arch = "cifar-alexnet" if sid.startswith("cifar10-") else "alexnet"
        assert by_attack["ppgd"].params["network"]["arch"] == arch, sid
    assert REAL.threat("cifar10-jpeg").params["eps"] == pytest.approx(57.625 * 0.25 / 2 / 255, abs=1e-5)
    assert REAL.threat(REAL.suite("imagenet-linf").id_threat).eps == pytest.approx(4 / 255)
    masked = {s for s in REAL.suite("imagenet-linf").dataset_shifts if REAL.shift(s).mask_logits}
    assert masked == {"imagenet-a", "imagenet-r", "objectnet"}


def test_generated_zoo_entries_name_real_robustbench_models():
    model_dicts, BD, TM, _ = zoo_robustbench._robustbench()
    for ds, tm in zoo_robustbench.GENERATED_THREATS:
        entries = [m for m in REAL.entries["models"].values()
                   if m.source_kind == "robustbench" and m.dataset == ds and m.threat_model == tm]
        assert entries, (ds, tm)
        table = model_dicts[BD(ds)][TM(tm)]
        for m in entries:
            assert m.id == zoo_robustbench.entry_id(ds, tm, m.source_target)
            assert m.source_target in table
            # ImageNet entries carry the preprocessing robustbench feeds the model; others none
            want = zoo_robustbench.robustbench_preprocessing(table[m.source_target], m.source_target, ds, tm)
            assert m.preprocessing == want and (want is not None) == (ds == "imagenet"), m.id
            if table[m.source_target].get("preprocessing"):
                assert m.preprocessing == table[m.source_target]["preprocessing"]


def test_every_robustbench_model_of_the_generated_zoos_is_an_entry():
    model_dicts, BD, TM, _ = zoo_robustbench._robustbench()
    for ds, tm in zoo_robustbench.GENERATED_THREATS:
        have = {m.source_target for m in REAL.entries["models"].values()
                if m.source_kind == "robustbench" and m.dataset == ds and m.threat_model == tm}
        assert have == set(model_dicts[BD(ds)][TM(tm)]), (ds, tm)
    notes = REAL.model("rb-cifar100-Linf-Bai2023Improving_trades").notes
    assert "Ensemble of 3 checkpoints" in notes and "CUDA" in notes


def _imagenet_spec(name: str, sha: str | None = None) -> ModelSpec:
    return ModelSpec(id=f"rb-imagenet-Linf-{name}", source=f"robustbench:{name}", dataset="imagenet",
                     architecture="x", training="x", threat_model="Linf", sha256=sha, path="<test>")


def test_standard_r50_reads_torchvision_weights_from_the_hub_cache(tmp_path, monkeypatch):
    """robustbench's constructor would download torchvision's IMAGENET1K_V1 weights; shiftbench reads
    that file where the download lands and checks the sha256 prefix in its name."""
    import torchvision

    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    with pytest.raises(WeightsError) as e:
        zoo_robustbench.load(_imagenet_spec("Standard_R50"), REAL, model_dir=tmp_path / "models")
    msg = str(e.value)
    assert str(tmp_path / "models" / "imagenet" / "Linf" / "Standard_R50.pt") in msg
    assert str(hub / "checkpoints" / "resnet50-0676ba61.pth") in msg and "IMAGENET1K_V1" in msg
    torch.manual_seed(0)
    ref = torchvision.models.resnet50(weights=None).eval()
    path = hub / "checkpoints" / "resnet50-0676ba61.pth"
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    with pytest.raises(WeightsError, match="starts with 0676ba61"):  # random weights: not torchvision's file
        zoo_robustbench.load(_imagenet_spec("Standard_R50"), REAL, model_dir=tmp_path / "models")
    model = zoo_robustbench.load(_imagenet_spec("Standard_R50", sha256_file(path)), REAL, model_dir=tmp_path / "models")
    x = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref((x - mean) / std))


def test_mixed_ensembles_name_every_missing_checkpoint(tmp_path):
    spec = ModelSpec(id="rb-cifar100-Linf-Bai2023Improving_trades", source="robustbench:Bai2023Improving_trades",
                     dataset="cifar100", architecture="x", training="x", threat_model="Linf", path="<test>")
    with pytest.raises(WeightsError) as e:
        zoo_robustbench.load(spec, REAL, model_dir=tmp_path)
    msg = str(e.value)
    for i in range(3):
        assert str(tmp_path / "cifar100" / "Linf" / f"Bai2023Improving_trades.pt_m{i}.pt") in msg
    assert "load_model('Bai2023Improving_trades'" in msg
    if not torch.cuda.is_available():  # robustbench's BiT-M constructor calls .cuda(): say so, do not crash
        (tmp_path / "cifar100" / "Linf").mkdir(parents=True)
        for i in range(3):
            (tmp_path / "cifar100" / "Linf" / f"Bai2023Improving_trades.pt_m{i}.pt").write_bytes(b"")
        with pytest.raises(WeightsError, match="only where CUDA is available"):
            zoo_robustbench.load(spec, REAL, model_dir=tmp_path)


def test_autoattack_resnet18_loads_offline_with_checked_sha():
    spec = REAL.model("autoattack-resnet18")
    path = REAL.weights_path(spec)
    assert path.is_file() and sha256_file(path) == spec.sha256
    model = load_model(spec, REAL, allow_code=["pyautoattack.examples"])
    assert not model.training and model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def _rb_spec(name: str, sha: str | None = None) -> ModelSpec:
    return ModelSpec(id=f"rb-cifar10-Linf-{name}", source=f"robustbench:{name}", dataset="cifar10",
                     architecture="x", training="x", threat_model="Linf", sha256=sha, path="<test>")


def test_robustbench_missing_weights_names_expected_file(tmp_path):
    with pytest.raises(WeightsError) as e:
        zoo_robustbench.load(_rb_spec("Carmon2019Unlabeled"), REAL, model_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in msg and "load_model" in msg
    with pytest.raises(Exception, match="did you mean"):
        zoo_robustbench.load(_rb_spec("Carmon2019Unlabelled"), REAL, model_dir=tmp_path)


def test_robustbench_checkpoint_key_fixes_and_sha(tmp_path):
    """A checkpoint saved the way RobustBench's are ({'state_dict': 'module.'-prefixed}) loads."""
    name = "Addepalli2021Towards_RN18"
    model_dicts, BD, TM, _ = zoo_robustbench._robustbench()
    torch.manual_seed(0)
    ref = model_dicts[BD("cifar10")][TM("Linf")][name]["model"]().eval()
    path = tmp_path / "cifar10" / "Linf" / f"{name}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, path)
    model = zoo_robustbench.load(_rb_spec(name, sha256_file(path)), REAL, model_dir=tmp_path)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), ref(x))
    with pytest.raises(WeightsError, match="sha256"):
        zoo_robustbench.load(_rb_spec(name, "0" * 64), REAL, model_dir=tmp_path)


# Small settings for the suite's own attacks, so that the real path runs in seconds on a CPU.
FAST_ARGS = {
    "cifar10-linf-8": {"steps": 5, "targets": 1, "target_steps": 3},
    "cifar10-linf-12": {"steps": 5, "targets": 1, "target_steps": 3},
    "cifar10-jpeg": {"steps": 3},
}


def _fake_cifar10_world(tmp_path):
    """A registry with the real cifar10 entries (attack settings shrunk, checksums of fake files
    dropped) and a data root with 8 CIFAR-10 test images, CIFAR-10.1 and CIFAR-10-C fog."""
    reg_root = tmp_path / "registry"  # the real cifar10 entries only (other suites are not needed)
    for sub in ("shifts/cifar10", "threats/cifar10"):
        shutil.copytree(REAL.root / sub, reg_root / sub)
    for sub in ("models/cifar10/autoattack-resnet18.yaml", "suites/cifar10-linf.yaml"):
        (reg_root / sub).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REAL.root / sub, reg_root / sub)
    c101 = reg_root / "shifts" / "cifar10" / "cifar10.1.yaml"  # fake files: drop the published sha256
    entry = yaml.safe_load(c101.read_text())
    entry["files"] = [{"path": f["path"]} for f in entry["files"]]
    c101.write_text(yaml.safe_dump(entry))
    for tid, args in FAST_ARGS.items():  # the suite's own attack, with fewer steps
        path = reg_root / "threats" / "cifar10" / f"{tid}.yaml"
        t = yaml.safe_load(path.read_text())
        assert t["attack"] in ("apgd-mm", "jpeg")
        t["attack_args"] = args
        path.write_text(yaml.safe_dump(t))
    reg = Registry(reg_root)

    data = tmp_path / "data"
    (data / "cifar-10-batches-py").mkdir(parents=True)
    rng = np.random.default_rng(0)
    # smooth colour blobs rather than noise, so that the model is right on some of them
    base = rng.integers(0, 256, (8, 3, 4, 4)).astype(np.float32)
    imgs = torch.nn.functional.interpolate(torch.from_numpy(base), size=32, mode="bilinear").numpy()
    with torch.no_grad():
        labels = load_model(reg.model("autoattack-resnet18"), reg, allow_code=True)(torch.from_numpy(imgs / 255)).argmax(1)
    labels[::2] = (labels[::2] + 1) % 10  # half of them wrong on purpose
    u8 = imgs.round().astype(np.uint8)
    with open(data / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({"data": u8.reshape(8, -1), "labels": labels.tolist()}, fh)
    (data / "CIFAR-10.1").mkdir()
    np.save(data / "CIFAR-10.1" / "cifar10.1_v6_data.npy", u8.transpose(0, 2, 3, 1))
    np.save(data / "CIFAR-10.1" / "cifar10.1_v6_labels.npy", labels.numpy())
    (data / "CIFAR-10-C").mkdir()  # 5 severities x 8 images, severity-major, as published
    fog = np.concatenate([np.clip(u8.transpose(0, 2, 3, 1).astype(int) // 2 + 25 * s, 0, 255) for s in range(1, 6)])
    np.save(data / "CIFAR-10-C" / "fog.npy", fog.astype(np.uint8))
    np.save(data / "CIFAR-10-C" / "labels.npy", np.tile(labels.numpy(), 5))
    return reg, data


@pytest.fixture()
def fake_cifar10(tmp_path, monkeypatch):
    src = dict(loaders.ID_SOURCES["cifar10"], files=({"path": "cifar-10-batches-py/test_batch"},))
    monkeypatch.setitem(loaders.ID_SOURCES, "cifar10", src)  # fake file: no published md5 to match
    return _fake_cifar10_world(tmp_path)


def test_cifar10_linf_end_to_end_on_fake_data(tmp_path, fake_cifar10):
    """plan_suite + run_grid on the real cifar10-linf entries and their own attacks (apgd-mm, jpeg)
    with fewer steps: ID, a natural shift, a CIFAR-10-C severity and two threat shifts."""
    reg, data = fake_cifar10
    cells = plan_suite(reg, "cifar10-linf", models="autoattack-resnet18", shifts="id,cifar10.1,cifar10-c-fog-3",
                       threats="cifar10-linf-8,cifar10-linf-12,cifar10-jpeg", n_examples=8,
                       protocol="reference")  # every cell on the same 8 images (lean needs 15: one per corruption)
    assert sorted((c.data_name, c.threat.id) for c in cells) == [
        ("cifar10-c-fog-3", "cifar10-linf-8"), ("cifar10.1", "cifar10-linf-8"), ("id", "cifar10-jpeg"),
        ("id", "cifar10-linf-12"), ("id", "cifar10-linf-8")]
    out = tmp_path / "results"
    counts = run_grid(cells, reg, out, data_dir=data, progress=False)
    assert counts == {"planned": 5, "cached": 0, "ran": 9}  # fog-3 brings its batch: fog 1..5
    results = {(r["data"], r["threat"]): r for r in (json.loads(p.read_text()) for p in sorted(out.rglob("*.json")))}
    assert len(results) == 9
    assert {d for d, _ in results if d.startswith("cifar10-c-fog")} == {f"cifar10-c-fog-{s}" for s in range(1, 6)}
    for (data_name, tid), r in results.items():
        threat = reg.threat(tid)
        assert r["n"] == 8 and r["model"] == "autoattack-resnet18"
        assert r["attack"] == threat.attack and r["attack_args"] == FAST_ARGS[tid]  # the suite's attack, recorded
        assert r["mask_logits"] is False and r["preprocessing"] is None
        clean = np.array(list(r["clean_correct"])) == "1"
        robust = np.array(list(r["robust_correct"])) == "1"
        assert not (robust & ~clean).any() and r["robust_acc"] <= r["clean_acc"]
        assert r["checks"]["in_range"]["ok"]
        if threat.kind == "lp":
            assert r["checks"]["in_budget"]["ok"] and r["checks"]["in_budget"]["max_norm"] <= threat.eps + 1e-6
    assert results[("id", "cifar10-linf-8")]["clean_acc"] == pytest.approx(0.5)  # labels made half right
    for key in (("cifar10.1", "cifar10-linf-8"), ("id", "cifar10-linf-12"), ("id", "cifar10-jpeg")):
        assert results[key]["clean_correct"] == results[("id", "cifar10-linf-8")]["clean_correct"]  # same images
    fog = results[("cifar10-c-fog-3", "cifar10-linf-8")]
    assert fog["severity"] == 3 and fog["shift"] == "cifar10-c-fog" and fog["role"] == "dataset"
    assert results[("id", "cifar10-jpeg")]["threat_kind"] == "jpeg" and results[("id", "cifar10-jpeg")]["role"] == "threat"
    assert "budget_monotone" in results[("id", "cifar10-linf-8")]["checks"]  # deep checks on the ID cell
    assert run_grid(cells, reg, out, data_dir=data, progress=False)["cached"] == 5


def test_run_cli_reads_data_dir_then_shiftbench_data(tmp_path, fake_cifar10, monkeypatch, capsys):
    """`shiftbench run --data-dir` and, without it, $SHIFTBENCH_DATA name the data root."""
    from benchmark import cli

    reg, data = fake_cifar10
    args = ["run", "--suite", "cifar10-linf", "--registry", str(reg.root), "--models", "autoattack-resnet18",
            "--shifts", "id", "--threats", "cifar10-jpeg", "--n", "4", "--no-progress"]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("SHIFTBENCH_DATA", str(empty))  # --data-dir wins over the environment
    assert cli.main(args + ["--data-dir", str(data), "--results", str(tmp_path / "r1")]) == 0
    assert len(list((tmp_path / "r1" / "cifar10-linf").rglob("*.json"))) == 1
    capsys.readouterr()
    assert cli.main(args + ["--results", str(tmp_path / "r2")]) == 2  # the environment's (empty) root
    err = capsys.readouterr().err
    assert str(empty) in err and "cifar-10-batches-py/test_batch" in err and "SHIFTBENCH_DATA" in err
    monkeypatch.setenv("SHIFTBENCH_DATA", str(data))
    assert cli.main(args + ["--results", str(tmp_path / "r3")]) == 0
    (r1,), (r3,) = (list((tmp_path / r / "cifar10-linf").rglob("*.json")) for r in ("r1", "r3"))
    a, b = json.loads(r1.read_text()), json.loads(r3.read_text())
    assert a["clean_correct"] == b["clean_correct"] and a["robust_correct"] == b["robust_correct"]
