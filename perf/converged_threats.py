"""The non-Lp digits threats before and after their converged settings, side by side: robust
accuracy and CPU seconds per model, and the convergence check's cost.

For every zoo model and threat, on the suite's ID test images, as the evaluator runs a cell
(:func:`benchmark.run.evaluate.attack_outcome`, fixed micro-batches): the threat at its harness-6
settings (``BEFORE``; run by the current code, so StAdv already has the reference's geometry)
without deep checks; then the entry as it is (robust accuracy of its attack alone), then every
trust check, the ``convergence`` check and its escalation included (robust accuracy once they
acted: where the cell was escalated, what the stronger run finds on every example the attack
left robust).  CPU seconds (``time.process_time``, one thread: comparable on a busy machine,
where wall time is not), summed per threat at the end.

    .venv/bin/python perf/converged_threats.py                       # the whole zoo, 600 images
    .venv/bin/python perf/converged_threats.py --models 'cnn-pgd-0.10,cnn-standard' --n 200
"""
from __future__ import annotations

import dataclasses
import sys
import time

import torch

# the digits entries' attack settings at harness 6 (before this calibration)
BEFORE = {
    "digits-ppgd": {"steps": 10, "cg_steps": 5},
    "digits-lpa": {"steps": 10, "binary_steps": 2},
    "digits-stadv": {"steps": 20},
    "digits-recolor": {"steps": 10, "lr": 0.05},
    "digits-jpeg": {"steps": 20},
    "digits-brightness-contrast": {"grid": 5, "steps": 10},
    "digits-pixel-flow": {"steps": 20},
    "digits-rotation-translation": {"search": "grid", "rotations": 5, "translations": 3},
}


def main(argv: list[str] | None = None) -> int:
    from tqdm.auto import tqdm

    from benchmark.data import datasets
    from benchmark.models.load import load_model
    from benchmark.registry import FrozenMap, Registry
    from benchmark.run.evaluate import attack_outcome, checked

    from threat_cost import zoo_parser  # this folder's sibling script

    a = zoo_parser(__doc__.split("\n")[0], "digits-ppgd,digits-lpa,digits-stadv,digits-recolor",
                   "test images, the suite's subset").parse_args(argv)
    torch.set_num_threads(1)
    reg = Registry(a.registry)
    suite = reg.suite(a.suite)
    threats = [reg.threat(t.strip()) for t in a.threats.split(",") if t.strip()]
    unknown = [t.id for t in threats if t.id not in BEFORE]
    if unknown:
        raise SystemExit(f"converged_threats: no harness-6 settings for {', '.join(unknown)} (known: "
                         f"{', '.join(BEFORE)})")
    x, y = datasets.load_id(suite.dataset, "test")
    idx = torch.from_numpy(datasets.subset(min(a.n or suite.n_examples, len(x)), len(x), suite.seed))
    x, y = x[idx], y[idx]
    specs = reg.suite_models(suite, a.models)
    sums = {t.id: [0.0, 0.0, 0.0, 0, 0.0, 0.0] for t in threats}  # before s, after s, check s, escalated, acc b/a
    print("| model | threat | robust before | robust after (attack) | robust after (checks acted) | before CPU s | "
          "after CPU s | check CPU s | escalated |")
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in tqdm(specs, desc="models", unit="model", file=sys.stderr):
        model = load_model(spec, reg).eval()
        for t in threats:
            old = dataclasses.replace(t, attack_args=FrozenMap(BEFORE[t.id]))
            c = time.process_time()
            before = attack_outcome(model, x, y, old, seed=suite.seed, checks=False)
            before_s = time.process_time() - c
            c = time.process_time()
            after = attack_outcome(model, x, y, t, seed=suite.seed, checks=False)
            after_s = time.process_time() - c
            c = time.process_time()
            done = checked(model, x, y, t, after, deep=True, seed=suite.seed)
            check_s = time.process_time() - c
            s = sums[t.id]
            rb, rattack, ra = before.robust_correct.mean(), after.robust_correct.mean(), done.robust_correct.mean()
            s[0] += before_s
            s[1] += after_s
            s[2] += check_s
            s[3] += done.escalation is not None
            s[4] += rb / len(specs)
            s[5] += ra / len(specs)
            print(f"| {spec.id} | {t.id} | {rb:.3f} | {rattack:.3f} | {ra:.3f} | {before_s:.2f} | {after_s:.2f} | "
                  f"{check_s:.2f} | {'yes' if done.escalation else 'no'} |", flush=True)
    print("\n| threat | mean robust before | mean robust after | attack CPU s before | attack CPU s after | "
          "convergence check CPU s | cells escalated |")
    print("|---|---|---|---|---|---|---|")
    for tid, s in sums.items():
        print(f"| {tid} | {s[4]:.3f} | {s[5]:.3f} | {s[0]:.1f} | {s[1]:.1f} | {s[2]:.1f} | {s[3]} of {len(specs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
