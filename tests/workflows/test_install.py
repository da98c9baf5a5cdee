"""shiftbench installed from its wheel, used from another repository: the built-in registry (with
the digits zoo's weights) travels inside the wheel, results go to ./results of the current
folder, user entries come from --registry / $SHIFTBENCH_REGISTRY layered over the built-in ones,
and `regress --quick` runs a baseline made by `export-baseline` from an unrelated folder."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml


REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "benchmark", "registry")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build the real wheel from a copy of the sources (nothing written into the checkout) and
    install it, without dependencies, into a scratch folder."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(
            REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                        if (REPO / name).is_dir() else {}))
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("shiftbench-*.whl")
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    return wheel, target


def shiftbench(target: Path, cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed package's command line, run from ``cwd`` (dependencies from this venv)."""
    paths = [str(target), *site.getsitepackages()]
    # one thread: small models attack fastest that way, and a shared CPU is not oversubscribed
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("SHIFTBENCH_REGISTRY", None) if not env or "SHIFTBENCH_REGISTRY" not in env else None
    return subprocess.run([sys.executable, "-c", "import sys, benchmark.cli; sys.exit(benchmark.cli.main())", *args],
                          cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def test_wheel_carries_the_builtin_registry(installed):
    wheel, target = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted((REPO / "registry").rglob("*"))
    for p in shipped:
        if p.is_file():
            assert f"benchmark/_registry/{p.relative_to(REPO / 'registry').as_posix()}" in names
    assert any(n.startswith("benchmark/_registry/weights/digits/") and n.endswith(".pt") for n in names)
    assert (target / "benchmark" / "_registry" / "suites" / "digits.yaml").is_file()


def test_installed_package_from_another_repository(installed, digits_baseline, tmp_path):
    _, target = installed
    model, n = digits_baseline["model"], digits_baseline["n"]
    elsewhere = tmp_path / "defense-repo"
    elsewhere.mkdir()
    probe = shiftbench(target, elsewhere, "validate")
    assert probe.returncode == 0, probe.stderr
    assert str(target / "benchmark" / "_registry") in probe.stdout  # the wheel's registry, not the checkout's
    # results land in ./results of the current folder
    run = shiftbench(target, elsewhere, "run", "--suite", "digits", "--models", "mlp-standard", "--shifts", "id",
                     "--threats", "digits-l2", "--n", "20", "--no-progress")
    assert run.returncode == 0, run.stderr
    assert len(list((elsewhere / "results" / "digits" / "mlp-standard").glob("id__digits-l2__*.json"))) == 1
    # a baseline exported by the installed package, compared by regress --quick
    exported = shiftbench(target, elsewhere, "export-baseline", "--suite", "digits", "--model", model,
                          "--n", n, "--results", str(digits_baseline["results"]), "--out", "baseline.json")
    assert exported.returncode == 0, exported.stderr
    same = shiftbench(target, elsewhere, "regress", "--model", model, "--baseline", "baseline.json",
                      "--quick", "--n", n, "--no-progress", "--report", "regress.md")
    assert same.returncode == 0, same.stderr + same.stdout
    assert "no cell significantly less robust" in (elsewhere / "regress.md").read_text()
    # a user entry layered over the built-in registry, by --registry and by $SHIFTBENCH_REGISTRY
    mine = elsewhere / "my-registry"
    spec = yaml.safe_load((REPO / "registry" / "models" / "digits" / "mlp-standard.yaml").read_text())
    spec.pop("train", None)
    (mine / "weights").mkdir(parents=True)
    shutil.copy(REPO / "registry" / spec["weights"], mine / "weights" / "mine.pt")
    spec.update(id="my-mlp", weights="weights/mine.pt")
    (mine / "models").mkdir()
    (mine / "models" / "my-mlp.yaml").write_text(yaml.safe_dump(spec))
    by_flag = shiftbench(target, elsewhere, "ls", "models", "--suite", "digits", "--registry", "my-registry")
    by_env = shiftbench(target, elsewhere, "ls", "models", "--suite", "digits", env={"SHIFTBENCH_REGISTRY": str(mine)})
    for listing in (by_flag, by_env):
        assert listing.returncode == 0, listing.stderr
        ids = {line.split()[0] for line in listing.stdout.splitlines()[1:]}
        assert {"my-mlp", "mlp-standard", model} <= ids
