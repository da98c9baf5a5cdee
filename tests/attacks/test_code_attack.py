"""The defense author's own attack: a threat entry, ``--attack`` or ``attack=`` naming
``python:module:function``.  A small package written into a tmp folder (a user's repository) holds
a plain Linf PGD and an attack that leaves its budget; it is refused without the code opt-in
(nothing imported), and with it runs through the same cells, trust checks and results as ours."""
from __future__ import annotations

import json
import os
import re
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

import benchmark
from benchmark import cli
from benchmark.attacks import run_attack
from benchmark.data import datasets
from benchmark.models.load import code_opt_in
from benchmark.registry import CodeNotAllowed, Registry, RegistryError, ThreatSpec, build_spec
from benchmark.run.evaluate import attack_outcome

PGD = "python:myattacks.pgd_mine:pgd"
TOO_FAR = "python:myattacks.pgd_mine:too_far"

USER_CODE = '''
"""A defense author's attacks, with shiftbench's signature."""
import torch
import torch.nn.functional as F

CALLS = []  # images per call: proves this code ran, not one of shiftbench's attacks


def pgd(model, x, y, threat, *, seed, index=None, steps=10):
    """Linf PGD from a seeded uniform start, projected onto the threat's ball and [0, 1]."""
    CALLS.append(len(x))
    eps = threat.eps
    gen = torch.Generator().manual_seed(seed)
    adv = (x + (2 * torch.rand(x.shape, generator=gen) - 1).to(x.device) * eps).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(adv), y)
            grad, = torch.autograd.grad(loss, adv)
        adv = adv.detach() + 2.5 * eps / steps * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def too_far(model, x, y, threat, *, seed):
    """FGSM with a step of 3 eps: inside [0, 1], three times outside the budget."""
    CALLS.append(len(x))
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        grad, = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return (x + 3 * threat.eps * grad.sign()).clamp(0, 1).detach()


def wrong_shape(model, x, y, threat, *, seed):
    return x[:, :, :4]


not_a_function = 3
'''


