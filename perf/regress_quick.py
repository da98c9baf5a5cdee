"""Benchmark: time of `shiftbench regress --quick` for digits zoo models against their own baseline,
side by side with the 60-second target on a 2-core CPU.

The baseline is exported from the stored results (`results/digits`, or --results); each model is
then compared with it in-process with one torch thread (as `shiftbench regress` does by default).
Wall time depends on what else the machine runs; CPU time (this process) is the steadier figure:

    PYTHONPATH=. .venv/bin/python perf/regress_quick.py --models cnn-pgd-0.10,mlp-pgd-0.10
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

TARGET_S = 60.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="cnn-pgd-0.10,mlp-pgd-0.10")
    p.add_argument("--results", default="results")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    import benchmark

    torch.set_num_threads(args.threads)
    print(f"{'model':<16} {'cells':>5} {'wall s':>7} {'cpu s':>6} {'target s':>8} {'wall/target':>11} verdict")
    worst = 0.0
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "baseline.json")
            benchmark.export_baseline(model, base, results=args.results)
            t0, c0 = time.perf_counter(), time.process_time()
            res = benchmark.regress(model, base, quick=True)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        worst = max(worst, wall)
        print(f"{model:<16} {len(res.cells):>5} {wall:>7.1f} {cpu:>6.1f} {TARGET_S:>8.0f} {wall / TARGET_S:>11.2f} "
              f"{'ok' if res.ok else 'WORSE?'}")
    return 0 if worst <= TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
