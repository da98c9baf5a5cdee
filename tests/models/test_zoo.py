"""The digits zoo: reproducible training, shipped weights that match their entries, and the
robustness ordering the trend fit relies on (adversarial training beats standard training)."""
from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import pytest
import torch

import benchmark  # noqa: F401  (aliases pyautoattack for robustbench)
from benchmark.models import architectures, zoo
from benchmark.attacks.pgd import pgd
from benchmark.data.datasets import load_id
from benchmark.registry import DEFAULT_REGISTRY, RegistryError, build_spec, load_yaml

DIGITS_MODELS = DEFAULT_REGISTRY / "models" / "digits"
ID_THREAT = DEFAULT_REGISTRY / "threats" / "digits" / "digits-linf.yaml"
TINY = {"hidden": 8, "depth": 1}


def _all_entries():
    return [build_spec("models", load_yaml(p), p) for p in sorted(DIGITS_MODELS.glob("*.yaml"))]


def _entries():
    """The trained zoo: entries with a recipe (a declared defense reuses its twin's weights)."""
    return [s for s in _all_entries() if s.train]


def test_every_untrained_entry_is_a_defense_on_a_trained_twin():
    trained = {s.sha256: s for s in _entries()}
    others = [s for s in _all_entries() if not s.train]
    assert len(others) >= 3
    for s in others:
        assert s.randomized or s.input_transform, f"{s.path}: no train recipe and no declared defense"
        twin = trained.get(s.sha256)
        assert twin is not None and (twin.source, dict(twin.arch_args)) == (s.source, dict(s.arch_args)), s.path


@pytest.fixture(scope="module")
def train_data():
    x, y = load_id("digits", "train")
    return x[:96], y[:96]


@pytest.mark.parametrize("recipe", [
    {"method": "pgd", "eps": 0.1, "steps": 2, "epochs": 1, "lr": 0.01, "seed": 3, "batch_size": 32},
    {"method": "trades", "eps": 0.1, "beta": 6.0, "steps": 2, "epochs": 1, "lr": 0.01, "seed": 3, "batch_size": 32},
    {"method": "noise", "sigma": 0.3, "epochs": 1, "lr": 0.01, "seed": 3, "batch_size": 32},
])
def test_training_is_bit_reproducible(train_data, recipe):
    x, y = train_data
    a = zoo.state_bytes(zoo.train_model("mlp", TINY, recipe, x, y))
    b = zoo.state_bytes(zoo.train_model("mlp", TINY, recipe, x, y))
    assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()
    other = zoo.state_bytes(zoo.train_model("mlp", TINY, {**recipe, "seed": 4}, x, y))
    assert other != a, "the seed must change the weights"


def test_training_restores_global_torch_state(train_data):
    x, y = train_data
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    zoo.train_model("mlp", TINY, {"method": "standard", "epochs": 1, "lr": 0.01, "seed": 0}, x, y)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, det)


@pytest.mark.parametrize("recipe, key", [
    ({"method": "pgd", "epochs": 1, "lr": 0.1, "seed": 0}, "train.eps"),
    ({"method": "adam", "epochs": 1, "lr": 0.1, "seed": 0}, "train.method"),
    ({"method": "standard", "epochs": 1, "lr": 0.1, "seed": 0, "epoch": 2}, "train.epoch"),
    ({"method": "trades", "eps": 8, "beta": 1, "epochs": 1, "lr": 0.1, "seed": 0}, "train.eps"),
])
def test_bad_recipes_name_the_key(recipe, key):
    with pytest.raises(RegistryError) as err:
        zoo.check_recipe(recipe, "entry.yaml")
    assert err.value.key == key and "entry.yaml" in str(err.value)


def test_zoo_size_and_variety():
    specs = _entries()
    assert len(specs) >= 22
    assert len({s.source for s in specs}) >= 2
    methods = [s.train["method"] for s in specs]
    assert methods.count("standard") >= 2 and methods.count("pgd") >= 3
    assert methods.count("noise") >= 2
    assert len({s.train["beta"] for s in specs if s.train["method"] == "trades"}) >= 2
    assert len({s.train["eps"] for s in specs if s.train["method"] == "pgd"}) >= 3


