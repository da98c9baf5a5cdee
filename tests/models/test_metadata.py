"""Model metadata (`meta:`): every built-in entry has it and it validates strictly; the digits
zoo's is what its training recipe and architecture say; RobustBench's is RobustBench's own
model_info record, with provenance; writing it keeps the rest of an entry; it is not hashed."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from benchmark.models import metadata
from benchmark.models.robustbench import MODEL_INFO_URL
from benchmark.registry import (ARCH_FAMILIES, DEFAULT_REGISTRY, META_REQUIRED, Registry, RegistryError, build_spec,
                                content_hash)
from benchmark.run.plan import plan_suite

@pytest.fixture(scope="module")
def builtin() -> Registry:
    return Registry(DEFAULT_REGISTRY)


def test_every_builtin_model_entry_has_valid_metadata(builtin):
    models = list(builtin.entries["models"].values())
    assert len(models) >= 190
    for m in models:
        assert m.meta, f"{m.path}: no meta block"
        assert all(k in m.meta for k in META_REQUIRED), m.path
    rb = [m for m in models if m.source_kind == "robustbench"]
    assert len(rb) == 165
    for m in rb:  # the record it came from is the model's own, at a pinned commit
        prov = m.meta["provenance"]
        assert prov["repo"] == "RobustBench/robustbench" and len(prov["commit"]) == 40
        assert prov["path"] == f"model_info/{m.dataset}/{m.threat_model}/{m.source_target}.json"
        assert m.reference == MODEL_INFO_URL.format(dataset=m.dataset, threat=m.threat_model, name=m.source_target)
        assert m.meta["threat"] == m.threat_model
        pub = m.meta["published"]
        assert 0 <= pub["autoattack_acc"] <= pub["clean_acc"] <= 1, m.path
    fams = {m.meta["training_family"] for m in rb}
    assert {"standard", "adversarial-training", "trades"} <= fams
    assert {m.meta["extra_data"] for m in rb} >= {"none", "synthetic", "pre-training", "unlabeled"}


@pytest.mark.parametrize("key,value,message", [
    ("colour", "red", "unknown key"),
    ("training_family", "pgd_at", "did you mean 'pgd-at'"),
    ("extra_data", "imagenet", "unknown value"),
    ("params", 1.5, "positive whole number"),
    ("year", 19, "expected a year"),
    ("eps", 8, "implausible Linf budget"),
    ("published", {"clean_acc": 89.7, "source": "x"}, "not a percentage"),
    ("published", {"clean_acc": 0.9}, "need their source"),
    ("provenance", {"repo": "RobustBench/robustbench"}, "say where the values came from"),
    ("provenance", {"repo": "a/b", "commit": "abc", "path": "p"}, "40-hex-digit"),
])
def test_meta_errors_name_the_file_and_the_key(tmp_path, key, value, message):
    meta = {"training_family": "pgd-at", "extra_data": "none", "arch": "cnn", "threat": "Linf", "eps": 0.1,
            "provenance": {"recipe": "x"}}
    meta[key] = value
    path = tmp_path / "m.yaml"
    data = {"id": "m", "source": "robustbench:X", "dataset": "cifar10", "architecture": "a", "training": "t",
            "meta": meta}
    with pytest.raises(RegistryError) as err:
        build_spec("models", data, path)
    assert str(path) in str(err.value) and f"meta.{key}" in str(err.value) and message in str(err.value)
    del meta[key]
    if key in META_REQUIRED:  # a required key left out is named too
        with pytest.raises(RegistryError, match=f"meta.{key}': missing required key"):
            build_spec("models", data, path)


def test_meta_changes_no_cell_key(builtin, tmp_path):
    """Metadata is said about a model; it changes no number, so no result goes stale with it."""
    spec = builtin.model("cnn-pgd-0.10")
    bare = build_spec("models", {k: v for k, v in yaml.safe_load(Path(spec.path).read_text()).items() if k != "meta"},
                      Path(spec.path))
    assert content_hash(bare) == content_hash(spec)
    a = plan_suite(builtin, "digits", models="cnn-pgd-0.10", shifts="id")[0]
    root = tmp_path / "reg"
    shutil.copytree(DEFAULT_REGISTRY, root, ignore=shutil.ignore_patterns("cifar*", "imagenet*"))
    entry = root / "models" / "digits" / "cnn-pgd-0.10.yaml"
    entry.write_text(entry.read_text().replace("training_family: pgd-at", "training_family: trades"))
    changed = Registry(root)
    assert changed.model("cnn-pgd-0.10").meta["training_family"] == "trades"
    assert plan_suite(changed, "digits", models="cnn-pgd-0.10", shifts="id")[0].key == a.key


def mlp_params(hidden: int, depth: int, d_in: int = 256, classes: int = 10) -> int:
    sizes = [d_in] + [hidden] * depth + [classes]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def test_digits_meta_is_derived_from_the_recipe(builtin):
    digits = [m for m in builtin.entries["models"].values() if m.dataset == "digits" and m.train]
    assert len(digits) == 24
    for m in builtin.entries["models"].values():  # a declared defense on a zoo network: its twin's, and says so
        if m.dataset == "digits" and not m.train:
            twin = next(t for t in digits if t.sha256 == m.sha256)
            want = metadata.digits_meta(twin)
            want["provenance"]["recipe"] += f"; the weights of {twin.id}"
            assert m.meta == json.loads(json.dumps(want)), f"{m.path}: regenerate the meta block"
    for m in digits:
        assert m.meta == json.loads(json.dumps(metadata.digits_meta(m))), f"{m.path}: regenerate the meta block"
        method = m.train["method"]
        assert m.meta["training_family"] == {"standard": "standard", "pgd": "pgd-at", "trades": "trades",
                                             "noise": "noise-augmentation"}[method]
        assert m.meta["arch"] == m.source_target and m.meta["extra_data"] == "none"
        assert ("eps" in m.meta) == (method in ("pgd", "trades"))
        if "eps" in m.meta:
            assert m.meta["eps"] == m.train["eps"] and m.meta["threat"] == "Linf"
        if m.source_target == "mlp":  # counted independently of the code that wrote it
            assert m.meta["params"] == mlp_params(m.arch_args.get("hidden", 128), m.arch_args.get("depth", 2))
    assert {m.meta["arch"] for m in digits} == {"mlp", "cnn", "lenet"} <= set(ARCH_FAMILIES)


CARMON = {"name": "Unlabeled Data Improves Adversarial Robustness", "additional_data": True, "venue": "NeurIPS 2019",
          "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "89.69", "autoattack_acc": "59.53"}
WANG = {"name": "Better Diffusion Models Further Improve Adversarial Training", "additional_data": False,
        "venue": "ICML 2023", "architecture": "WideResNet-70-16", "eps": "8/255", "clean_acc": "93.25",
        "autoattack_acc": "70.69", "footnote": "It uses additional 50M synthetic images in training."}
HENDRYCKS = {"name": "Using Pre-Training Can Improve Model Robustness and Uncertainty", "additional_data": True,
             "venue": "ICML 2019", "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "87.11",
             "autoattack_acc": "54.92"}
STANDARD = {"name": "Standardly trained model", "additional_data": False, "venue": "N/A",
            "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "94.78", "autoattack_acc": "0.0"}
TRADES = {"name": "Theoretically Principled Trade-off between Robustness and Accuracy", "additional_data": False,
          "venue": "ICML 2019", "architecture": "WideResNet-34-10", "eps": "0.031", "clean_acc": "84.92",
          "autoattack_acc": "53.08"}
BAI = {"name": "MixedNUTS", "additional_data": True, "venue": "TMLR, Aug 2024", "architecture": "ConvNeXtV2-L + Swin-L",
       "eps": "4/255", "clean_acc": "81.48", "autoattack_acc": "58.62",
       "footnote": "It uses an ensemble of networks. The accurate base classifier was pre-trained on ImageNet-21k."}
SINGH = {"name": "Revisiting Adversarial Training for ImageNet", "additional_data": False, "venue": "NeurIPS 2023",
         "architecture": "ConvNeXt-B + ConvStem", "eps": "4/255", "clean_acc": "75.90", "autoattack_acc": "56.14"}
GITHUB = {"name": "Robustness library", "additional_data": False, "venue": "GitHub,<br>Oct 2019",
          "architecture": "ResNet-50", "eps": "8/255", "clean_acc": "87.03", "autoattack_acc": "49.25"}


@pytest.mark.parametrize("name,info,want", [
    ("Carmon2019Unlabeled", CARMON, ("adversarial-training", "unlabeled", "wide-resnet", "NeurIPS", 2019)),
    ("Wang2023Better_WRN-70-16", WANG, ("adversarial-training", "synthetic", "wide-resnet", "ICML", 2023)),
    ("Hendrycks2019Using", HENDRYCKS, ("adversarial-training", "pre-training", "wide-resnet", "ICML", 2019)),
    ("Standard", STANDARD, ("standard", "none", "wide-resnet", None, None)),
    ("Zhang2019Theoretically", TRADES, ("trades", "none", "wide-resnet", "ICML", 2019)),
    ("Bai2024MixedNUTS", BAI, ("adversarial-training", "pre-training", "ensemble", "TMLR", 2024)),
    ("Singh2023Revisiting_ConvNeXt-B-ConvStem", SINGH, ("adversarial-training", "none", "convnext", "NeurIPS", 2023)),
    ("Engstrom2019Robustness", GITHUB, ("adversarial-training", "none", "resnet", "GitHub", 2019)),
])
def test_robustbench_meta_from_model_info(tmp_path, name, info, want):
    meta = metadata.robustbench_meta(name, "cifar10", "Linf", info, commit="a" * 40, params=36_500_000)
    got = (meta["training_family"], meta["extra_data"], meta["arch"], meta.get("venue"), meta.get("year"))
    assert got == want
    assert meta["published"]["clean_acc"] == pytest.approx(float(info["clean_acc"]) / 100)
    assert meta["published"]["autoattack_acc"] == pytest.approx(float(info["autoattack_acc"]) / 100)
    assert meta["eps"] == info["eps"] and meta["provenance"]["path"] == f"model_info/cifar10/Linf/{name}.json"
    entry = tmp_path / "e.yaml"
    entry.write_text("id: e\nsource: robustbench:X\n")
    assert metadata.write_meta(entry, meta, "cmd")  # validates as an entry's meta block


def test_writing_meta_keeps_the_entry_and_is_idempotent(tmp_path):
    src = DEFAULT_REGISTRY / "models" / "digits" / "lenet-trades-3.yaml"
    entry = tmp_path / src.name
    entry.write_text(metadata.strip_meta(src.read_text()))
    assert "meta:" not in entry.read_text()
    spec = build_spec("models", yaml.safe_load(entry.read_text()), entry)
    meta = metadata.digits_meta(spec)
    assert metadata.write_meta(entry, meta, "python -m benchmark.models.metadata digits")
    assert entry.read_text() == src.read_text()  # the committed entry is exactly what the generator writes
    assert not metadata.write_meta(entry, meta, "python -m benchmark.models.metadata digits")
    changed = dict(meta, training_family="pgd-at")
    assert metadata.write_meta(entry, changed, "python -m benchmark.models.metadata digits")
    text = entry.read_text()
    assert text.count("meta:") == 2 and text.count("training_family") == 1  # replaced, not appended twice
    assert metadata.strip_meta(text) == metadata.strip_meta(src.read_text())
    # the robustbench entry generator keeps a meta block when it rewrites the rest
    assert metadata.meta_block(text).startswith("# meta: generated by")
    assert metadata.strip_meta(text) + metadata.meta_block(text) == text


def test_digits_generator_leaves_the_committed_entries_unchanged(tmp_path, capsys):
    root = tmp_path / "reg"
    shutil.copytree(DEFAULT_REGISTRY, root, ignore=shutil.ignore_patterns("cifar*", "imagenet*", "lpips"))
    assert metadata.main(["--registry", str(root), "digits"]) == 0
    assert "digits: 0 entries changed" in capsys.readouterr().out
    entry = root / "models" / "digits" / "mlp-standard.yaml"
    entry.write_text(metadata.strip_meta(entry.read_text()))
    assert metadata.main(["--registry", str(root), "digits"]) == 0
    assert "digits: 1 entries changed" in capsys.readouterr().out
    assert entry.read_text() == (DEFAULT_REGISTRY / "models" / "digits" / "mlp-standard.yaml").read_text()


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "robustbench"  # model_info records, as RobustBench has them


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_robustbench_generator_reproduces_the_committed_entries(tmp_path, capsys):
    """The model_info records of a few RobustBench models (copied from RobustBench at the commit the
    entries record, shipped in tests/) made into a git repository: the generator writes into each of
    their entries exactly the committed meta block, up to the commit it names."""
    repo = tmp_path / "robustbench"
    shutil.copytree(FIXTURE, repo)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "model_info")
    names = {str(p.relative_to(repo / "model_info").with_suffix("")) for p in (repo / "model_info").rglob("*.json")}
    assert len(names) >= 7
    root = tmp_path / "reg"
    shutil.copytree(DEFAULT_REGISTRY, root, ignore=shutil.ignore_patterns("digits", "lpips"))
    builtin = Registry(DEFAULT_REGISTRY)
    kept = {}
    for m in builtin.entries["models"].values():
        if m.source_kind != "robustbench":
            continue
        entry = root / Path(m.path).relative_to(DEFAULT_REGISTRY)
        if f"{m.dataset}/{m.threat_model}/{m.source_target}" in names:
            kept[m.id] = entry
            entry.write_text(metadata.strip_meta(entry.read_text()))  # the generator must write it back
        else:
            entry.unlink()
    assert len(kept) == len(names)
    assert metadata.main(["--registry", str(root), "robustbench", "--repo", str(repo)]) == 0
    assert f"robustbench: {len(kept)} entries changed" in capsys.readouterr().out
    for mid, entry in kept.items():
        committed = Path(builtin.model(mid).path).read_text()
        commit = builtin.model(mid).meta["provenance"]["commit"]
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert entry.read_text().replace(head, commit) == committed, f"{mid}: the generator wrote another entry"
    # and a record it cannot find is an error that names the entry, not a silent skip
    (repo / "model_info" / "cifar10" / "L2" / "Standard.json").unlink()
    _git(repo, "commit", "-q", "-a", "-m", "drop one")
    with pytest.raises(RegistryError, match="Standard.json"):
        metadata.main(["--registry", str(root), "robustbench", "--repo", str(repo)])
