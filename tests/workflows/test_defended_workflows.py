"""A defense written as a user would, in their own package, through `benchmark.evaluate` and
`shiftbench regress`: declared randomness and transforms are honoured, undeclared randomness is
refused, numbers repeat, and the same defense as a zoo entry gives the same outcomes."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

import benchmark
from benchmark import cli
from benchmark.cli import workflows as cli_workflows
from benchmark.models.load import ModelError
from benchmark.registry import DEFAULT_REGISTRY, Registry

USER = '''
import torch
from torch import nn

from benchmark.models import architectures


class NoisyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = architectures.build("mlp", hidden=96, depth=2)
        self.net.load_state_dict(torch.load({noise!r}, weights_only=True))

    def forward(self, x):
        return self.net(x + 0.4 * torch.randn_like(x))


def noisy():
    return NoisyMLP().eval()


def declared_noisy():
    m = NoisyMLP().eval()
    m.shiftbench_randomized = {{"eot": 20, "draws": 5}}
    return m


def binarize(x):
    return (x > 0.5).to(x.dtype)
'''


@pytest.fixture()
def userpkg(tmp_path, monkeypatch):
    reg = Registry(DEFAULT_REGISTRY)
    pkg = tmp_path / "lib" / "userdef"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(textwrap.dedent(USER.format(noise=str(reg.weights_path(reg.model("mlp-noise-0.4"))))))
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    import importlib

    return importlib.import_module("userdef.models")


def test_evaluate_refuses_undeclared_randomness_and_repeats_declared(userpkg):
    with pytest.raises(ModelError, match="randomized"):
        benchmark.evaluate(userpkg.noisy(), suite="digits-defenses", shifts=[], threats=[], n_examples=40)
    frames = [benchmark.evaluate(userpkg.noisy(), suite="digits-defenses", shifts=[], threats=["digits-l2"],
                                 n_examples=40, randomized={"eot": 4, "draws": 5}) for _ in range(2)]
    cols = ["threat", "clean_acc", "robust_acc"]
    assert frames[0][cols].equals(frames[1][cols])
    assert (frames[0]["robust_acc"] <= frames[0]["clean_acc"]).all() and (frames[0]["clean_acc"] > 0.8).all()
    # the attribute declares it too, and gives the same numbers as the argument with the same settings
    by_attr = benchmark.evaluate(userpkg.declared_noisy(), suite="digits-defenses", shifts=[], threats=[],
                                 n_examples=20)
    by_arg = benchmark.evaluate(userpkg.noisy(), suite="digits-defenses", shifts=[], threats=[], n_examples=20,
                                randomized={"eot": 20, "draws": 5})
    assert by_attr[cols].equals(by_arg[cols])


def test_a_python_transform_through_evaluate_needs_the_opt_in(userpkg, monkeypatch):
    from benchmark.models import defenses

    monkeypatch.delenv("SHIFTBENCH_ALLOW_CODE", raising=False)
    reg = Registry(DEFAULT_REGISTRY)
    from benchmark.models.load import load_model

    net = load_model(reg.model("mlp-standard"), reg)
    decl = {"kind": "python", "function": "userdef.models:binarize"}
    with pytest.raises(defenses.DefenseError, match="--allow-code"):
        benchmark.evaluate(net, suite="digits-defenses", shifts=[], threats=[], n_examples=40, input_transform=decl)
    mine = benchmark.evaluate(net, suite="digits-defenses", shifts=[], threats=[], n_examples=60,
                              input_transform=decl, allow_code=True)
    zoo = benchmark.evaluate(net, suite="digits-defenses", shifts=[], threats=[], n_examples=60,
                             input_transform={"kind": "quantize", "bits": 1})
    assert mine[["clean_acc", "robust_acc"]].equals(zoo[["clean_acc", "robust_acc"]])


def test_regress_of_the_users_defense_against_the_zoo_entry(userpkg, tmp_path, capsys):
    """The user's noise-injection model is the zoo entry's defense: same outcomes, verdict ok;
    without its declaration it is refused."""
    results, base = tmp_path / "results", tmp_path / "baseline.json"
    assert cli.main(["run", "--suite", "digits-defenses", "--models", "mlp-noise-0.4-def-noise", "--threats",
                     "digits-linf", "--n", "20", "--results", str(results), "--no-progress"]) == 0
    assert cli.main(["export-baseline", "--suite", "digits-defenses", "--model", "mlp-noise-0.4-def-noise",
                     "--n", "20", "--results", str(results), "--out", str(base)]) == 0
    stored = json.loads(base.read_text())["cells"][0]
    report = tmp_path / "report.md"
    with pytest.raises(ModelError, match="randomized"):
        cli.main(["regress", "--model", "python:userdef.models:noisy", "--baseline", str(base), "--n", "20",
                  "--allow-code", "--no-progress"])
    assert cli.main(["regress", "--model", "python:userdef.models:noisy", "--baseline", str(base), "--n", "20",
                     "--allow-code", "--randomized", "eot=20,draws=5", "--report", str(report),
                     "--no-progress"]) == 0
    res = benchmark.regress("python:userdef.models:noisy", str(base), allow_code=True, n_examples=20,
                            randomized={"eot": 20, "draws": 5})
    row = res.cells.iloc[0]
    assert (row["lost"], row["gained"]) == (0, 0) and row["verdict"] == "ok"
    assert row["robust_now"] == pytest.approx(stored["robust_acc"])
    # the entry's own declaration wins over the command line's: --randomized with other draws changes nothing
    again = benchmark.regress("mlp-noise-0.4-def-noise", str(base), n_examples=20, randomized={"eot": 1, "draws": 3})
    assert (again.cells.iloc[0]["lost"], again.cells.iloc[0]["gained"]) == (0, 0)


def test_key_values_parse_and_name_the_option():
    assert cli_workflows.key_values("eot=20,draws=5", "--randomized") == {"eot": 20, "draws": 5}
    assert cli_workflows.key_values("kind=gaussian-noise,sigma=0.25", "--input-transform") == {"kind": "gaussian-noise",
                                                                                      "sigma": 0.25}
    with pytest.raises(SystemExit, match="--randomized: expected key=value"):
        cli_workflows.key_values("eot20", "--randomized")
