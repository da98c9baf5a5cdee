"""Benchmark: the same cells computed under several CPU code paths of this machine, compared
example by example (what another CPU would compute, without another CPU).

Each profile of :mod:`benchmark.run.cpus` (``native``, ``avx2``, ``default``) runs
``shiftbench run`` in its own process and results folder; then every cell is compared with the
same cell of the first profile (and with the stored results, ``--stored``), and the table gives,
per threat, the outcomes compared, the flipped clean and robust outcomes, and the cells outside the
reproduce tolerance::

    .venv/bin/python perf/cross_cpu.py --profiles native,avx2 --workers 2           # the whole digits suite
    .venv/bin/python perf/cross_cpu.py --profiles avx2 --stored results --threats 'digits-ppgd' --shifts id
    .venv/bin/python perf/cross_cpu.py --what                                        # what each variable changes

``--keep DIR`` keeps the recomputed results (DIR/<profile>/<suite>/...) and reuses them on the next
run (a cell already there is not recomputed), so profiles can be added one at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark.run import cpus  # noqa: E402  (light: no torch)

WHAT = r"""
import hashlib, os, torch
torch.set_num_threads(1)
from benchmark.registry import layered
from benchmark.models.load import load_model
from benchmark.data import datasets
reg = layered()
x = datasets.load_id("digits", "test", None, None)[0][:256].clone()
out = [torch.backends.cpu.get_cpu_capability()]
for mid in ("mlp-standard", "cnn-pgd-0.10", "lenet-pgd-0.10"):
    m = load_model(reg.model(mid), reg)
    xx = x.clone().requires_grad_(True)
    z = m(xx)
    g, = torch.autograd.grad(z.logsumexp(1).sum(), xx)
    out.append(mid + " " + hashlib.sha256(z.detach().numpy().tobytes() + g.numpy().tobytes()).hexdigest()[:10])
s = torch.linspace(0, 1, 100003)
out.append("sum " + hashlib.sha256(torch.stack([s.sum(), s.norm()]).numpy().tobytes()).hexdigest()[:10])
print(" | ".join(out))
"""


def what_changes() -> None:
    """Which of the three variables changes which computation here (hash of logits+gradients)."""
    env0 = cpus.profile_env("native")
    cases = [("native", {}), ("MKL_CBWR=BRANCH_OFF (MKL's own default)", {"MKL_CBWR": "BRANCH_OFF"})] + \
            [(f"{k}={v}", {k: v}) for k, v in cpus.PROFILES["avx2"].items()] + \
            [(f"{k}={v}", {k: v}) for k, v in cpus.PROFILES["default"].items()]
    for name, extra in cases:
        r = subprocess.run([sys.executable, "-c", WHAT], env={**env0, **extra}, capture_output=True, text=True,
                           cwd=ROOT)
        print(f"{name:40s} {r.stdout.strip() or r.stderr.strip()[-300:]}")


def run_profile(profile: str, out: Path, args) -> float:
    cmd = [sys.executable, "-m", "benchmark.cli", "run", "--suite", args.suite, "--results", str(out),
           "--workers", str(args.workers)]
    for flag in ("models", "shifts", "threats"):
        if getattr(args, flag):
            cmd += [f"--{flag}", getattr(args, flag)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=cpus.profile_env(profile), check=True, cwd=os.getcwd())
    return time.perf_counter() - t0


def load_cells(folder: Path) -> dict[str, dict]:
    from benchmark.run import store

    cells = {}
    for path in store.result_files(folder):
        cells[str(path.relative_to(folder))] = store.read_json(path)
    return cells


def compare(ref: dict[str, dict], other: dict[str, dict]) -> dict[str, dict]:
    """Per threat: outcomes compared, clean and robust flips, cells with a flip, cells that differ."""
    from benchmark.workflows.reproduce import judge

    table: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for name, a in ref.items():
        b = other.get(name)
        if b is None:
            continue
        j = judge(a, b)
        row = table[a["threat"]["id"] if isinstance(a.get("threat"), dict) else str(a.get("threat"))]
        row["cells"] += 1
        row["outcomes"] += 2 * int(a["n"])
        flips = j.get("clean_lost", 0) + j.get("clean_gained", 0) + j.get("robust_lost", 0) + j.get("robust_gained", 0)
        row["clean_flips"] += j.get("clean_lost", 0) + j.get("clean_gained", 0)
        row["robust_flips"] += j.get("robust_lost", 0) + j.get("robust_gained", 0)
        row["max_flips_in_a_cell"] = max(row["max_flips_in_a_cell"], flips)
        row["cells_with_flips"] += int(flips > 0)
        row["cells_differing"] += int(j["status"] == "differs")
    return {k: dict(v) for k, v in sorted(table.items())}


def print_table(title: str, table: dict[str, dict]) -> None:
    print(f"\n{title}")
    print(f"| threat | cells | outcomes | clean flips | robust flips | cells with flips | most in a cell | cells differing |")
    print("| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    tot = defaultdict(int)
    for t, r in table.items():
        print(f"| {t} | {r['cells']} | {r['outcomes']} | {r['clean_flips']} | {r['robust_flips']} | "
              f"{r['cells_with_flips']} | {r['max_flips_in_a_cell']} | {r['cells_differing']} |")
        for k, v in r.items():
            tot[k] = max(tot[k], v) if k == "max_flips_in_a_cell" else tot[k] + v
    flips = tot["clean_flips"] + tot["robust_flips"]
    share = 100 * flips / max(1, tot["outcomes"])
    print(f"| **all** | {tot['cells']} | {tot['outcomes']} | {tot['clean_flips']} | {tot['robust_flips']} | "
          f"{tot['cells_with_flips']} | {tot['max_flips_in_a_cell']} | {tot['cells_differing']} |")
    print(f"flipped outcomes: {flips} of {tot['outcomes']} ({share:.4f}%)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="digits")
    ap.add_argument("--profiles", default="native,avx2", help=f"comma-separated, of {', '.join(cpus.PROFILES)}")
    ap.add_argument("--stored", default=None, help="also compare every profile with this results folder")
    ap.add_argument("--models"), ap.add_argument("--shifts"), ap.add_argument("--threats")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", default=None, help="keep (and reuse) recomputed results under this folder")
    ap.add_argument("--json", default=None, help="write the tables to this JSON file")
    ap.add_argument("--what", action="store_true", help="only show what each variable changes, and exit")
    args = ap.parse_args(argv)
    if args.what:
        what_changes()
        return 0
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    for p in profiles:
        cpus.profile_env(p)  # unknown names fail before any work
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="shiftbench-cross-cpu-"))
    cells, seconds = {}, {}
    for p in profiles:
        seconds[p] = run_profile(p, work / p, args)
        cells[p] = load_cells(work / p / args.suite)
        print(f"{p}: {len(cells[p])} cells, {seconds[p]:.0f} s", flush=True)
    tables = {}
    if args.stored:
        stored = load_cells(Path(args.stored) / args.suite)
        for p in profiles:
            tables[f"stored vs {p}"] = compare({k: v for k, v in stored.items() if k in cells[p]}, cells[p])
    for p in profiles[1:]:
        tables[f"{profiles[0]} vs {p}"] = compare(cells[profiles[0]], cells[p])
    for title, t in tables.items():
        print_table(title, t)
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": seconds, "tables": tables}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
