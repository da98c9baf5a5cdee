"""Executors: the same slice of the digits suite through a real local Ray (2 CPUs), submitit's
local executor and local worker processes gives per-example outcomes identical to a serial local
run; a cell that fails on purpose is retried, then reported, and the rest completes; CUDA
out-of-memory halves the batch size down to a floor; Ctrl-C stops cleanly and the run resumes."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from benchmark import cli
from benchmark.registry import Registry, sha256_file
from benchmark.run import plan, store
from benchmark.run.evaluate import _run_chunk, run_grid
from benchmark.run.executors import LocalExecutor, drive, make_executor
from benchmark.run.executors.common import Task, run_batch_with_backoff, run_task
from benchmark.run.executors.submitit import parse_slurm_time
from conftest import make_tiny_registry, write_yaml
from helpers import OutOfMemoryAbove

REPO = Path(__file__).resolve().parents[2]
# two models, the ID data and one corruption (5 severities, one batch), the ID threat and L2: 14 cells
SLICE = {"models": "mlp-standard,cnn8-pgd-0.05", "shifts": "id,gaussian_noise", "threats": "digits-linf,digits-l2"}
N = 40
CLI_SLICE = ["--suite", "digits", "--models", SLICE["models"], "--shifts", SLICE["shifts"],
             "--threats", SLICE["threats"], "--n", str(N), "--registry", str(REPO / "registry"), "--no-progress"]


@pytest.fixture(scope="module")
def digits_slice():
    reg = Registry(REPO / "registry")
    cells = plan.plan_suite(reg, "digits", n_examples=N, **SLICE)
    assert len(cells) == 14
    return reg, cells


@pytest.fixture(scope="module")
def serial_results(digits_slice, tmp_path_factory) -> Path:
    reg, cells = digits_slice
    out = tmp_path_factory.mktemp("serial") / "digits"
    assert run_grid(cells, reg, out, progress=False)["ran"] == 14
    return out


def broken(cell: plan.Cell) -> plan.Cell:
    """A cell that fails wherever it runs: its threat names an attack that does not exist."""
    return dataclasses.replace(cell, threat=dataclasses.replace(cell.threat, attack="no-such-attack"))


def assert_same_outcomes(expected: Path, got: Path, cells) -> None:
    for c in cells:
        a, b = store.read_json(expected / c.filename), store.read_json(got / c.filename)
        assert (a["key"], a["clean_correct"], a["robust_correct"]) == (b["key"], b["clean_correct"],
                                                                        b["robust_correct"]), c.describe()
        assert a["checks"] == b["checks"], c.describe()


@pytest.mark.xdist_group("ray")  # one local Ray cluster at a time on the machine
def test_ray_matches_local_and_reports_a_failing_cell(digits_slice, serial_results, tmp_path, capsys):
    import ray

    reg, cells = digits_slice
    bad = broken(cells[-1])
    out = tmp_path / "digits"
    ex = make_executor("ray", num_cpus=2)  # a real local Ray, started and stopped by the run
    counts = run_grid([*cells, bad], reg, out, progress=False, executor=ex, retries=1, chunk=2)
    assert counts["ran"] == 14 and counts["failed"] == 1
    [line] = [x for x in capsys.readouterr().err.splitlines() if "failed" in x]
    assert bad.describe() in line and "unknown attack" in line and "tried 2 times" in line
    assert not (out / bad.filename).exists()
    assert_same_outcomes(serial_results, out, cells)
    assert not ray.is_initialized(), "the local Ray stops with the run"


def test_submitit_local_matches_local_and_reports_a_failing_cell(digits_slice, serial_results, tmp_path, capsys):
    reg, cells = digits_slice
    bad = broken(cells[0])
    out = tmp_path / "digits"
    ex = make_executor("submitit", folder=tmp_path / "jobs", local=True, array_parallelism=2)
    counts = run_grid([*cells, bad], reg, out, progress=False, executor=ex, retries=1)
    assert counts["ran"] == 14 and counts["failed"] == 1
    err = capsys.readouterr().err
    assert "unknown attack" in err and "tried 2 times" in err
    assert_same_outcomes(serial_results, out, cells)
    assert list((tmp_path / "jobs").glob("*/*_result.pkl")), "the work went through submitit's jobs"


HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


@pytest.mark.xdist_group("ray")  # one local Ray cluster at a time on the machine
def test_cli_ray_joins_a_running_cluster_and_returns_results(tiny_registry, tmp_path, capsys):
    """--ray-address joins a cluster started elsewhere (here: another process on this machine);
    --ray-return-results has the driver write the results."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        address = head.stdout.readline().strip()
        assert address, "the Ray head did not start"
        rc = cli.main(["run", "--suite", "tiny", "--registry", str(tiny_registry), "--results", str(tmp_path / "ray"),
                       "--no-progress", "--executor", "ray", "--ray-address", address, "--ray-return-results"])
        assert rc == 0
        assert "ran 4 cells" in capsys.readouterr().err
    finally:
        head.stdin.close()
        head.wait(timeout=120)
    reg = Registry(tiny_registry)
    cells = plan.plan_suite(reg, "tiny")
    run_grid(cells, reg, tmp_path / "serial", progress=False)
    assert_same_outcomes(tmp_path / "serial", tmp_path / "ray" / "tiny", cells)


