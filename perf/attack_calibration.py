"""Benchmark: each threat's own attack (or ``--fast``'s) vs AutoAttack, same examples, same process.

Calls the code of ``shiftbench calibrate`` (benchmark.run.calibrate).  With ``--demo-zoo`` it trains
three small digits models in-process (a few seconds each; for use before the zoo exists).

    .venv/bin/python perf/attack_calibration.py --suite digits --n 200 --out docs/calibration.md
    .venv/bin/python perf/attack_calibration.py --demo-zoo --n 200
    .venv/bin/python perf/attack_calibration.py --fast-args '{"steps": 50, "targets": 3}'
    .venv/bin/python perf/attack_calibration.py --suite digits --fast apgd-mm,mm5 --workers 2
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch


def demo_zoo(seed: int = 0) -> list[tuple[str, torch.nn.Module]]:
    """Three quickly trained digits models: standard MLP, Linf-0.1 PGD-trained MLP and CNN."""
    import torch.nn.functional as F

    from benchmark.models import architectures
    from benchmark.data import datasets
    from benchmark.attacks.pgd import pgd

    xtr, ytr = datasets.load_id("digits", "train")
    out = []
    for name, arch, adv_eps, epochs in [("demo-mlp-std", "mlp", 0.0, 15), ("demo-mlp-at", "mlp", 0.1, 15),
                                        ("demo-cnn-at", "cnn", 0.1, 6)]:
        torch.manual_seed(seed)
        m = architectures.build(arch)
        opt = torch.optim.Adam(m.parameters(), 1e-3)
        for _ in range(epochs):
            perm = torch.randperm(len(xtr))
            for i in range(0, len(xtr), 64):
                b = perm[i:i + 64]
                xb, yb = xtr[b], ytr[b]
                if adv_eps:
                    m.eval()
                    xb = pgd(m, xb, yb, eps=adv_eps, norm="Linf", steps=5, early_stop=False, seed=i)
                    m.train()
                loss = F.cross_entropy(m(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
        out.append((name, m.eval()))
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmark.run import calibrate
    from benchmark.data import datasets
    from benchmark.registry import Registry, default_registry_root

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", default="digits")
    p.add_argument("--models", default=None)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--registry", default=str(default_registry_root()))
    p.add_argument("--fast-args", type=json.loads, default=None,
                   help="JSON overrides for each row's attack (the threat's own, or --fast's first)")
    p.add_argument("--demo-zoo", action="store_true", help="train 3 small models instead of the registry zoo")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="models calibrated at a time (processes)")
    p.add_argument("--threats", default=None, help="patterns over the suite's Lp threats")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the models run (auto: CUDA when available)")
    p.add_argument("--fast", default=None,
                   help="comma-separated attacks forced on every threat (default: each threat's own), e.g. apgd-mm,mm5")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.command_line = "python perf/attack_calibration.py " + " ".join(shlex.quote(s) for s in (argv or sys.argv[1:]))
    if not a.demo_zoo:
        return calibrate.main(a)
    reg = Registry(a.registry, check_files=False)  # the zoo may be half-trained: we do not load it
    suite = reg.suite(a.suite)
    x_all, y_all = datasets.load_id(suite.dataset, "test")
    idx = torch.from_numpy(datasets.subset(min(a.n or calibrate.DEFAULT_N, len(x_all)), len(x_all), suite.seed))
    threats = calibrate.calibration_threats(reg, suite, a.threats)
    from benchmark.run.evaluate import resolve_device

    dev = resolve_device(a.device)
    rows = []
    for name, model in demo_zoo(suite.seed):
        fast = tuple(f.strip() for f in (a.fast or "").split(",") if f.strip()) or None
        rows += calibrate.calibrate_model(model.to(dev), name, x_all[idx].to(dev), y_all[idx].to(dev), threats,
                                          seed=suite.seed, fast_args=a.fast_args, fast=fast)
        print(calibrate.render(rows[-len(threats):], a.command_line), flush=True)
    text = calibrate.render(rows, a.command_line)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0 if calibrate.all_targets_met(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