@pytest.fixture()
def user_code(tmp_path, monkeypatch):
    """The package ``myattacks`` in a fresh folder on sys.path (and the current folder: a user's
    repository); never imported before the test, forgotten after it; no opt-in in the environment."""
    root = tmp_path / "user-repo"
    (root / "myattacks").mkdir(parents=True)
    (root / "myattacks" / "__init__.py").write_text("")
    (root / "myattacks" / "pgd_mine.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.chdir(root)
    monkeypatch.delenv("SHIFTBENCH_ALLOW_CODE", raising=False)
    for name in ("myattacks", "myattacks.pgd_mine"):
        sys.modules.pop(name, None)
    yield root
    for name in ("myattacks", "myattacks.pgd_mine"):
        sys.modules.pop(name, None)


def calls() -> list[int]:
    return sys.modules["myattacks.pgd_mine"].CALLS


def linf(attack: str, eps: float = 0.1) -> ThreatSpec:
    return ThreatSpec(id="user-linf", kind="lp", norm="Linf", eps=eps, attack=attack)


def use_attack(registry, threat_id: str, attack: str, **suite_changes):
    """Point a threat entry of the tiny registry at ``attack``; apply ``suite_changes`` to suite tiny."""
    path = registry / "threats" / f"{threat_id}.yaml"
    data = yaml.safe_load(path.read_text())
    data["attack"] = attack
    data.pop("attack_args", None)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    if suite_changes:
        spath = registry / "suites" / "tiny.yaml"
        suite = yaml.safe_load(spath.read_text())
        suite.update(suite_changes)
        spath.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def digits_test():
    x, y = datasets.load_id("digits", "test")
    return x[:48], y[:48]


# --------------------------------------------------------------------------- validation, refusal
@pytest.mark.parametrize("attack,fragment", [
    ("python:os:system", "standard-library module 'os', not attack code"),
    ("python:builtins:eval", "standard-library module 'builtins'"),
    ("python:myattacks.pgd_mine", "expected python:<module>:<function>"),
    ("python:my-attacks:pgd", "expected python:<module>:<function>"),
    ("python:myattacks:pgd:extra", "expected python:<module>:<function>"),
])
def test_threat_entry_is_validated_without_importing(tmp_path, user_code, attack, fragment):
    path = tmp_path / "threats" / "t.yaml"
    raw = {"id": "t", "kind": "lp", "norm": "Linf", "eps": 0.1, "attack": attack}
    with pytest.raises(RegistryError) as exc:
        build_spec("threats", raw, path)
    assert str(exc.value).startswith(f"{path}: key 'attack': ") and fragment in str(exc.value)
    ok = build_spec("threats", {**raw, "attack": PGD}, path)
    assert ok.attack == PGD
    assert build_spec("threats", {**raw, "attack": "no-such-attack"}, path).attack == "no-such-attack"  # as before
    assert "myattacks" not in sys.modules  # validation imports nothing


def test_refused_without_opt_in_naming_file_key_module(tiny_registry, tiny_model, user_code, tmp_path, capsys):
    threat_file = use_attack(tiny_registry, "tiny-linf-large", PGD)
    Registry(tiny_registry)  # the registry loads: nothing is imported to validate it
    # the command line: the threat's cells are not run, the others are
    rc = cli.main(["run", "--suite", "tiny", "--registry", str(tiny_registry), "--results", str(tmp_path / "res"),
                   "--dry-run"])
    cap = capsys.readouterr()
    assert rc == 1, cap.err
    assert f"{threat_file}: key 'attack': attack '{PGD}' runs code from module 'myattacks.pgd_mine'" in cap.err
    assert "--allow-code" in cap.err and "allow_code" in cap.err
    assert "tiny-linf-large" not in cap.out and cap.out.count("| tiny-linf\n") == 3  # ID and two severities
    # the Python API: refused before any cell runs
    with pytest.raises(CodeNotAllowed, match=re.escape(f"{threat_file}: key 'attack': attack '{PGD}'") +
                       ".*'myattacks.pgd_mine'.*allow_code=True"):
        benchmark.evaluate(tiny_model, suite="tiny", registry=Registry(tiny_registry), shifts=[], n_examples=8)
    with pytest.raises(CodeNotAllowed, match=r"evaluate\(attack=...\): attack 'python:myattacks.pgd_mine:pgd'"):
        benchmark.evaluate(tiny_model, suite="digits", shifts=[], threats=[], attack=PGD, n_examples=8)
    # an opt-in for other modules only is no opt-in for this one
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHIFTBENCH_ALLOW_CODE", "otherpkg,myattacks.other")
        with pytest.raises(CodeNotAllowed, match="not imported"):
            run_attack(tiny_model, torch.zeros(2, 1, 16, 16), torch.zeros(2, dtype=torch.long), linf(PGD), seed=0)
    assert "myattacks" not in sys.modules


def test_broken_user_attacks_fail_clearly(tiny_model, user_code, monkeypatch, digits_test):
    monkeypatch.setenv("SHIFTBENCH_ALLOW_CODE", "myattacks")  # the environment's opt-in, by module prefix
    x, y = digits_test
    for attack, fragment in [("python:myattacks.pgd_mine:nope", "has no attribute 'nope'"),
                             ("python:myattacks.pgd_mine:not_a_function", r"is not callable \(int\)"),
                             ("python:myattacks.missing:pgd", "cannot be imported")]:
        with pytest.raises(RegistryError, match=fragment):
            run_attack(tiny_model, x, y, linf(attack), seed=0)
    with pytest.raises(ValueError, match=r"returned a torch.float32 tensor of shape \(48, 1, 4, 16\).*expected"):
        run_attack(tiny_model, x, y, linf("python:myattacks.pgd_mine:wrong_shape"), seed=0)


# --------------------------------------------------------------------------- with the opt-in
def test_user_pgd_runs_in_budget_and_beats_clean(tiny_model, user_code, digits_test):
    x, y = digits_test
    threat = Registry(benchmark.registry.DEFAULT_REGISTRY).threat("digits-linf")
    df = benchmark.evaluate(tiny_model, suite="digits", shifts=[], threats=[], attack=PGD, n_examples=48,
                            allow_code=True)
    assert len(calls()) >= 1  # the user's function did the attacking
    row = df.iloc[0]
    assert row["attack"] == PGD and row["threat"] == "digits-linf"
    assert row["robust_acc"] < row["clean_acc"], "a PGD at the digits budget must break some of a standard MLP"
    assert "in_budget" not in row["flags"] and "in_range" not in row["flags"]
    # the evaluator's own path, with every trust check (the deep ones re-run the user's attack at eps/2)
    n_before = len(calls())
    with code_opt_in(True):
        out = attack_outcome(tiny_model, x, y, threat, seed=0, attack=PGD)
    assert len(calls()) > n_before
    assert (out.robust_correct <= out.clean_correct).all() and out.robust_correct.sum() < out.clean_correct.sum()
    assert out.checks["in_budget"]["ok"] and out.checks["in_range"]["ok"]
    assert float((out.x_adv - x).abs().max()) <= threat.eps + 1e-6
    assert "budget_monotone" in out.checks and PGD in out.broken_by
    assert "SHIFTBENCH_ALLOW_CODE" not in os.environ  # the opt-in ended with the call


def test_attack_leaving_its_budget_is_flagged(tiny_model, user_code, monkeypatch, digits_test):
    monkeypatch.setenv("SHIFTBENCH_ALLOW_CODE", "1")
    x, y = digits_test
    out = attack_outcome(tiny_model, x, y, linf(TOO_FAR, eps=0.1), seed=0, deep_checks=False)
    assert calls()
    assert out.checks["in_budget"]["ok"] is False
    assert out.checks["in_budget"]["max_norm"] == pytest.approx(0.3, abs=1e-5)  # 3 eps, reported
    assert out.checks["in_range"]["ok"] and out.robust_correct.sum() < out.clean_correct.sum()
    df = benchmark.evaluate(tiny_model, suite="digits", shifts=[], threats=[], attack=TOO_FAR, n_examples=48)
    assert "in_budget" in df.iloc[0]["flags"]


def test_threat_entry_runs_stores_and_renders(tiny_registry, user_code, tmp_path, capsys):
    """`shiftbench run` on a suite whose threat shift names the user's attack, allowed by the
    suite's ``allow_code`` (no --allow-code): results store the name as given; the leaderboard
    and the site pages render it."""
    from benchmark.report import leaderboard, site

    use_attack(tiny_registry, "tiny-linf-large", PGD, allow_code=["myattacks"], n_examples=40)
    results = tmp_path / "results"
    assert cli.main(["run", "--suite", "tiny", "--registry", str(tiny_registry), "--results", str(results),
                     "--no-progress"]) == 0
    assert calls()
    files = sorted((results / "tiny").rglob("*.json"))
    payloads = {json.loads(f.read_text())["threat"] + "/" + json.loads(f.read_text())["data"]: json.loads(f.read_text())
                for f in files}
    mine = payloads["tiny-linf-large/id"]
    assert mine["attack"] == PGD and mine["spec"]["threat"]["attack"] == PGD and "batch_size" in mine
    assert len(files) == 4 and all(":" not in f.name for f in files)  # file names: threat ids, not attacks
    assert mine["robust_acc"] <= mine["clean_acc"] and mine["checks"]["in_budget"]["ok"]
    assert payloads["tiny-linf/id"]["attack"] == "pgd"
    reg = Registry(benchmark.registry.layered_location(tiny_registry))
    text = leaderboard.write(reg, "tiny", results, tmp_path / "lb" / "tiny.md").read_text()
    assert f", {PGD})" in text  # the threat shift's description
    assert f"attack(s) used: {', '.join(sorted(['pgd', PGD]))}" in text
    board = leaderboard.build_board(reg, "tiny", results)
    site.model_page(board, "tiny", "cmd")
    assert "tiny-linf-large" in site.suite_page(board, "cmd")
    # a resumed run finds every cell done
    capsys.readouterr()
    assert cli.main(["run", "--suite", "tiny", "--registry", str(tiny_registry), "--results", str(results),
                     "--dry-run"]) == 0
    assert "4 done, 0 to run" in capsys.readouterr().err


def test_regress_with_the_authors_attack(tiny_registry, user_code, tmp_path, capsys):
    """A one-cell baseline of the tiny model (our PGD), then `regress --attack python:...`."""
    results, baseline = tmp_path / "results", tmp_path / "baseline.json"
    common = ["--registry", str(tiny_registry), "--n", "40"]
    assert cli.main(["run", "--suite", "tiny", "--shifts", "id", "--threats", "tiny-linf", "--results", str(results),
                     "--no-progress", *common]) == 0
    assert cli.main(["export-baseline", "--suite", "tiny", "--model", "tiny", "--results", str(results),
                     "--out", str(baseline), *common]) == 0
    capsys.readouterr()
    # without the opt-in: refused before anything runs, nothing imported
    rc = cli.main(["regress", "--model", "tiny", "--baseline", str(baseline), "--attack", PGD, "--no-progress",
                   *common])
    err = capsys.readouterr().err
    assert rc == 2 and f"--attack: attack '{PGD}' runs code from module 'myattacks.pgd_mine'" in err
    assert "--allow-code" in err and "myattacks" not in sys.modules
    # with it: the author's attack on every cell, said in the report
    report = tmp_path / "report.md"
    rc = cli.main(["regress", "--model", "tiny", "--baseline", str(baseline), "--attack", PGD, "--allow-code",
                   "--report", str(report), "--no-progress", *common])
    text = report.read_text()
    assert rc in (0, 1) and calls()
    assert f"Attack: `{PGD}` on every cell, instead of each threat's own; the baseline's cells were made with `pgd`" \
        in text
    assert "| id | tiny-linf | 40 |" in text
    # an attack that breaks (nearly) everything makes the same model significantly less robust: the
    # override really replaces the threat's attack
    res = benchmark.regress("tiny", baseline, registry=tiny_registry, n_examples=40, attack=TOO_FAR, allow_code=True)
    row = res.cells.iloc[0]
    assert res.worse == ["id x tiny-linf"] and row["robust_now"] < row["robust_baseline"]
    assert res.attack == TOO_FAR and res.baseline_attacks == ("pgd",)
