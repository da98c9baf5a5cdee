"""Benchmark: what fixed-size micro-batches cost (benchmark/attacks/batching.py).

Every model and feature-network call of the harness runs on micro-batches of MICRO_BATCH rows,
zero-padded, so that an example's numbers never depend on its batch.  This times the same cells'
attacks (no trust checks) with micro-batches and with whole batches (as before), side by side in
one process, alternating which goes first, and prints the ratio per threat and model::

    .venv/bin/python perf/microbatch_cost.py                       # 200 ID images, 4 threats, 2 models
    .venv/bin/python perf/microbatch_cost.py --n 600 --threats digits-linf,digits-ppgd --repeats 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--models", default="mlp-pgd-0.10,cnn-pgd-0.10")
    ap.add_argument("--threats", default="digits-linf,digits-l1,digits-ppgd,digits-stadv")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sizes", default=None, help="compare these micro-batch sizes too (comma-separated)")
    args = ap.parse_args(argv)

    import torch

    from benchmark.attacks.batching import MICRO_BATCH, micro_batch_size
    from benchmark.data import datasets
    from benchmark.models.load import load_model
    from benchmark.registry import layered
    from benchmark.run.evaluate import attack_outcome

    torch.set_num_threads(1)
    reg = layered()
    x, y = datasets.load_id("digits", "test")
    x, y = x[:args.n], y[:args.n]
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else []
    modes = {"whole": None, "micro": MICRO_BATCH, **{str(s): s for s in sizes}}
    print(f"micro-batches of {MICRO_BATCH} rows vs whole batches; {args.n} ID images, no trust checks, 1 thread")
    extra = "".join(f" {s} rows (s) |" for s in sizes)
    print(f"| model | threat | whole batch (s) | micro-batches (s) | ratio | robust whole / micro |{extra}")
    print("| :--- | :--- | ---: | ---: | ---: | ---: |" + " ---: |" * len(sizes))
    tot = {m: 0.0 for m in modes}
    for mid in args.models.split(","):
        model = load_model(reg.model(mid), reg)
        for tid in args.threats.split(","):
            threat = reg.threat(tid)
            secs = {m: 0.0 for m in modes}
            robust = {}
            for r in range(args.repeats):
                order = list(modes) if r % 2 == 0 else list(modes)[::-1]
                for mode in order:
                    with micro_batch_size(modes[mode]):
                        t0 = time.perf_counter()
                        out = attack_outcome(model, x, y, threat, seed=0, checks=False)
                        secs[mode] += time.perf_counter() - t0
                    robust[mode] = int(out.robust_correct.sum())
            for k in tot:
                tot[k] += secs[k]
            print(f"| {mid} | {tid} | {secs['whole']:.1f} | {secs['micro']:.1f} | {secs['micro'] / secs['whole']:.2f} | "
                  f"{robust['whole']} / {robust['micro']} |" + "".join(f" {secs[str(s)]:.1f} |" for s in sizes), flush=True)
    print(f"| **all** | | {tot['whole']:.1f} | {tot['micro']:.1f} | {tot['micro'] / tot['whole']:.2f} | |"
          + "".join(f" {tot[str(s)]:.1f} |" for s in sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
