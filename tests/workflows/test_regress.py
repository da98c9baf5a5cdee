"""`shiftbench export-baseline` and `shiftbench regress` on real digits zoo models: a model against
its own baseline passes (every outcome identical), a standard model against an adversarially
trained model's baseline fails with the failing cells named, and a baseline made with other
settings is refused with what differs."""
from __future__ import annotations

import json

import pytest

import benchmark
from benchmark import cli
from benchmark.attacks import HARNESS_VERSION
from benchmark.workflows import regress as rg

BASELINE_MODEL, WEAKER_MODEL, N = "mlp-pgd-0.10", "mlp-standard", "60"  # as made by the digits_baseline fixture


@pytest.fixture(autouse=True)
def _same_models(digits_baseline):
    assert (digits_baseline["model"], digits_baseline["weaker"], digits_baseline["n"]) == (BASELINE_MODEL, WEAKER_MODEL, N)


def test_baseline_holds_what_a_comparison_needs(digits_baseline):
    data = json.loads(digits_baseline["baseline"].read_text())
    assert data["format"] == "shiftbench-baseline" and data["suite"] == "digits" and data["model"] == BASELINE_MODEL
    assert data["harness"] == HARNESS_VERSION and data["seed"] == 0 and data["n_examples"] == int(N)
    assert sorted(data["threats"]) == ["digits-l2", "digits-linf"] and list(data["shifts"]) == ["gaussian_noise"]
    cells = {(c["data"], c["threat"]) for c in data["cells"]}
    assert ("id", "digits-linf") in cells and ("id", "digits-l2") in cells and len(cells) == 7
    assert all(len(c["robust_correct"]) == c["n"] == int(N) for c in data["cells"])
    assert len(data["missing"]) == data["planned"] - 7  # the cells the slice did not run


def test_same_model_passes_and_report_goes_to_step_summary(digits_baseline, tmp_path, monkeypatch, capsys):
    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    report = tmp_path / "report.md"
    rc = cli.main(["regress", "--model", BASELINE_MODEL, "--baseline", str(digits_baseline["baseline"]), "--n", N,
                   "--report", str(report), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    text = report.read_text()
    assert "no cell significantly less robust** (7 compared)" in text
    assert text.count("| 0 / 0 |") == 7  # identical per-example outcomes in every cell
    assert summary.read_text() == "earlier step\n" + text + "\n"


def test_weaker_model_fails_naming_the_cells(digits_baseline, capsys):
    res = benchmark.regress(WEAKER_MODEL, digits_baseline["baseline"], n_examples=int(N))
    assert not res.ok
    assert "id x digits-linf" in res.worse
    worse = res.cells.set_index(["data", "threat"]).loc[("id", "digits-linf")]
    assert worse["lost"] > worse["gained"] and worse["p_holm"] < 0.05 and worse["robust_now"] < worse["robust_baseline"]
    # the command line: exit 1 and the cells named
    rc = cli.main(["regress", "--model", WEAKER_MODEL, "--baseline", str(digits_baseline["baseline"]), "--n", N,
                   "--quick", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 1 and "id x digits-linf" in cap.err and "**worse**" in cap.out


@pytest.mark.parametrize("change,fragment", [
    ("n", "n: 7 cell(s) differ"),
    ("seed", "seed: baseline 0, this run 1"),
    ("harness", "harness version: baseline 0"),
    ("threat", "threat 'digits-linf': eps 0.2 -> 0.1"),
])
def test_baseline_with_other_settings_is_refused(change, fragment, digits_baseline, tmp_path, capsys):
    path = digits_baseline["baseline"]
    extra = ["--n", N]
    if change == "n":
        extra = ["--n", "30"]
    elif change == "seed":
        extra += ["--seed", "1"]
    else:
        data = json.loads(path.read_text())
        if change == "harness":
            data["harness"] = 0
        else:
            data["threats"]["digits-linf"]["eps"] = 0.2
        path = tmp_path / "edited.json"
        path.write_text(json.dumps(data))
    rc = cli.main(["regress", "--model", BASELINE_MODEL, "--baseline", str(path), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and "not compared" in err and "export-baseline" in err


def test_quick_subset_rule(digits_baseline):
    from benchmark.registry import layered

    data = rg.read_baseline(digits_baseline["baseline"])
    chosen = {(c["data"], c["threat"]) for c in rg.quick_subset(data["cells"], layered(), "digits")}
    assert chosen == {(c["data"], c["threat"]) for c in data["cells"]}  # the slice is within the quick subset
    fake = [{"role": "dataset", "shift": s, "data": f"{s}-1", "threat": "digits-linf", "robust_correct": "01"}
            for s in ("gaussian_noise", "shot_noise", "defocus_blur", "contrast", "brightness", "rotation")]
    fake += [{"role": "threat", "shift": "id", "data": "id", "threat": t, "robust_correct": "10"}
             for t in ("digits-linf-large", "digits-l2", "digits-l1", "digits-color")]
    picked = [(c["data"], c["threat"]) for c in rg.quick_subset(fake, layered(), "digits")]
    # one shift per family (noise, blur, digital), the first two Lp threat shifts
    assert picked == [("gaussian_noise-1", "digits-linf"), ("defocus_blur-1", "digits-linf"),
                      ("contrast-1", "digits-linf"), ("id", "digits-linf-large"), ("id", "digits-l2")]
    # where the baseline has no robust example nothing can get worse: the next in line is taken
    for c in fake:
        if c["shift"] == "contrast" or c["threat"] == "digits-linf-large":
            c["robust_correct"] = "00"
    picked = [(c["data"], c["threat"]) for c in rg.quick_subset(fake, layered(), "digits")]
    assert ("brightness-1", "digits-linf") in picked and ("contrast-1", "digits-linf") not in picked
    assert [t for d, t in picked if d == "id"] == ["digits-l2", "digits-l1"]


def test_unreadable_baseline_and_code_opt_in(tmp_path, digits_baseline, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    assert cli.main(["regress", "--model", BASELINE_MODEL, "--baseline", str(bad)]) == 2
    assert "not a shiftbench baseline" in capsys.readouterr().err
    rc = cli.main(["regress", "--model", "python:os:getcwd", "--baseline", str(digits_baseline["baseline"]), "--n", N])
    assert rc == 2 and "--allow-code" in capsys.readouterr().err


def test_model_as_entry_file_or_python_factory(digits_baseline, tmp_path, monkeypatch, capsys):
    """The baseline's model given as its entry file (weights found above it), and as the user's own
    factory (python:module:factory + --weights, with --allow-code): identical outcomes."""
    from benchmark.registry import DEFAULT_REGISTRY

    entry = DEFAULT_REGISTRY / "models" / "digits" / f"{BASELINE_MODEL}.yaml"
    res = benchmark.regress(str(entry), digits_baseline["baseline"], n_examples=int(N))
    assert res.ok and int((res.cells["lost"] + res.cells["gained"]).sum()) == 0
    (tmp_path / "my_defense.py").write_text(
        "from benchmark.models import architectures\n\n\n"
        "def build():\n    return architectures.build('mlp', hidden=96, depth=2)\n")
    monkeypatch.chdir(tmp_path)  # the user's repository: its modules import from the current folder
    weights = DEFAULT_REGISTRY / "weights" / "digits" / f"{BASELINE_MODEL}.pt"
    rc = cli.main(["regress", "--model", "python:my_defense:build", "--weights", str(weights), "--baseline",
                   str(digits_baseline["baseline"]), "--n", N, "--quick", "--allow-code", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "`my_defense.build` vs baseline" in out and out.count("| 0 / 0 |") == 7