@pytest.mark.parametrize("spec", _entries(), ids=lambda s: s.id)
def test_shipped_weights_match_their_entry(spec):
    path = DEFAULT_REGISTRY / spec.weights
    assert path.is_file(), f"{spec.path}: run `shiftbench zoo train --models {spec.id}`"
    assert path.stat().st_size <= 200 * 1024
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = architectures.build(spec.source_target, **dict(spec.arch_args))
    model.load_state_dict(state)  # strict: the entry's arch_args fit the weights
    zoo.check_recipe(spec.train, spec.path)


def _robust_acc(spec, x, y, eps) -> float:
    model = architectures.build(spec.source_target, **dict(spec.arch_args))
    model.load_state_dict(torch.load(DEFAULT_REGISTRY / spec.weights, map_location="cpu", weights_only=True))
    model.eval()
    adv = pgd(model, x, y, eps=eps, norm="Linf", steps=10, seed=0)
    with torch.no_grad():
        return float(((model(x).argmax(1) == y) & (model(adv).argmax(1) == y)).float().mean())


def test_adversarial_training_beats_standard_at_the_id_eps():
    eps = float(load_yaml(ID_THREAT)["eps"])
    x, y = load_id("digits", "test")
    x, y = x[:200], y[:200]
    by_id = {s.id: s for s in _entries()}
    for arch in ("mlp", "cnn", "lenet"):
        std = _robust_acc(by_id[f"{arch}-standard"], x, y, eps)
        adv = _robust_acc(by_id[f"{arch}-pgd-0.10"], x, y, eps)
        assert adv > std + 0.2, f"{arch}: PGD-AT {adv:.2f} vs standard {std:.2f} at eps {eps}"


def test_main_writes_then_checks(tmp_path: Path, capsys):
    reg = tmp_path / "registry"
    (reg / "models" / "digits").mkdir(parents=True)
    entry = reg / "models" / "digits" / "test-tiny.yaml"
    entry.write_text(
        "# a comment that must survive\n"
        "id: test-tiny\nsource: builtin:mlp\ndataset: digits\narchitecture: MLP-1x8\ntraining: Standard\n"
        f"weights: weights/digits/test-tiny.pt\nsha256: '{'0' * 64}'\narch_args: {{hidden: 8, depth: 1}}\n"
        "train: {method: standard, subset: 64, epochs: 1, lr: 0.01, seed: 0}\n"
    )
    args = argparse.Namespace(registry=str(reg), models="test-*", check=False)
    assert zoo.main(args) == 0
    spec = build_spec("models", load_yaml(entry), entry)
    weights = reg / "weights" / "digits" / "test-tiny.pt"
    assert spec.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert entry.read_text().startswith("# a comment that must survive\n")
    assert zoo.main(argparse.Namespace(registry=str(reg), models=None, check=True)) == 0
    # a tampered entry is reported, and --check writes nothing
    shutil.copy(entry, tmp_path / "saved.yaml")
    zoo.set_sha256(entry, "f" * 64)
    assert zoo.main(argparse.Namespace(registry=str(reg), models=None, check=True)) == 1
    captured = capsys.readouterr()
    assert "DIFF test-tiny" in captured.out + captured.err
    assert "f" * 64 in entry.read_text()


@pytest.mark.parametrize("model_id", ["cnn-pgd-0.10", "lenet-standard", "mlp-standard"])
def test_loaded_models_agree_with_their_architecture(model_id):
    """load_model puts conv nets in channels-last layout for speed; that must not change what the
    model computes, and must keep input gradients (the attacks use them) the same."""
    from benchmark.models.load import load_model
    from benchmark.registry import Registry

    reg = Registry(DEFAULT_REGISTRY)
    spec = reg.model(model_id)
    plain = architectures.build(spec.source_target, **dict(spec.arch_args))
    plain.load_state_dict(torch.load(DEFAULT_REGISTRY / spec.weights, map_location="cpu", weights_only=True))
    plain.eval()
    fast = load_model(spec, reg)
    assert not fast.training
    x = load_id("digits", "test")[0][:64].clone().requires_grad_(True)
    grads = []
    for m in (plain, fast):
        out = m(x)
        (g,) = torch.autograd.grad(out.logsumexp(1).sum(), x)
        grads.append((out.detach(), g))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-4)
    assert torch.equal(grads[0][0].argmax(1), grads[1][0].argmax(1))
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5)
