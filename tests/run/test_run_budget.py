"""perf/run_budget.py: what a suite's cells cost, summed per part of the grid from the results'
own timings, and the least wall time of a run without some threats."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "perf" / "run_budget.py"


def _result(folder: Path, name: str, role: str, threat: str, attack: float, checks: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"role": role, "threat": threat, "timing": {
        "attack_s": attack, "checks_s": checks, "clean_s": 0.5}}))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_sums_per_part_and_the_floor_without_the_dropped_threats(tmp_path):
    res = tmp_path / "results" / "digits"
    _result(res / "m1", "id", "id", "digits-linf", 10, 5)
    _result(res / "m1", "noise-1", "dataset", "digits-linf", 20, 10)
    _result(res / "m2", "noise-1", "dataset", "digits-linf", 30, 0)
    _result(res / "m1", "lpa", "threat", "digits-lpa", 100, 300)
    (res / "m2" / "broken.json").write_text("{ not json")
    done = _run("--results", str(res), "--workers", "2", "--without", "digits-lpa", "--target", "30")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "4 cells, 477 worker seconds" in out  # 15.5 + 30.5 + 30.5 + 400.5
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["dataset shifts"].split("|")[2].strip() == "2"
    assert rows["digits-lpa"].split("|")[6].strip() == "400"  # 100 + 300 + 0.5
    # without LPA: 15.5 + 30.5 + 30.5 = 76.5 worker seconds, 38 s on 2 workers, 8 s over the 30 s target
    assert "without digits-lpa: 76 worker seconds, at least 38 s" in out
    assert "8 s over before any cell of them runs" in out
    assert "skipped" in out and "broken.json" in out


@pytest.mark.parametrize("args, says", [
    (("--without", "digits-nope"), "no cells of digits-nope"),
    (("--results", "/nonexistent/results"), "no such results folder"),
])
def test_bad_input_is_named(tmp_path, args, says):
    res = tmp_path / "r"
    _result(res, "a", "id", "digits-linf", 1, 1)
    done = _run(*(("--results", str(res)) if "--results" not in args else ()), *args)
    assert done.returncode != 0
    assert says in done.stderr
