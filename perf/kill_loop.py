"""Kill -9 loop: `shiftbench run --workers 2` killed at random points, resumed each time.

    python perf/kill_loop.py                      # 20 kills on a small digits slice (a few minutes)
    python perf/kill_loop.py --kills 50 --models 'mlp-*'

A reference run computes the slice uninterrupted (in this process).  Then a `shiftbench run` over
a second results folder is started in its own process group and, once it has written at least
one new result (or, every fifth time, while it is still starting up), killed with SIGKILL (the
whole group: the main process and its two workers) after a random delay; this repeats until
``--kills`` kills have landed, then a last run finishes the slice.  After every kill the script
checks that

* every result file present parses and passes verification (no partial or corrupt file),
* no result written before the kill was rewritten (same inode and mtime): only cells in flight
  at a kill were recomputed,

and at the end that the results are exactly the reference's (same files, same per-example
outcomes and accuracies) and that no temporary file is left.  If the slice completes before
enough kills landed, the folder is emptied and the loop goes on (kills are counted across rounds).
Prints the figures; exits 1 if any check failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmark.registry import DEFAULT_REGISTRY, Registry  # noqa: E402
from benchmark.run import plan, store  # noqa: E402
from benchmark.run.evaluate import run_grid  # noqa: E402

COMPARED = ("key", "n", "clean_acc", "robust_acc", "clean_correct", "robust_correct")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.result_files(folder)}


def run_cmd(args, results: Path) -> list[str]:
    cmd = [sys.executable, "-m", "benchmark.cli", "run", "--suite", args.suite, "--registry", str(args.registry),
           "--results", str(results), "--workers", str(args.workers), "--no-progress"]
    for flag in ("models", "shifts", "threats"):
        if getattr(args, flag):
            cmd += [f"--{flag}", getattr(args, flag)]
    if args.n:
        cmd += ["--n", str(args.n)]
    return cmd


def kill_loop(args) -> dict:
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="shiftbench-kill-"))
    ref_root, root = work / "reference", work / "killed"
    for d in (ref_root, root):
        shutil.rmtree(d, ignore_errors=True)
    reg = Registry(args.registry)
    cells = plan.plan_suite(reg, args.suite, models=args.models, shifts=args.shifts, threats=args.threats,
                            n_examples=args.n)
    t0 = time.perf_counter()
    run_grid(cells, reg, ref_root / args.suite, workers=1, progress=False)
    ref_s = time.perf_counter() - t0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    folder = root / args.suite
    figures = {"cells": len(cells), "kills": 0, "attempts": 0, "rounds": 1, "kills_during_startup": 0,
               "kills_mid_run": 0, "cells_done_at_kills": [], "partial_or_corrupt": 0, "rewritten": 0,
               "temp_files_seen_after_kills": 0, "reference_s": round(ref_s, 1)}
    problems: list[str] = []
    seen: dict[str, tuple[int, int]] = {}
    while figures["kills"] < args.kills and figures["attempts"] < args.kills * 4:
        figures["attempts"] += 1
        before = len(store.result_files(folder)) if folder.is_dir() else 0
        proc = subprocess.Popen(run_cmd(args, root), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        during_startup = figures["attempts"] % 5 == 0  # one kill in five lands while it starts up
        deadline = time.monotonic() + args.timeout
        if during_startup:
            time.sleep(rng.uniform(0.2, 2.0))
        else:  # wait for work to be under way, then a random extra delay
            while proc.poll() is None and time.monotonic() < deadline:
                if folder.is_dir() and len(store.result_files(folder)) > before:
                    break
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, args.max_delay))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            figures["kills"] += 1
            figures["kills_during_startup" if during_startup else "kills_mid_run"] += 1
        elif proc.returncode != 0:
            problems.append(f"attempt {figures['attempts']}: run exited {proc.returncode} before the kill")
        time.sleep(0.2)  # let the kernel reap the workers
        now = snapshot(folder) if folder.is_dir() else {}
        figures["cells_done_at_kills"].append(len(now))
        for name, ident in seen.items():
            if name in now and now[name] != ident:
                figures["rewritten"] += 1
                problems.append(f"{name} was rewritten after it was complete")
        for p in store.result_files(folder) if folder.is_dir() else []:
            v = store.check_result(p)
            if v.status != store.VERIFIED:
                figures["partial_or_corrupt"] += 1
                problems.append(v.describe())
        figures["temp_files_seen_after_kills"] += len(list(folder.rglob(".tmp-*"))) if folder.is_dir() else 0
        seen.update(now)
        if len(now) >= len(cells) and figures["kills"] < args.kills:  # finished early: start a new round
            shutil.rmtree(root)
            seen.clear()
            figures["rounds"] += 1
    final = subprocess.run(run_cmd(args, root), env=env, capture_output=True, text=True, timeout=args.timeout * 4)
    if final.returncode != 0:
        problems.append(f"final run exited {final.returncode}: {final.stderr[-500:]}")
    for name, ident in seen.items():
        if snapshot(folder).get(name, ident) != ident:
            figures["rewritten"] += 1
            problems.append(f"{name} was rewritten by the final run")
    ref_files, got_files = snapshot(ref_root / args.suite), snapshot(folder)
    figures["lost"] = len(set(ref_files) - set(got_files))
    figures["extra"] = len(set(got_files) - set(ref_files))
    differ = 0
    for name in sorted(set(ref_files) & set(got_files)):
        a, b = store.read_json(ref_root / args.suite / name), store.read_json(folder / name)
        if any(a[k] != b[k] for k in COMPARED):
            differ += 1
            problems.append(f"{name}: outcomes differ from the uninterrupted run")
    figures["outcomes_differ"] = differ
    figures["temp_files_left"] = len(list(folder.rglob(".tmp-*")))
    figures["identical_to_reference"] = not differ and not figures["lost"] and not figures["extra"]
    figures["problems"] = problems
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--registry", default=str(DEFAULT_REGISTRY))
    p.add_argument("--suite", default="digits")
    p.add_argument("--models", default="mlp-standard,mlp-noise-0.2")
    p.add_argument("--shifts", default="gaussian_noise,shot_noise,impulse_noise,speckle_noise,brightness,contrast")
    p.add_argument("--threats", default="digits-linf")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-delay", type=float, default=1.5, help="seconds after the first new result")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one attempt may take")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    p.add_argument("--work", default=None, help="keep the folders here (default: a temporary folder)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    t0 = time.perf_counter()
    f = kill_loop(args)
    print(f"slice: {f['cells']} cells ({args.suite}: models={args.models} shifts={args.shifts} "
          f"threats={args.threats} n={args.n}), --workers {args.workers}")
    print(f"kills (SIGKILL to the run's process group) : {f['kills']} in {f['attempts']} attempts "
          f"({f['kills_mid_run']} mid-run, {f['kills_during_startup']} during startup; {f['rounds']} round(s))")
    print(f"cells done at each kill                    : {f['cells_done_at_kills']}")
    print(f"partial or corrupt result files seen       : {f['partial_or_corrupt']}")
    print(f"finished results rewritten (recomputed)    : {f['rewritten']}")
    print(f"temporary files seen after kills / left    : {f['temp_files_seen_after_kills']} / {f['temp_files_left']}")
    print(f"results lost / extra / outcomes differing  : {f['lost']} / {f['extra']} / {f['outcomes_differ']}")
    print(f"identical to the uninterrupted run         : {f['identical_to_reference']}")
    print(f"time: reference {f['reference_s']} s, loop {time.perf_counter() - t0:.0f} s")
    for p in f["problems"][:20]:
        print(f"problem: {p}")
    if args.json:
        print(json.dumps(f))
    ok = not f["problems"] and f["kills"] >= args.kills and f["identical_to_reference"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
