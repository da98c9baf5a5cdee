"""Hostile or broken entries and models: each gets a clear error naming the entry, none runs code
without the user's opt-in, none stops a sweep or damages the store."""
from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from benchmark import cli
from benchmark.models.load import ModelError, ModelWarning, WeightsError, load_model, probe_outputs
from benchmark.registry import ModelSpec, Registry, RegistryError, sha256_file
from benchmark.run import store
from conftest import write_yaml


def _model_entry(root: Path, mid: str, **fields) -> Path:
    data = {"id": mid, "dataset": "digits", "architecture": "x", "training": "x", **fields}
    return write_yaml(root / "models" / "digits" / f"{mid}.yaml", data)


def _run(root: Path, results: Path, *extra) -> int:
    return cli.main(["run", "--suite", "tiny", "--registry", str(root), "--results", str(results), "--no-progress",
                     "--shifts", "id", "--threats", "tiny-linf", *extra])


def _all_verified(results: Path) -> list[Path]:
    files = store.result_files(results)
    assert all(store.check_result(p).status == store.VERIFIED for p in files)
    return files


# --------------------------------------------------------------------------- weights
def test_wrong_sha256_fails_its_cells_and_the_sweep_goes_on(tiny_registry, tmp_path, capsys):
    other = tiny_registry / "weights" / "digits" / "other.pt"
    other.write_bytes((tiny_registry / "weights" / "digits" / "tiny.pt").read_bytes())
    _model_entry(tiny_registry, "other", source="builtin:mlp", weights="weights/digits/other.pt",
                 sha256="0" * 64, arch_args={"hidden": 32, "depth": 1})
    results = tmp_path / "results"
    assert _run(tiny_registry, results) == 1
    err = capsys.readouterr().err
    assert "other.yaml: key 'sha256'" in err and "the entry says 0000" in err and "1 cell(s) failed" in err
    files = _all_verified(results)
    assert [p.parent.name for p in files] == ["tiny"]  # the good model's cell is done


class _Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_in_a_checkpoint_never_runs(tiny_registry, tmp_path, capsys):
    marker = tmp_path / "pwned"
    wp = tiny_registry / "weights" / "digits" / "evil.pt"
    torch.save({"layer.weight": _Payload(marker)}, wp)
    _model_entry(tiny_registry, "evil", source="builtin:mlp", weights="weights/digits/evil.pt",
                 sha256=sha256_file(wp), arch_args={"hidden": 32, "depth": 1})  # the checksum matches
    reg = Registry(tiny_registry)
    with pytest.raises(WeightsError, match="evil.yaml: key 'weights': .*not a plain tensor checkpoint"):
        load_model(reg.model("evil"), reg)
    assert _run(tiny_registry, tmp_path / "results") == 1
    assert "evil.yaml" in capsys.readouterr().err
    assert not marker.exists(), "the pickle payload ran"
    _all_verified(tmp_path / "results")


# --------------------------------------------------------------------------- YAML
def test_yaml_python_tags_do_not_run(tiny_registry, tmp_path):
    marker = tmp_path / "pwned"
    path = tiny_registry / "models" / "digits" / "tiny.yaml"
    path.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RegistryError, match="tiny.yaml: not valid YAML"):
        Registry(tiny_registry)
    assert not marker.exists()


def test_billion_laughs_is_refused(tiny_registry):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]")
    bomb = "\n".join(lines)
    path = tiny_registry / "threats" / "tiny-linf.yaml"
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(data) + "attack_args:\n  " + bomb.replace("\n", "\n  ") + "\n")
    with pytest.raises(RegistryError, match=r"tiny-linf.yaml: not valid YAML: alias '\*a' not allowed"):
        Registry(tiny_registry)


@pytest.mark.parametrize("libyaml", [True, False])
def test_deep_nesting_is_refused_by_both_loaders(tiny_registry, monkeypatch, libyaml):
    """Deep nesting (1 MiB of ``[`` fits in an entry) would recurse past the C stack in libyaml's
    composer: both the C path and the pure-Python one refuse it with the file named, and aliases."""
    monkeypatch.setattr(yaml, "__with_libyaml__", libyaml and yaml.__with_libyaml__)
    path = tiny_registry / "threats" / "tiny-linf.yaml"
    path.write_text(path.read_text() + "params: " + "[" * 5_000 + "]" * 5_000 + "\n")
    with pytest.raises(RegistryError, match="tiny-linf.yaml: not valid YAML: nested too deeply"):
        Registry(tiny_registry)
    path.write_text("id: &a tiny-linf\nkind: *a\n")
    with pytest.raises(RegistryError, match=r"tiny-linf.yaml: not valid YAML: alias '\*a' not allowed"):
        Registry(tiny_registry)