def test_returned_results_are_written_by_the_driver_only(tiny_registry, tmp_path):
    """Where a task runs with return_results, nothing is written to the results folder: the
    results come back as text, identical to what a worker would have written."""
    reg = Registry(tiny_registry)
    cells = plan.plan_suite(reg, "tiny", shifts="id")
    runner = functools.partial(_run_chunk, registry_root=str(tiny_registry), data_dir=None, model_dir=None,
                               raise_errors=True)
    nowhere = tmp_path / "not-shared"
    assert [c.role for c in cells] == ["id", "threat"]
    outs = run_task(runner, Task(tuple(plan.batches(cells))), results_dir=str(nowhere), threads=1, batch_size=1000,
                    return_results=True)
    assert [o.error for o in outs] == [None, None] and not nowhere.exists()
    files = {k: v for o in outs for k, v in o.files.items()}
    assert set(files) == {c.filename for c in cells}
    run_grid(cells, reg, tmp_path / "written", progress=False)
    for c in cells:
        mine, theirs = json.loads(files[c.filename]), store.read_json(tmp_path / "written" / c.filename)
        assert mine["robust_correct"] == theirs["robust_correct"] and mine["key"] == theirs["key"] == c.key


# --------------------------------------------------------------------------- local executor
def record_device(chunk, **kw):
    """The evaluator's runner, noting which CUDA devices the worker process was given."""
    note = Path(kw["results_dir"]).parent / "devices" / f"{os.getpid()}-{chunk[0][0].key}"
    note.parent.mkdir(parents=True, exist_ok=True)
    note.write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
    return _run_chunk(chunk, **kw)


def test_local_workers_get_one_gpu_each_and_match_serial(tiny_registry, tmp_path):
    reg = Registry(tiny_registry)
    cells = plan.plan_suite(reg, "tiny")
    assert LocalExecutor(workers=None, gpus=["0", "1", "2"]).workers == 3  # default: one worker per GPU
    assert LocalExecutor(workers=None, gpus=[]).workers == 1
    ex = LocalExecutor(workers=2, gpus=["3", "5"])
    runner = functools.partial(record_device, registry_root=str(tiny_registry), data_dir=None, model_dir=None,
                               raise_errors=True)
    out = tmp_path / "a" / "results"
    batches = plan.batches(cells)
    counts = drive(ex, [[b] for b in batches], runner, out, total=len(cells), batch_size=1000, progress=False)
    assert counts["ran"] == len(cells)
    seen: dict[str, set[str]] = {}
    for note in (tmp_path / "a" / "devices").iterdir():
        seen.setdefault(note.name.split("-")[0], set()).add(note.read_text())
    assert all(len(v) == 1 for v in seen.values()), "a worker keeps its GPU"
    devices = [v.pop() for v in seen.values()]
    assert set(devices) <= {"3", "5"} and len(set(devices)) == len(devices), "two workers never share a GPU"
    run_grid(cells, reg, tmp_path / "b", progress=False)
    for c in cells:
        assert store.read_json(out / c.filename)["robust_correct"] == \
            store.read_json(tmp_path / "b" / c.filename)["robust_correct"]


