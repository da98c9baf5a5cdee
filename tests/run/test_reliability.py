"""Reliability of the result store: digests and verification, corrupt files excluded and
recomputed, concurrent runs, stale temporary files, failing writes, and the kill -9 loop."""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark import cli
from benchmark.analysis import aggregate
from benchmark.registry import DEFAULT_REGISTRY, Registry
from benchmark.report import leaderboard
from benchmark.run import plan, store
from benchmark.run.evaluate import run_grid

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def done(tiny_registry, tmp_path):
    """The tiny suite evaluated once: (registry, results root, {data name: result path})."""
    reg = Registry(tiny_registry)
    results = tmp_path / "results"
    run_grid(plan.plan_suite(reg, "tiny"), reg, results / "tiny", progress=False)
    names = {"id__tiny-linf": "id", "id__tiny-linf-large": "threat", "gaussian_noise-1__tiny-linf": "gaussian_noise-1",
             "gaussian_noise-3__tiny-linf": "gaussian_noise-3"}
    paths = {names[p.name.rsplit("__", 1)[0]]: p for p in store.result_files(results / "tiny")}
    assert len(paths) == 4
    return reg, results, paths


def _run(reg, results, *extra) -> int:
    return cli.main(["run", "--suite", "tiny", "--registry", str(reg.root), "--results", str(results),
                     "--no-progress", *extra])


# --------------------------------------------------------------------------- digest and verification
def test_results_are_signed_and_an_edit_is_detected(done):
    _, _, paths = done
    p = paths["id"]
    v = store.check_result(p)
    assert v.status == store.VERIFIED and v.payload["digest"].startswith("sha256:")
    payload = store.read_json(p)
    payload["timing"]["attack_s"] = 0.0  # any field, not only the numbers
    store.write_json_atomic(p, payload)
    v = store.check_result(p)
    assert v.status == store.CORRUPT and "digest mismatch" in v.problem and str(p) in v.describe()


def test_digest_covers_fields_added_later(tmp_path, done):
    """A result with extra fields (a later version of the evaluator) verifies when written by
    write_result, and an edit of the extra field is detected."""
    _, _, paths = done
    payload = store.read_json(paths["id"])
    payload["trust_level"] = {"escalated": False, "notes": ["x"]}
    target = tmp_path / "copy" / paths["id"].name
    store.write_result(target, payload)
    assert store.check_result(target).status == store.VERIFIED
    edited = store.read_json(target)
    edited["trust_level"]["escalated"] = True
    store.write_json_atomic(target, edited)
    assert store.check_result(target).status == store.CORRUPT


