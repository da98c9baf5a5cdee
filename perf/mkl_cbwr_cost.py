"""Benchmark: what MKL's strict reproducibility mode costs (benchmark/_numerics.py).

Every process that imports ``benchmark`` runs MKL with ``MKL_CBWR=AUTO,STRICT``, so that a row's
logits never depend on its position in a micro-batch on Intel CPUs.  MKL reads the mode once per
process, so this runs the same cells' attacks (no trust checks, one thread) in child processes
with ``AUTO,STRICT`` and with ``BRANCH_OFF`` (MKL's own default), alternating which goes first, and
prints the time of each side (model loading excluded), the ratio, and whether the per-example
outcomes are identical.  ``--profile avx2`` caps MKL at AVX2 (what an AVX2-only Intel CPU runs),
where the two modes compute different last bits::

    .venv/bin/python perf/mkl_cbwr_cost.py                                   # native, 2 repeats
    .venv/bin/python perf/mkl_cbwr_cost.py --profile avx2 --n 300 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark.run import cpus  # noqa: E402  (light: no torch)

MODES = ("AUTO,STRICT", "BRANCH_OFF")

CHILD = r"""
import hashlib, json, sys, time, torch
torch.set_num_threads(1)
from benchmark import _numerics
from benchmark.data import datasets
from benchmark.models.load import load_model
from benchmark.registry import layered
from benchmark.run.evaluate import attack_outcome
n, models, threats = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3].split(",")
reg = layered()
x, y = datasets.load_id("digits", "test")
x, y = x[:n], y[:n]
out = {"cells": {}}
for mid in models:
    model = load_model(reg.model(mid), reg)
    for tid in threats:
        t0 = time.perf_counter()
        o = attack_outcome(model, x, y, reg.threat(tid), seed=0, checks=False)
        s = time.perf_counter() - t0
        h = hashlib.sha256(o.clean_correct.tobytes() + o.robust_correct.tobytes()).hexdigest()[:12]
        out["cells"][f"{mid}/{tid}"] = [s, h, int(o.robust_correct.sum())]
out["mkl"] = _numerics.mkl_mode()
print(json.dumps(out))
"""


def child(mode: str, profile: str, args) -> dict:
    env = cpus.profile_env(profile)
    env["MKL_CBWR"] = mode
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-c", CHILD, str(args.n), args.models, args.threats], env=env,
                       capture_output=True, text=True, cwd=ROOT, check=False)
    if r.returncode:
        raise SystemExit(f"child ({mode}) failed: {r.stderr[-2000:]}")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["mkl"] == mode.replace("BRANCH_OFF", "AUTO") or got["mkl"] == mode, got["mkl"]
    return got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--models", default="mlp-pgd-0.10,cnn-pgd-0.10,lenet-pgd-0.10")
    ap.add_argument("--threats", default="digits-linf,digits-l1,digits-ppgd")
    ap.add_argument("--profile", default="native", choices=list(cpus.PROFILES))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    secs: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    hashes: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    robust: dict[str, dict[str, int]] = defaultdict(dict)
    for r in range(args.repeats):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            got = child(mode, args.profile, args)
            for cell, (s, h, k) in got["cells"].items():
                secs[cell][mode] += s / args.repeats
                hashes[cell][mode].add(h)
                robust[cell][mode] = k
    print(f"MKL_CBWR=AUTO,STRICT vs BRANCH_OFF (MKL's default); profile {args.profile}; {args.n} ID images, "
          f"no trust checks, 1 thread, mean of {args.repeats} runs alternating the order")
    print("| cell | strict (s) | default (s) | ratio | robust strict / default | outcomes identical |")
    print("| :--- | ---: | ---: | ---: | ---: | :---: |")
    tot = defaultdict(float)
    for cell, s in secs.items():
        a, b = s[MODES[0]], s[MODES[1]]
        tot[MODES[0]] += a
        tot[MODES[1]] += b
        same = hashes[cell][MODES[0]] == hashes[cell][MODES[1]] and len(hashes[cell][MODES[0]]) == 1
        print(f"| {cell} | {a:.2f} | {b:.2f} | {a / b:.3f} | {robust[cell][MODES[0]]} / {robust[cell][MODES[1]]} | "
              f"{'yes' if same else 'no'} |")
    a, b = tot[MODES[0]], tot[MODES[1]]
    print(f"| **all** | {a:.2f} | {b:.2f} | {a / b:.3f} | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