def oom_registry(root: Path, tiny_model, limit: int) -> Registry:
    """The tiny registry plus a model (user code, ``python:helpers:oom_mlp``) with the tiny model's
    weights that runs out of GPU memory above ``limit`` images per pass."""
    make_tiny_registry(root, tiny_model)
    suite = yaml.safe_load((root / "suites" / "tiny.yaml").read_text())
    write_yaml(root / "suites" / "tiny.yaml", {**suite, "allow_code": ["helpers"]})  # the opt-in for user code
    model = OutOfMemoryAbove(limit, hidden=32, depth=1)
    model.net.load_state_dict(tiny_model.state_dict())
    torch.save(model.state_dict(), root / "weights" / "digits" / "oom.pt")
    write_yaml(root / "models" / "digits" / "oom.yaml", {
        "id": "oom", "source": "python:helpers:oom_mlp", "dataset": "digits", "architecture": "MLP-32",
        "training": "standard", "weights": "weights/digits/oom.pt",
        "sha256": sha256_file(root / "weights" / "digits" / "oom.pt"),
        "arch_args": {"limit": limit, "hidden": 32, "depth": 1}})
    return Registry(root)


def test_out_of_memory_halves_the_batch_size(tmp_path, tiny_model):
    """A batch of 240 images (two severities x 120) on a model that fails above 100 images per
    pass: 1000 -> 500 -> 250 -> 125 run out of memory, 62 fits; the result is the one a run at
    batch size 62 gives."""
    reg = oom_registry(tmp_path / "registry", tiny_model, limit=100)
    cells = plan.plan_suite(reg, "tiny", models="oom", shifts="gaussian_noise")
    runner = functools.partial(_run_chunk, registry_root=str(reg.root), data_dir=None, model_dir=None,
                               raise_errors=True)
    out = tmp_path / "results"
    o = run_batch_with_backoff(runner, cells[0].batch, results_dir=str(out), threads=1, batch_size=1000,
                               min_batch_size=8)
    assert o.error is None and o.batch_size == 62 and sorted(o.written) == sorted(c.key for c in cells)
    same = plan.plan_suite(reg, "tiny", models="tiny", shifts="gaussian_noise")  # same weights, no limit
    run_grid(same, reg, tmp_path / "direct", progress=False, batch_size=62)
    for c, d in zip(cells, same):
        assert store.read_json(out / c.filename)["robust_correct"] == \
            store.read_json(tmp_path / "direct" / d.filename)["robust_correct"]


def test_out_of_memory_below_the_floor_is_reported(tmp_path, tiny_model, capsys):
    reg = oom_registry(tmp_path / "registry", tiny_model, limit=100)
    cells = plan.plan_suite(reg, "tiny", models="oom,tiny", shifts="gaussian_noise")
    counts = run_grid(cells, reg, tmp_path / "results", progress=False, min_batch_size=128, retries=0)
    assert counts["ran"] == 2 and counts["failed"] == 2  # the other model's batch ran
    [line] = [x for x in capsys.readouterr().err.splitlines() if "failed" in x]
    assert "out of GPU memory at batch size 250 (floor 128)" in line
    assert all(c.describe() in line for c in cells if c.model.id == "oom")