@pytest.mark.parametrize("damage, fragment", [
    (lambda p, d: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not valid JSON"),
    (lambda p, d: p.write_bytes(b"\x00\x01garbage"), "not valid JSON"),
    (lambda p, d: p.write_text("[1, 2, 3]"), "expected a JSON object"),
    (lambda p, d: p.write_bytes(b""), "not valid JSON"),
    # a forger who also recomputes the digest: the numbers still contradict themselves
    (lambda p, d: store.write_result(p, {**d, "robust_correct": "1" * d["n"], "robust_acc": 1.0}),
     "robust but not clean"),
    (lambda p, d: store.write_result(p, {**d, "robust_acc": min(1.0, d["robust_acc"] + 0.1)}),
     "its per-example outcomes give"),
    (lambda p, d: store.write_result(p, {**d, "clean_correct": d["clean_correct"][:-1]}), "'n' says"),
    (lambda p, d: store.write_result(p, {**d, "key": "0123456789abcdef"}), "not the key in its file name"),
    (lambda p, d: store.write_result(p, {**d, "data": "gaussian_noise-3"}), "do not match its file name"),
    (lambda p, d: store.write_result(p, {**d, "n": "120"}), "expected a count"),
])
def test_damaged_results_are_corrupt(done, damage, fragment):
    _, _, paths = done
    p = paths["id"]
    damage(p, store.read_json(p))
    v = store.check_result(p)
    assert v.status == store.CORRUPT and fragment in v.problem, v.problem
    assert not store.is_done(p, store.key_of_name(p.name))


def test_unsigned_results_are_accepted_and_counted_apart(done, tmp_path):
    """A result written before digests existed (no 'digest' key) counts, as unsigned; its
    numbers are still checked."""
    reg, results, paths = done
    for p in paths.values():
        payload = store.read_json(p)
        del payload["digest"]
        store.write_json_atomic(p, payload)
    res = aggregate.load(reg, "tiny", results)
    assert (res.n_present, res.n_verified, res.n_unsigned, res.n_corrupt) == (4, 0, 4, 0)
    text = leaderboard.write(reg, "tiny", results, tmp_path / "lb.md").read_text()
    assert "Integrity: 0 of 4 results verified" in text and "4 unsigned" in text
    payload = store.read_json(paths["id"])
    payload["robust_correct"] = "1" * payload["n"]  # unsigned but impossible: still corrupt
    store.write_json_atomic(paths["id"], payload)
    assert aggregate.load(reg, "tiny", results).n_corrupt == 1


def test_committed_results_without_digest_still_count():
    """The committed digits results predate digests: all of them read as unsigned, none corrupt."""
    reg = Registry(DEFAULT_REGISTRY)
    res = aggregate.load(reg, "digits", REPO / "results")
    assert res.n_corrupt == 0 and res.n_present == res.n_verified + res.n_unsigned > 0


def test_truncated_and_inflated_results_are_excluded_then_recomputed(done, tmp_path, capsys):
    """The two cases of the issue: a truncated file used to count as done and then abort the
    leaderboard; a result with every robust bit set was ranked above its clean accuracy."""
    reg, results, paths = done
    before = {k: store.read_json(p) for k, p in paths.items()}
    paths["id"].write_bytes(paths["id"].read_bytes()[:200])
    threat_path = paths["threat"]
    inflated = store.read_json(threat_path)
    inflated["robust_correct"] = "1" * inflated["n"]
    store.write_json_atomic(threat_path, inflated)
    res = aggregate.load(reg, "tiny", results)
    assert sorted(v.path for v in res.corrupt) == sorted([paths["id"], threat_path])
    assert res.n_present == 2 and res.n_missing == 2
    out = leaderboard.write(reg, "tiny", results, tmp_path / "lb.md")
    text = out.read_text()
    assert "2 corrupt file(s) excluded" in text and f"`tiny/{paths['id'].name}`" in text
    summ = leaderboard.build(reg, "tiny", results)[1]
    assert summ.models.loc["tiny", "ood_t_robust"] != summ.models.loc["tiny", "ood_t_robust"]  # NaN: not counted
    capsys.readouterr()
    assert _run(reg, results) == 0
    err = capsys.readouterr().err
    assert f"{paths['id']}: corrupt: not valid JSON" in err and "recomputing it" in err
    assert "2 to run" in err
    after = {k: store.read_json(p) for k, p in paths.items()}
    for k in before:
        assert after[k]["robust_correct"] == before[k]["robust_correct"]
        assert store.check_result(paths[k]).status == store.VERIFIED
    assert aggregate.load(reg, "tiny", results).n_corrupt == 0


def test_verify_results_command(done, capsys):
    reg, results, paths = done
    args = ["verify-results", "--results", str(results)]
    assert cli.main(args) == 0
    assert "4 result file(s)" in capsys.readouterr().err
    payload = store.read_json(paths["gaussian_noise-1"])
    payload["clean_acc"] = 1.0
    store.write_json_atomic(paths["gaussian_noise-1"], payload)
    assert cli.main(args + ["--suite", "tiny"]) == 1
    err = capsys.readouterr().err
    assert f"error: {paths['gaussian_noise-1']}: corrupt: digest mismatch" in err and "1 corrupt" in err
    # migration: unsigned results are signed in place once their numbers check out
    for p in (paths["id"], paths["gaussian_noise-3"]):
        d = store.read_json(p)
        del d["digest"]
        store.write_json_atomic(p, d)
    assert cli.main(args + ["--sign"]) == 1  # still one corrupt file
    assert "(2 signed now)" in capsys.readouterr().err
    assert store.check_result(paths["id"]).status == store.VERIFIED
    assert cli.main(args + ["--suite", "tiyn"]) == 2
    assert "did you mean 'tiny'" in capsys.readouterr().err


# --------------------------------------------------------------------------- concurrency and temp files
HOLD = """
import sys, time
sys.path.insert(0, {repo!r})
from benchmark.run import store
with store.claim({folder!r}, {key!r}) as got:
    print("held" if got else "busy", flush=True)
    time.sleep(60)
"""


def test_claim_is_exclusive_and_released_by_kill_9(tmp_path):
    key = "00ff00ff00ff00ff"
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), folder=str(tmp_path), key=key)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with store.claim(tmp_path, key) as got:
            assert not got
        assert store.claimed_elsewhere(tmp_path, key)
        with store.claim(tmp_path, "00ff00ff00ff00fe") as other:
            assert other  # another cell is free
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    with store.claim(tmp_path, key) as got:
        assert got
    assert not store.claimed_elsewhere(tmp_path, key)


