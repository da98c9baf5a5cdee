"""Defenses the evaluator must know of: randomized models (EOT attacks, majority-of-draws
decisions) and non-differentiable input transforms (BPDA); undeclared randomness refused."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.attacks.apgd import _loss_grad, ce_loss
from benchmark.attacks.batching import FixedBatch, fixed_batch
from benchmark.models import defenses
from benchmark.models.load import ModelError, load_model
from benchmark.registry import Registry, RegistryError, canonical
from benchmark.run.evaluate import attack_outcome, result_payload
from benchmark.run.plan import Cell

from conftest import write_yaml

REPO = Path(__file__).resolve().parents[2]


class Noisy(torch.nn.Module):
    """A user's noise-injection defense: Gaussian noise on the input, drawn from the global generator."""

    def __init__(self, net: torch.nn.Module, sigma: float = 0.3):
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x):
        return self.net(x + self.sigma * torch.randn_like(x))


@pytest.fixture(scope="module")
def lp_threat():
    return Registry(REPO / "registry").threat("digits-linf")


def test_an_undeclared_random_model_is_refused_with_how_to_declare(trained, lp_threat):
    net, x, y = trained
    with pytest.raises(ModelError, match=r"randomized: \{eot: 20, draws: 5\}"):
        attack_outcome(Noisy(net), x, y, lp_threat, seed=0, checks=False)
    # the same network, deterministic, is evaluated; declared, the noisy one is too
    attack_outcome(net, x[:8], y[:8], lp_threat, seed=0, checks=False)
    declared = defenses.defend(Noisy(net), randomized={"eot": 2, "draws": 3})
    out = attack_outcome(declared, x[:8], y[:8], lp_threat, seed=0, checks=False)
    assert out.robust_correct.sum() <= out.clean_correct.sum()


def test_verdicts_are_per_example_whatever_the_batch_and_the_calls_before(trained):
    net, x, _ = trained
    model = fixed_batch(defenses.Randomized(Noisy(net), eot=4, draws=5))
    whole = defenses.judge(model, x)
    torch.randn(1000)  # draws made in between change nothing
    alone = torch.cat([defenses.judge(model, x[i:i + 1]) for i in range(len(x))])
    reversed_ = defenses.judge(model, x.flip(0)).flip(0)
    assert torch.equal(whole, alone) and torch.equal(whole, reversed_)
    votes = whole.floor()
    assert torch.equal(votes.sum(1), torch.full((len(x),), 5.0))  # 5 draws voted per example
    # the votes are those of 5 independent draws: a noisier model is not unanimous everywhere
    noisier = fixed_batch(defenses.Randomized(Noisy(net, sigma=0.8), eot=4, draws=5))
    assert (defenses.judge(noisier, x).floor().amax(1) < 5).any()
    # a query (what an attack sees without gradients) is reproducible too, and draws apart from the verdict
    with torch.no_grad():
        q = model(x)
        assert torch.equal(q, model(x)) and torch.allclose(q.exp().sum(1), torch.ones(len(x)))


def test_fixed_batch_keeps_the_randomized_wrapper_outermost(trained):
    net, _, _ = trained
    r = defenses.Randomized(Noisy(net), eot=3, draws=3, seed=7)
    fb = fixed_batch(r)
    assert isinstance(fb, defenses.Randomized) and isinstance(fb.inner, FixedBatch)
    assert (fb.eot, fb.draws, fb.seed) == (3, 3, 7) and fixed_batch(fb) is fb
    assert defenses.eot_samples(fb) == 3 and defenses.eot_samples(net) == 1


def test_eot_gradient_is_the_mean_of_the_samples_gradients(trained):
    net, x, y = trained
    x, y = x[:6], y[:6]
    # a deterministic network declared randomized: every sample is the same, so is the mean
    plain = _loss_grad(net, x, y, None, ce_loss)
    same = _loss_grad(defenses.Randomized(net, eot=5, draws=3), x, y, None, ce_loss)
    for a, b in zip(plain, same):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a noisy one: the 20-sample gradient is closer to a 400-sample estimate than one draw is
    model = defenses.Randomized(Noisy(net, sigma=0.3), eot=20, draws=3)
    _, g20, _ = _loss_grad(model, x, y, None, ce_loss)
    _, g400, _ = _loss_grad(defenses.Randomized(Noisy(net, sigma=0.3), eot=400, draws=3), x, y, None, ce_loss)
    _, g1, _ = _loss_grad(defenses.Randomized(Noisy(net, sigma=0.3), eot=1, draws=3), x, y, None, ce_loss)
    assert (g20 - g400).norm() < (g1 - g400).norm()
    # and it is reproducible: the draws are seeded by the batch's pixels
    assert torch.equal(g20, _loss_grad(model, x, y, None, ce_loss)[1])