def test_ctrl_c_stops_workers_cleanly_and_the_run_resumes(digits_slice, serial_results, tmp_path):
    out = tmp_path / "digits"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    # small attack chunks stretch the run (outcomes do not depend on the batch size), so that the
    # interrupt lands while batches are still running even on a fast or a loaded machine
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "run", *CLI_SLICE, "--results", str(tmp_path),
                             "--workers", "2", "--batch-size", "10"], stderr=subprocess.PIPE, text=True, env=env,
                            # a shell starts background jobs with SIGINT ignored and children inherit that:
                            # give the run the default disposition, so Python installs its Ctrl-C handler
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    # wait for a finished result: a writer's temporary file (.tmp-<pid>-*.json) is not one, and the
    # interrupt rightly removes it if it lands between the write and the rename
    while not store.result_files(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    written = store.result_files(out)
    assert 0 < len(written) < 14
    time.sleep(2)
    assert sorted(out.rglob("*.json")) == written, "no worker goes on after the run stopped"
    assert not list(out.rglob(".tmp-*")), "no partial files"
    reg, cells = digits_slice
    counts = run_grid(cells, reg, out, progress=False)
    assert counts["cached"] == len(written) and counts["ran"] == 14 - len(written)
    assert_same_outcomes(serial_results, out, cells)


def _descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (Linux's /proc)."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += list(kids - out)
            out |= kids
    return {p for p in out if _alive(p)}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (nobody reaped it yet)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from Linux's /proc")
def test_workers_stop_when_the_driver_is_killed(tmp_path):
    """``kill -9`` of `shiftbench run` (no chance to stop its workers) leaves no worker running:
    each notices its parent is gone and stops within seconds, writing no partial file."""
    out = tmp_path / "digits"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "run", *CLI_SLICE, "--results", str(tmp_path),
                             "--workers", "2", "--batch-size", "10"], stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        workers = {p for p in _descendants(proc.pid)
                   if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")}
    assert proc.poll() is None and len(workers) == 2, "the run ended before its workers could be seen"
    while not store.result_files(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # the workers are busy with cells
    others = _descendants(proc.pid)
    proc.kill()
    proc.wait(timeout=30)
    stop_by = time.monotonic() + 20
    while any(_alive(p) for p in others) and time.monotonic() < stop_by:
        time.sleep(0.2)
    left = sorted(p for p in others if _alive(p))
    assert not left, f"processes of the killed run still running: {left}"
    assert not list(out.rglob(".tmp-*")), "no partial files"
    written = store.result_files(out)
    time.sleep(2)
    assert store.result_files(out) == written, "nothing is written after the workers stopped"


def test_input_errors_are_reported_without_retries(tiny_registry, tmp_path, capsys):
    """Missing weights fail every cell of the model the same way: each batch is reported once,
    naming the file, not retried; in process and in worker processes alike."""
    reg = Registry(tiny_registry)
    cells = plan.plan_suite(reg, "tiny")
    (tiny_registry / "weights" / "digits" / "tiny.pt").unlink()  # after the plan, before the workers read it
    for workers in (1, 2):
        counts = run_grid(cells, reg, tmp_path / str(workers), progress=False, workers=workers, chunk=1)
        assert counts["failed"] == 4 and counts["ran"] == 0
        lines = [x for x in capsys.readouterr().err.splitlines() if "failed" in x]
        assert len(lines) == 3 and all("tiny.pt" in x and "tried" not in x for x in lines), lines
    assert not list(tmp_path.rglob("*.json"))


# --------------------------------------------------------------------------- options and extras
def test_missing_extra_names_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    assert cli.main(["run", *CLI_SLICE, "--results", str(tmp_path), "--executor", "ray"]) == 2
    assert "pip install 'shiftbench[ray]'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "submitit", None)
    assert cli.main(["run", *CLI_SLICE, "--results", str(tmp_path), "--executor", "submitit", "--local"]) == 2
    assert "pip install 'shiftbench[slurm]'" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.json"))


def test_core_never_imports_the_extras():
    code = ("import sys, benchmark, benchmark.cli, benchmark.run.executors, benchmark.run.evaluate; "
            "bad = [m for m in ('ray', 'submitit') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])))


def test_submitit_without_slurm_says_to_use_local(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert cli.main(["run", *CLI_SLICE, "--results", str(tmp_path), "--executor", "submitit",
                     "--slurm-folder", str(tmp_path / "jobs")]) == 2
    assert "--local" in capsys.readouterr().err


def test_slurm_time_formats(tmp_path):
    assert parse_slurm_time("90") == 90
    assert parse_slurm_time("4:00:00") == 240
    assert parse_slurm_time("1-02:30:00") == 24 * 60 + 150
    assert parse_slurm_time("10:30") == 11  # MM:SS rounds up to whole minutes
    with pytest.raises(ValueError, match="--slurm-time"):
        parse_slurm_time("four hours")
    assert cli.main(["run", *CLI_SLICE, "--results", str(tmp_path), "--executor", "submitit", "--local",
                     "--slurm-time", "soon"]) == 2
    assert not list(tmp_path.rglob("*.json"))


def test_local_flag_needs_submitit(tmp_path):
    assert cli.main(["run", *CLI_SLICE, "--results", str(tmp_path), "--local"]) == 2