def test_two_runs_at_once_share_the_work(tiny_registry, tmp_path):
    reg = Registry(tiny_registry)
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "benchmark.cli", "run", "--suite", "tiny", "--registry", str(tiny_registry),
           "--results", str(results), "--no-progress"]
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    ran = [int(e.split("ran ", 1)[1].split(" ", 1)[0]) for e in errs]
    assert sum(ran) == 4, errs  # each cell written by exactly one of them
    assert all("Traceback" not in e for e in errs)
    files = store.result_files(results / "tiny")
    assert len(files) == 4 and all(store.check_result(p).status == store.VERIFIED for p in files)
    assert aggregate.load(reg, "tiny", results).n_present == 4


def test_stale_temp_files_are_ignored_and_cleaned(done, capsys):
    reg, results, paths = done
    folder = results / "tiny" / "tiny"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has exited
    stale = folder / f".tmp-{dead}-abc.json"
    stale.write_text('{"half": ')
    old_style = folder / ".tmp-xyz123.json"
    old_style.write_text("{")
    live = folder / f".tmp-{os.getppid()}-live.json"  # a live process's file is left alone
    live.write_text("{")
    assert aggregate.load(reg, "tiny", results).n_present == 4  # ignored by readers
    assert cli.main(["verify-results", "--results", str(results)]) == 0
    capsys.readouterr()
    assert _run(reg, results) == 0
    assert "removed 2 temporary file(s)" in capsys.readouterr().err
    assert not stale.exists() and not old_style.exists() and live.exists()


# --------------------------------------------------------------------------- failing writes
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_disk_full_names_the_path_and_keeps_earlier_results(tiny_registry, tmp_path, monkeypatch, capsys):
    reg = Registry(tiny_registry)
    results = tmp_path / "results"
    assert _run(reg, results, "--shifts", "id") == 0
    before = _snapshot(results)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", full)
    capsys.readouterr()
    assert _run(reg, results) == 1
    err = capsys.readouterr().err
    assert "cannot write result" in err and "the disk is full" in err and str(results / "tiny") in err
    assert "Traceback" not in err
    assert _snapshot(results) == before, "no partial file, earlier results intact"


def test_read_only_results_folder(tiny_registry, tmp_path, monkeypatch, capsys):
    reg = Registry(tiny_registry)
    results = tmp_path / "results"
    assert _run(reg, results, "--shifts", "id") == 0
    before = _snapshot(results)
    folder = results / "tiny" / "tiny"
    if os.geteuid() != 0:
        for d in (results / "tiny", folder):
            d.chmod(0o555)
    else:  # root ignores permission bits: the file system says read-only instead
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(store.tempfile, "mkstemp", read_only)
    capsys.readouterr()
    try:
        assert _run(reg, results) == 1
    finally:
        for d in (results / "tiny", folder):
            d.chmod(0o755)
    err = capsys.readouterr().err
    assert "cannot write result" in err and ("read-only" in err or "permission denied" in err)
    assert str(folder) in err and "Traceback" not in err
    assert _snapshot(results) == before


# --------------------------------------------------------------------------- kill -9 loop
def _kill_loop_module():
    spec = importlib.util.spec_from_file_location("kill_loop", REPO / "perf" / "kill_loop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _kill_loop(tiny_registry, tmp_path, kills: int) -> dict:
    mod = _kill_loop_module()
    args = mod.parser().parse_args(["--kills", str(kills), "--registry", str(tiny_registry), "--suite", "tiny",
                                    "--models", "tiny", "--shifts", "", "--threats", "", "--n", "120",
                                    "--max-delay", "0.3", "--work", str(tmp_path / "kill")])
    args.shifts = args.threats = None
    return mod.kill_loop(args)


def _assert_survived(f: dict, kills: int) -> None:
    assert f["kills"] >= kills, f
    assert f["problems"] == [], f["problems"]
    assert f["partial_or_corrupt"] == f["rewritten"] == f["lost"] == f["outcomes_differ"] == 0
    assert f["identical_to_reference"] and f["temp_files_left"] == 0


def test_kill_9_loop_short(tiny_registry, tmp_path):
    """`shiftbench run --workers 2` killed with SIGKILL twice, resumed: same results as an
    uninterrupted run, nothing partial, nothing finished recomputed."""
    _assert_survived(_kill_loop(tiny_registry, tmp_path, 2), 2)


@pytest.mark.slow
def test_kill_9_loop_long(tiny_registry, tmp_path):
    _assert_survived(_kill_loop(tiny_registry, tmp_path, 20), 20)
