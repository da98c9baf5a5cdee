"""CPU seconds of the digits dataset-shift cells under the lean and the reference design.

For each model and shift, the batch of a shift's severities is attacked under both designs in
one process, one torch thread, alternating, and timed with ``time.process_time`` (CPU seconds
of the process: comparable on a shared machine, where wall time is not); nothing is written.
A batch costs its attack (which scales with its images) and its trust checks (a fixed sample
per batch, trust.SHIFT_SAMPLE), so the lean design saves less than its share of images.

    PYTHONPATH=. .venv/bin/python perf/design_cost.py --models mlp-pgd-0.10,lenet-pgd-0.10,cnn-pgd-0.10 \\
        --shifts gaussian_noise,defocus_blur,contrast,rotation
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmark.models.load import load_model
    from benchmark.registry import Registry
    from benchmark.run.evaluate import batch_outcomes
    from benchmark.run.plan import plan_suite

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", required=True, help="comma-separated digits model ids")
    p.add_argument("--shifts", required=True, help="comma-separated dataset shifts (severities: all)")
    p.add_argument("--repeats", type=int, default=1, help="times each batch is attacked under each design")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    reg = Registry()
    print("| model | shift | images: reference / lean | CPU s: reference | CPU s: lean | lean / reference |")
    print("|---|---|---:|---:|---:|---:|")
    totals = {"reference": 0.0, "lean": 0.0}
    for mid in a.models.split(","):
        model = load_model(reg.model(mid), reg)
        for sid in a.shifts.split(","):
            spent, images = {}, {}
            for protocol in ("reference", "lean"):
                cells = plan_suite(reg, "digits", models=mid, shifts=sid, threats=reg.suite("digits").id_threat,
                                   protocol=protocol)
                batch = cells[0].batch
                batch_outcomes(batch, model)  # warm: data generated and cached, kernels chosen
                spent[protocol] = float("inf")
                for _ in range(a.repeats):
                    t0 = time.process_time()
                    out = batch_outcomes(batch, model)
                    spent[protocol] = min(spent[protocol], time.process_time() - t0)
                images[protocol] = sum(len(o.clean_correct) for _, o in out)
                totals[protocol] += spent[protocol]
            print(f"| {mid} | {sid} | {images['reference']} / {images['lean']} | {spent['reference']:.2f} | "
                  f"{spent['lean']:.2f} | {spent['lean'] / spent['reference']:.2f} |", flush=True)
    print(f"\ntotal CPU s: reference {totals['reference']:.1f}, lean {totals['lean']:.1f}, "
          f"lean / reference {totals['lean'] / totals['reference']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