def test_eps_zero_gives_the_clean_outcomes_of_a_randomized_model(trained, lp_threat):
    net, x, y = trained
    model = defenses.Randomized(Noisy(net, sigma=0.5), eot=2, draws=5)
    out = attack_outcome(model, x, y, dataclasses.replace(lp_threat, eps=0.0), seed=0, checks=False)
    assert np.array_equal(out.robust_correct, out.clean_correct)
    assert out.clean_correct.mean() < 1.0  # sigma 0.5 costs some clean accuracy: the draws are real


def test_eot_breaks_at_least_as_much_as_one_draw_and_runs_reproduce(trained, lp_threat):
    net, x, y = trained
    one = attack_outcome(defenses.Randomized(Noisy(net, 0.4), eot=1, draws=5), x, y, lp_threat, seed=0, checks=False)
    runs = [attack_outcome(defenses.Randomized(Noisy(net, 0.4), eot=10, draws=5), x, y, lp_threat, seed=0,
                           checks=False) for _ in range(2)]
    assert np.array_equal(runs[0].robust_correct, runs[1].robust_correct)
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)
    assert np.array_equal(runs[0].clean_correct, one.clean_correct)  # decisions do not depend on eot
    assert runs[0].robust_correct.sum() <= one.robust_correct.sum()


def test_bpda_forward_is_the_real_transform_and_backward_the_identity(trained):
    net, x, y = trained
    model = defenses.defend(net, input_transform={"kind": "quantize", "bits": 1})
    with torch.no_grad():
        assert torch.equal(model(x), net(defenses.quantize(x, 1)))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y), xg)
    xq = defenses.quantize(x, 1).requires_grad_(True)
    (want,) = torch.autograd.grad(torch.nn.functional.cross_entropy(net(xq), y), xq)
    assert torch.equal(g, want) and g.abs().sum() > 0
    exact = defenses.defend(net, input_transform={"kind": "quantize", "bits": 1, "bpda": "exact"})
    (g0,) = torch.autograd.grad(torch.nn.functional.cross_entropy(exact(xg), y), xg)
    assert g0.abs().sum() == 0  # what a gradient attack sees without BPDA


def test_bpda_breaks_what_the_masked_gradient_hides(trained, lp_threat):
    net, x, y = trained
    masked = defenses.defend(net, input_transform={"kind": "quantize", "bits": 2, "bpda": "exact"})
    bpda = defenses.defend(net, input_transform={"kind": "quantize", "bits": 2})
    a = attack_outcome(masked, x, y, lp_threat, seed=0, checks=False)
    b = attack_outcome(bpda, x, y, lp_threat, seed=0, checks=False)
    assert np.array_equal(a.clean_correct, b.clean_correct)
    assert b.robust_correct.sum() < a.robust_correct.sum()


