"""MKL's strict reproducibility mode is in force wherever the harness computes a number
(benchmark/_numerics.py): in a process that imports ``benchmark``, in the processes it starts, and
not over a user's own setting.  The mode is read back from MKL itself, so these tests mean the same
on an AMD CPU (where MKL's kernels were row-independent anyway) as on an Intel one (where strict
mode is what makes them so: tests/run/test_cross_cpu.py checks the rows under each CPU profile)."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark import _numerics

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="this torch has no MKL to set")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != _numerics.VARIABLE}
    base.update(env)
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


RUN_MODEL = """
import torch
from benchmark.attacks.batching import fixed_batch
from benchmark import _numerics
m = fixed_batch(torch.nn.Linear(64, 10))
m(torch.rand(40, 64))
print(_numerics.mkl_mode())
"""


def test_install_sets_the_default_and_keeps_the_users_value():
    env: dict[str, str] = {}
    assert _numerics.install(env) == "AUTO,STRICT" and env["MKL_CBWR"] == "AUTO,STRICT"
    env = {"MKL_CBWR": "COMPATIBLE"}
    assert _numerics.install(env) == "COMPATIBLE" and env["MKL_CBWR"] == "COMPATIBLE"
    assert _numerics.describe(0x10002) == "AUTO,STRICT" and _numerics.describe(3) == "COMPATIBLE"
    assert _numerics.row_independent("AUTO,STRICT") and _numerics.row_independent("COMPATIBLE")
    assert not _numerics.row_independent("AUTO") and not _numerics.row_independent("AVX2")


def _in_force() -> str:
    """The mode this test process should run in: strict, or what the user set before starting it
    (the CPU profiles of benchmark/run/cpus.py set their own)."""
    return os.environ[_numerics.VARIABLE].replace(" ", "").upper()


def test_this_process_runs_mkl_in_the_mode_set_at_import():
    """The test process imported benchmark (conftest) before any model ran."""
    torch.nn.functional.linear(torch.rand(4, 8), torch.rand(3, 8))
    assert _numerics.mkl_mode() == _in_force()
    assert _numerics.row_independent(_numerics.mkl_mode())


def test_a_fresh_process_importing_benchmark_gets_strict_mode_without_warning():
    r = _python("import torch, benchmark\n" + RUN_MODEL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "AUTO,STRICT"
    assert "RuntimeWarning" not in r.stderr


def test_a_users_explicit_setting_is_respected():
    r = _python(RUN_MODEL, MKL_CBWR="COMPATIBLE")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "COMPATIBLE" and "RuntimeWarning" not in r.stderr


def test_a_users_setting_without_strict_is_kept_and_warned_about():
    r = _python(RUN_MODEL, MKL_CBWR="AUTO")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "AUTO"
    assert "RuntimeWarning" in r.stderr and "you set MKL_CBWR=AUTO" in r.stderr


def test_mkl_started_before_benchmark_is_warned_about():
    """A model run before ``import benchmark`` fixes MKL's mode: too late to set, so say so."""
    r = _python("import torch\ntorch.nn.functional.linear(torch.rand(4, 8), torch.rand(3, 8))\n" + RUN_MODEL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] != "AUTO,STRICT"
    assert "RuntimeWarning" in r.stderr and "MKL ran before `benchmark` was imported" in r.stderr


def _worker_mode(_: int) -> str | None:
    torch.nn.functional.linear(torch.rand(4, 8), torch.rand(3, 8))
    return _numerics.mkl_mode()


def test_worker_processes_inherit_the_mode():
    """Local workers are started with 'spawn' as the executor does: a new interpreter that gets the
    parent's environment (the setting made at ``import benchmark``)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(_worker_mode, [0]) == [_in_force()]