def test_huge_entry_file_is_refused(tiny_registry):
    path = tiny_registry / "threats" / "tiny-linf.yaml"
    path.write_text(path.read_text() + "description: '" + "x" * (1 << 20) + "'\n")
    with pytest.raises(RegistryError, match="too large for a registry entry"):
        Registry(tiny_registry)


# --------------------------------------------------------------------------- paths
@pytest.mark.parametrize("weights", ["../../etc/passwd", "/etc/passwd", "weights/../../x.pt", "~/x.pt",
                                     "pkg:os.path/x.pt", "pkg:pyautoattack/../x.pt"])
def test_weights_paths_cannot_escape(tiny_registry, weights):
    path = tiny_registry / "models" / "digits" / "tiny.yaml"
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "weights": weights}))
    with pytest.raises(RegistryError, match="tiny.yaml: key 'weights'"):
        Registry(tiny_registry)


def test_weights_symlink_out_of_the_registry_is_refused(tiny_registry, tmp_path):
    outside = tmp_path / "outside.pt"
    outside.write_bytes((tiny_registry / "weights" / "digits" / "tiny.pt").read_bytes())
    (tiny_registry / "weights" / "digits" / "link.pt").symlink_to(outside)
    path = tiny_registry / "models" / "digits" / "tiny.yaml"
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "weights": "weights/digits/link.pt"}))
    with pytest.raises(RegistryError, match="key 'weights'.*outside"):
        Registry(tiny_registry)


@pytest.mark.parametrize("rel", ["../../etc/passwd", "/etc/passwd", "a/../../b"])
def test_shift_files_cannot_escape_the_data_root(tiny_registry, rel):
    path = tiny_registry / "shifts" / "digits" / "gaussian_noise.yaml"
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "files": [{"path": rel}]}))
    with pytest.raises(RegistryError, match="gaussian_noise.yaml: key 'files\\[0\\]'.*leaves the data root"):
        Registry(tiny_registry)


# --------------------------------------------------------------------------- code from data
def test_python_source_naming_the_standard_library_is_rejected(tiny_registry, tmp_path):
    marker = tmp_path / "pwned"
    _model_entry(tiny_registry, "shell", source="python:os:system", arch_args={"command": f"touch {marker}"})
    with pytest.raises(RegistryError, match="shell.yaml: key 'source'.*standard-library module 'os'"):
        Registry(tiny_registry)
    assert cli.main(["validate", "--registry", str(tiny_registry)]) == 2
    assert not marker.exists()


@pytest.fixture()
def evil_module(tmp_path, monkeypatch):
    """A module and a package on sys.path whose import creates a marker file."""
    marker = tmp_path / "imported"
    code = textwrap.dedent(f"""
        import pathlib, torch
        pathlib.Path({str(marker)!r}).touch()
        def make(**kw):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    """)
    lib = tmp_path / "lib"
    (lib / "evilpkg").mkdir(parents=True)
    (lib / "evilmod.py").write_text(code)
    (lib / "evilpkg" / "__init__.py").write_text(code)
    (lib / "evilpkg" / "w.pt").write_bytes(b"not used")
    monkeypatch.syspath_prepend(str(lib))
    yield marker
    for name in ("evilmod", "evilpkg"):
        sys.modules.pop(name, None)


def test_code_entries_run_only_with_opt_in(tiny_registry, tmp_path, evil_module, capsys):
    marker = evil_module
    _model_entry(tiny_registry, "user", source="python:evilmod:make")
    _model_entry(tiny_registry, "pkgw", source="builtin:mlp", weights="pkg:evilpkg/w.pt", sha256="0" * 64)
    results = tmp_path / "results"
    assert cli.main(["ls", "models", "--registry", str(tiny_registry)]) == 0
    assert cli.main(["validate", "--registry", str(tiny_registry)]) == 1  # pkgw's checksum is wrong
    err = capsys.readouterr().err
    assert "user.yaml: model 'user' runs code from module 'evilmod' (runs only with --allow-code)" in err
    assert cli.main(["leaderboard", "--suite", "tiny", "--registry", str(tiny_registry), "--results",
                     str(results), "--out", str(tmp_path / "lb.md")]) == 2  # no results yet
    assert _run(tiny_registry, results, "--models", "user,tiny") == 1
    err = capsys.readouterr().err
    assert "model 'user' runs code from module 'evilmod'" in err and "--allow-code" in err
    assert not marker.exists(), "an entry's module was imported without opt-in"
    assert [p.parent.name for p in _all_verified(results)] == ["tiny"]
    # opting in imports it, which shows that the refusal is what kept it out
    assert _run(tiny_registry, results, "--models", "user", "--allow-code") == 0
    assert marker.exists() and "SHIFTBENCH_ALLOW_CODE" not in os.environ


