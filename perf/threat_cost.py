"""Robust accuracy and attack CPU seconds of threat entries on the digits zoo, per model.

What docs/threats.md reports for the reference benchmark's threats on digits: each model's
robust accuracy under each threat (the entry's own attack and settings) and the CPU seconds of
its attack on the clean-correct images (``time.process_time``, one thread: comparable on a busy
machine, where wall time is not), then the totals per threat.  ``--set`` overrides attack
settings and ``--params`` budget keys of every threat, for a sweep.

    .venv/bin/python perf/threat_cost.py --threats digits-stadv,digits-recolor,digits-ppgd,digits-lpa
    .venv/bin/python perf/threat_cost.py --threats digits-stadv --models 'cnn-*' --n 120 --set '{"steps": 100}'
    .venv/bin/python perf/threat_cost.py --threats digits-ppgd,digits-lpa --n 120 --params '{"bound": 0.3}'
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch


def zoo_parser(description: str, threats: str | None = None, n_help: str = "first n test images"
               ) -> argparse.ArgumentParser:
    """The options of the scripts that attack a suite's zoo with some of its threats (this one,
    converged_threats.py): ``--threats`` (required without a default), ``--suite``, ``--models``,
    ``--n``, ``--registry``."""
    from benchmark.registry import default_registry_root

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threats", required=threats is None, default=threats, help="comma-separated threat ids")
    p.add_argument("--suite", default="digits")
    p.add_argument("--models", default=None, help="patterns over the suite's models (default: all)")
    p.add_argument("--n", type=int, default=None, help=f"{n_help} (default: the suite's n_examples)")
    p.add_argument("--registry", default=str(default_registry_root()))
    return p


def main(argv: list[str] | None = None) -> int:
    from benchmark.attacks import run_attack
    from benchmark.data import datasets
    from benchmark.models.load import load_model
    from benchmark.registry import FrozenMap, Registry

    p = zoo_parser(__doc__.split("\n")[0])
    p.add_argument("--set", type=json.loads, default=None, help="JSON attack settings overriding every entry's")
    p.add_argument("--params", type=json.loads, default=None, help="JSON budget keys overriding every entry's")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    reg = Registry(a.registry)
    suite = reg.suite(a.suite)
    threats = [reg.threat(t.strip()) for t in a.threats.split(",") if t.strip()]
    if a.params:
        threats = [dataclasses.replace(t, params=FrozenMap({**t.params, **a.params})) for t in threats]
    x, y = datasets.load_id(suite.dataset, "test")
    n = a.n or suite.n_examples
    x, y = x[:n], y[:n]
    totals = {t.id: 0.0 for t in threats}
    print("| model | clean | " + " | ".join(f"{t.id} | CPU s" for t in threats) + " |")
    print("|---|---|" + "---|---|" * len(threats))
    for spec in reg.suite_models(suite, a.models):
        model = load_model(spec, reg).eval()
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        row = [spec.id, f"{ok.float().mean():.3f}"]
        for t in threats:
            args = {**dict(t.attack_args), **(a.set or {})}
            c = time.process_time()
            xa = run_attack(model, x[ok], y[ok], t, seed=suite.seed, attack=t.attack, **args)
            dt = time.process_time() - c
            with torch.no_grad():
                robust = (model(xa).argmax(1) == y[ok]).sum().item() / len(y)
            totals[t.id] += dt
            row += [f"{robust:.3f}", f"{dt:.2f}"]
        print("| " + " | ".join(row) + " |", flush=True)
    print("\nCPU seconds per threat, all models: " + ", ".join(f"{k} {v:.1f}" for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
