"""Settings of one threat side by side, each as the evaluator runs the whole cell.

For each setting: the attack alone, then the stored number once every trust check acted (the ``convergence`` check and its escalation to the
stronger run included), and the CPU seconds of each part.

:mod:`perf.threat_settings` times the attack alone; a threat whose cells are escalated (PPGD and
LPA on digits) costs mostly its stronger run on the examples the attack left robust, so its
settings are chosen here, by the cell's total (docs/threats.md, "the stronger run is the number")::

    .venv/bin/python perf/threat_cells.py --threat digits-lpa --configs \\
        '[{"steps": 20, "binary_steps": 3, "lam0": 1.0}, {"steps": 40, "binary_steps": 3, "lam0": 1.0, "step": 0.4}]'
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from benchmark.attacks.batching import fixed_batch
    from benchmark.models.load import load_model
    from benchmark.registry import FrozenMap
    from benchmark.run.evaluate import attack_outcome

    from threat_settings import setup

    a, reg, entry, x, y = setup(__doc__, argv, models="cnn-pgd-0.10", n=600, configs_help="JSON list of "
                                "attack_args, each replacing the entry's (default: [{}], the attack's defaults)")
    print("| model | attack_args | attack alone % | stored % | stronger run broke | attack s | checks + escalation s "
          "| CPU s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for mid in a.models.split(","):
        model = fixed_batch(load_model(reg.model(mid.strip()), reg).eval())
        for cfg in a.configs:
            threat = dataclasses.replace(entry, attack_args=FrozenMap(cfg))
            t0 = time.process_time()
            out = attack_outcome(model, x, y, threat, seed=0)
            cpu = time.process_time() - t0
            conv = out.checks.get("convergence") or {}
            before = (out.escalation or {}).get("robust_acc_before", float(out.robust_correct.mean()))
            print(f"| {mid} | `{json.dumps(cfg)}` | {100 * before:.1f} | {100 * out.robust_correct.mean():.1f} "
                  f"| {conv.get('broken_by_stronger', '-')} of {conv.get('n', '-')} | {out.attack_s:.1f} "
                  f"| {out.checks_s:.1f} | {cpu:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