def test_suite_allowlist_of_module_prefixes(tiny_registry, tmp_path, evil_module):
    _model_entry(tiny_registry, "user", source="python:evilmod:make")
    reg = Registry(tiny_registry)
    spec = reg.model("user")
    with pytest.raises(RegistryError, match="re-run with --allow-code, or add 'evilmod' to the suite's allow_code"):
        load_model(spec, reg)
    assert not evil_module.exists()
    suite = tiny_registry / "suites" / "tiny.yaml"
    suite.write_text(suite.read_text() + "allow_code: [evilmo]\n")  # a prefix of the name, not of the module path
    assert _run(tiny_registry, tmp_path / "r1", "--models", "user") == 1 and not evil_module.exists()
    suite.write_text(suite.read_text().replace("allow_code: [evilmo]", "allow_code: [evilmod]"))
    assert _run(tiny_registry, tmp_path / "r2", "--models", "user") == 0 and evil_module.exists()


# --------------------------------------------------------------------------- model outputs
class _Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.lin = torch.nn.Linear(256, 10)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.lin(x.flatten(1)))


SPEC = ModelSpec(id="m", source="python:x:y", dataset="digits", architecture="x", training="x", path="m.yaml")


@pytest.mark.parametrize("fn, fragment", [
    (lambda z: z[:, :5], r"shape \(4, 5\), expected \(4, 10\)"),
    (lambda z: z.argmax(1), "dtype torch.int64"),
    (lambda z: z * float("nan"), "NaN or infinite"),
    (lambda z: z.masked_fill(z > 0, float("inf")), "NaN or infinite"),
    (lambda z: (z, z), "returned tuple"),
    (lambda z: 1 / 0, "raised ZeroDivisionError"),
])
def test_broken_model_outputs_are_errors(fn, fragment):
    with pytest.raises(ModelError, match=f"model 'm' \\(m.yaml\\): .*{fragment}"):
        probe_outputs(_Fn(fn).eval(), SPEC)


def test_probabilities_warn_and_undeclared_randomness_is_refused():
    with pytest.warns(ModelWarning, match="look like probabilities"):
        probe_outputs(_Fn(lambda z: z.softmax(1)).eval(), SPEC)
    # a random output is refused (never evaluated as if deterministic), with how to declare it
    with pytest.raises(ModelError, match=r"model 'm' \(m.yaml\): two identical calls .*randomized: \{eot: 20"):
        probe_outputs(_Fn(lambda z: z + torch.randn_like(z)).eval(), SPEC)
    # differences in the last bits only (e.g. a nondeterministic GPU kernel) still just warn
    with pytest.warns(ModelWarning, match="differing in the last bits"):
        probe_outputs(_Fn(lambda z: z * (1 + 1e-7 * torch.randn_like(z))).eval(), SPEC)


def test_a_nan_model_fails_its_cells_and_the_sweep_goes_on(tiny_registry, tmp_path, monkeypatch, capsys):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "nanmodels.py").write_text(textwrap.dedent("""
        import torch
        class NaNOnReal(torch.nn.Module):  # fine on the probe's random images, NaN on real digits
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(256, 10)
            def forward(self, x):
                z = self.lin(x.flatten(1))
                return z if x.mean() > 0.4 else z * float("nan")
        def make():
            return NaNOnReal()
    """))
    monkeypatch.syspath_prepend(str(lib))
    _model_entry(tiny_registry, "nanny", source="python:nanmodels:make")
    results = tmp_path / "results"
    assert _run(tiny_registry, results, "--allow-code") == 1
    err = capsys.readouterr().err
    assert "nanny | id | tiny-linf" in err and "NaN or infinite logits" in err and "nanny.yaml" in err
    assert [p.parent.name for p in _all_verified(results)] == ["tiny"]
    sys.modules.pop("nanmodels", None)


# --------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("norm, eps, fragment", [
    ("Linf", 8, "write 8/255, not 8"), ("Linf", "0.6", "implausible Linf budget"), ("L2", 100, "implausible L2"),
    ("Linf", ".nan", "finite number"), ("Linf", -0.1, "must be >= 0"),
])
def test_implausible_budgets(tiny_registry, norm, eps, fragment):
    path = tiny_registry / "threats" / "tiny-linf.yaml"
    data = yaml.safe_load(path.read_text())
    text = yaml.safe_dump({**data, "norm": norm, "eps": 0.1}).replace("eps: 0.1", f"eps: {eps}")
    path.write_text(text)
    with pytest.raises(RegistryError, match=f"tiny-linf.yaml: key 'eps'.*{fragment}"):
        Registry(tiny_registry)