def test_transforms_are_what_they_say():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g)
    q = defenses.quantize(x, 2)
    assert set(torch.unique(q * 3).round().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    m = defenses.median(x, 3)
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    assert m[1, 0, 5, 7] == pad[1, 0, 5:8, 7:10].flatten().median()
    for c in (1, 3):
        coarse = torch.rand(2, c, 4, 4, generator=g)  # a smooth image, as JPEG is made for
        img = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
        j = defenses.jpeg(img, 50)
        assert j.shape == img.shape and 0 <= j.min() and j.max() <= 1
        assert torch.equal(j, defenses.jpeg(img, 50)) and not torch.equal(j, img)
        assert (j - img).abs().mean() < 0.05  # a compressed image, not noise


def test_a_result_records_the_defense_and_undefended_results_keep_their_keys(trained, lp_threat):
    reg = Registry(REPO / "registry")
    spec = reg.model("mlp-noise-0.4-def-noise")
    twin = reg.model("mlp-noise-0.4")
    assert "randomized" not in canonical(twin) and "input_transform" not in canonical(twin)
    assert canonical(spec)["randomized"] == {"eot": 20, "draws": 5}
    net, x, y = trained
    model = defenses.defend(Noisy(net), randomized={"eot": 3, "draws": 3})
    out = attack_outcome(model, x[:8], y[:8], lp_threat, seed=0, checks=False)
    cell = Cell("digits-defenses", spec, None, None, lp_threat, "id", 8, 0)
    payload = result_payload(cell, out, "apgd-mm", model=model)
    assert payload["defense"]["eot"] == 3 and payload["defense"]["draws"] == 3 and "batch_size" in payload
    assert result_payload(cell, out, "ppgd", model=model)["defense"]["eot"] == 1  # no EOT in PPGD
    plain = result_payload(dataclasses.replace(cell, model=twin), out, "apgd-mm", model=net)
    assert "defense" not in plain and "batch_size" not in plain


def test_the_zoo_defenses_load_as_declared_and_have_their_own_suite():
    reg = Registry(REPO / "registry")
    noisy = load_model(reg.model("mlp-noise-0.4-def-noise"), reg)
    assert isinstance(noisy, defenses.Randomized) and noisy.eot == 20 and noisy.draws == 5
    assert defenses.transformation(noisy).name == "gaussian-noise"
    bits = load_model(reg.model("mlp-standard-def-bits1"), reg)
    assert defenses.transformation(bits).bpda == "identity" and defenses.randomization(bits) is None
    digits = {m.id for m in reg.suite_models(reg.suite("digits"))}
    defended = {m.id for m in reg.suite_models(reg.suite("digits-defenses"))}
    assert not any("-def-" in m for m in digits) and len(digits) == 24
    assert {"mlp-noise-0.4-def-noise", "mlp-standard-def-bits1", "mlp-noise-0.4", "mlp-standard"} <= defended


@pytest.mark.parametrize("change, key", [
    ({"randomized": {"eot": 0}}, "randomized.eot"),
    ({"randomized": {"draws": 4}}, "randomized.draws"),
    ({"randomized": {"samples": 4}}, "randomized.samples"),
    ({"input_transform": {"kind": "blur"}}, "input_transform.kind"),
    ({"input_transform": {"kind": "quantize"}}, "input_transform.bits"),
    ({"input_transform": {"kind": "gaussian-noise", "sigma": 0.3}}, "input_transform"),
    ({"input_transform": {"kind": "jpeg", "quality": 50, "bpda": "smooth"}}, "input_transform.bpda"),
])
def test_bad_declarations_name_the_file_and_the_key(tmp_path, change, key):
    import yaml

    from benchmark.registry import build_spec

    src = REPO / "registry" / "models" / "digits" / "mlp-standard-def-bits1.yaml"
    entry = {k: v for k, v in yaml.safe_load(src.read_text()).items() if k != "input_transform"}
    path = write_yaml(tmp_path / "models" / "digits" / "mlp-standard-def-bits1.yaml", {**entry, **change})
    with pytest.raises(RegistryError) as err:
        build_spec("models", yaml.safe_load(path.read_text()), path)
    assert f"key '{key}'" in str(err.value) and "mlp-standard-def-bits1.yaml" in str(err.value)
    assert build_spec("models", entry, path).input_transform == {}  # the same entry without it is fine


def test_a_python_transform_needs_the_opt_in(trained, tmp_path, monkeypatch):
    pkg = tmp_path / "mydefense"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "transforms.py").write_text("import torch\n\ndef binarize(x):\n    return (x > 0.5).to(x.dtype)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SHIFTBENCH_ALLOW_CODE", raising=False)
    net, x, _ = trained
    decl = {"kind": "python", "function": "mydefense.transforms:binarize"}
    with pytest.raises(defenses.DefenseError, match="--allow-code"):
        defenses.defend(net, input_transform=decl)
    model = defenses.defend(net, input_transform=decl, allow_code=True)
    with torch.no_grad():
        assert torch.equal(model(x), net(defenses.quantize(x, 1)))  # the user's threshold is the 1-bit one
