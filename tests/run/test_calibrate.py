"""``shiftbench calibrate``: each row runs the attack its threat uses (``--fast`` forces others),
and a randomized model is compared with AutoAttack's ``rand`` version under its own targets."""
from __future__ import annotations

import pytest
import torch

from benchmark import cli
from benchmark.attacks import run_attack
from benchmark.attacks.autoattack import autoattack
from benchmark.data import datasets
from benchmark.models.defenses import Randomized
from benchmark.registry import Registry, ThreatSpec, default_registry_root
from benchmark.run import calibrate


@pytest.fixture(scope="module")
def few(tiny_model):
    """The tiny model and 6 digits test images (calibrate keeps the clean-correct ones itself)."""
    x, y = datasets.load_id("digits", "test")
    return tiny_model, x[:6], y[:6]


def _robust(model, xa, y) -> torch.Tensor:
    with torch.no_grad():
        return model(xa).argmax(1) == y


def test_without_fast_each_row_runs_its_threats_own_attack(few):
    """digits-l1's entry says apgd-l1 and digits-linf's apgd-mm: each row runs that one, with the
    entry's attack_args (the same robust accuracy as the threat's attack run directly)."""
    model, x, y = few
    reg = Registry(default_registry_root(), check_files=False)
    l1, linf = reg.threat("digits-l1"), reg.threat("digits-linf")
    assert (l1.attack, linf.attack) == ("apgd-l1", "apgd-mm")
    rows = calibrate.calibrate_model(model, "tiny", x, y, [l1, linf])
    assert [(r.threat, r.fast_name) for r in rows] == [("digits-l1", "apgd-l1"), ("digits-linf", "apgd-mm")]
    assert all(r.aa_version == "standard" and not r.randomized and r.extra == () for r in rows)
    ok = _robust(model, x, y)
    xc, yc = x[ok], y[ok]
    for r, t in zip(rows, (l1, linf)):
        direct = _robust(model, run_attack(model, xc, yc, t, seed=0), yc).sum().item() / len(x)
        assert r.fast == pytest.approx(direct)
        assert r.aa <= r.clean
    text = calibrate.render(rows, "shiftbench calibrate")
    assert "| digits-l1 | L1 | 5 | 6 |" in text and "| apgd-l1 |" in text and "| apgd-mm |" in text
    assert "(apgd-l1, apgd-mm vs AutoAttack)" in text and "| attack % |" in text


def _calibrate_cli(registry, tmp_path, *extra: str) -> tuple[int, list[list[str]]]:
    out = tmp_path / "calib.md"
    rc = cli.main(["calibrate", "--suite", "tiny", "--registry", str(registry), "--models", "tiny",
                   "--threats", "tiny-linf", "--n", "6", "--device", "cpu", "--out", str(out), *extra])
    table = [[c.strip() for c in line.strip("|").split("|")]
             for line in out.read_text().splitlines() if line.startswith("| tiny |")]
    return rc, table


def test_cli_uses_the_threats_attack_and_fast_forces_another(tiny_registry, tmp_path):
    """The tiny registry's tiny-linf says pgd: calibrate runs pgd; ``--fast apgd-ce`` runs apgd-ce."""
    _, rows = _calibrate_cli(tiny_registry, tmp_path)
    assert len(rows) == 1 and rows[0][1] == "tiny-linf" and rows[0][6] == "pgd" and rows[0][9] == "standard"
    _, rows = _calibrate_cli(tiny_registry, tmp_path, "--fast", "apgd-ce")
    assert len(rows) == 1 and rows[0][6] == "apgd-ce"


def test_fast_forces_the_named_attack(few):
    model, x, y = few
    t = Registry(default_registry_root(), check_files=False).threat("digits-linf")
    assert t.attack == "apgd-mm"
    (row,) = calibrate.calibrate_model(model, "tiny", x, y, [t], fast=("pgd", "apgd-mm"), fast_args={"steps": 5})
    assert row.fast_name == "pgd" and [e[0] for e in row.extra] == ["apgd-mm"]


class _Noisy(torch.nn.Module):
    """The tiny model behind gaussian noise on its input: a different output on every call."""

    def __init__(self, net: torch.nn.Module, sigma: float = 0.1):
        super().__init__()
        self.inner, self.sigma = net, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + self.sigma * torch.randn_like(x))


def test_randomized_model_gets_autoattack_rand(few, monkeypatch):
    """What reaches pyautoattack is version 'rand'; the row says so and is judged by the decision rule."""
    import pyautoattack

    model, x, y = few
    rmodel = Randomized(_Noisy(model), eot=2, draws=3)
    versions = []
    real_init = pyautoattack.AutoAttack.__init__

    def spy(self, *args, **kwargs):
        versions.append(kwargs.get("version"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(pyautoattack.AutoAttack, "__init__", spy)
    t = ThreatSpec(id="t", kind="lp", attack="apgd-mm", norm="Linf", eps=0.1, attack_args={"steps": 10})
    (row,) = calibrate.calibrate_model(rmodel, "noisy", x, y, [t])
    assert versions == ["rand"]
    assert row.randomized and row.aa_version == "rand" and row.fast_name == "apgd-mm"
    ok = _robust(rmodel, x, y)  # the majority-of-draws decisions, the same on every call
    assert row.clean == pytest.approx(ok.float().mean().item()) and row.aa <= row.clean
    (plain,) = calibrate.calibrate_model(model, "tiny", x, y, [t])
    assert versions == ["rand", "standard"] and not plain.randomized
    text = calibrate.render([plain, row], "shiftbench calibrate")
    assert "**Summary (deterministic models)**" in text and "**Summary (randomized models)**" in text
    assert "| noisy | t | Linf | 0.1 |" in text and "| rand |" in text


def test_randomized_rows_have_their_own_targets():
    """Randomized rows: mean <= 0.5, max <= 2 points, no time target; the exit needs both groups."""
    det = calibrate.Row("m", "t", "Linf", 0.1, 100, 0.9, 0.30, 0.30, 1.0, 30.0)
    rnd = [calibrate.Row("r", "t", "Linf", 0.1, 100, 0.9, 0.31, 0.30, 50.0, 30.0, randomized=True, aa_version="rand"),
           calibrate.Row("r", "u", "Linf", 0.1, 100, 0.9, 0.30, 0.30, 50.0, 30.0, randomized=True, aa_version="rand")]
    assert not calibrate.targets_met(calibrate.summary(rnd))  # mean 0.5, slower: fails the deterministic ones
    assert calibrate.all_targets_met([det, *rnd])
    worse = calibrate.Row("r", "v", "Linf", 0.1, 100, 0.9, 0.33, 0.30, 1.0, 30.0, randomized=True, aa_version="rand")
    assert not calibrate.all_targets_met([det, *rnd, worse])  # max gap 3 points
    slow = calibrate.Row("m", "u", "Linf", 0.1, 100, 0.9, 0.30, 0.30, 10.0, 30.0)
    assert not calibrate.all_targets_met([det, slow, *rnd])  # the deterministic time target still holds
    assert not calibrate.all_targets_met([])


def test_autoattack_refuses_an_unknown_version(few):
    model, x, y = few
    with pytest.raises(ValueError, match="'bogus'"):
        autoattack(model, x, y, eps=0.1, norm="Linf", version="bogus")
