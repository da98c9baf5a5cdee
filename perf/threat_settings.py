"""Several attack settings of one threat side by side: robust accuracy (%) and seconds per model.

How the converged settings of the digits non-Lp threats were chosen (docs/threats.md): each model's
clean-correct images of a fixed subset (``datasets.subset``, seed 0) attacked with each setting
in turn (the threat's own settings updated by it; the examples' positions index the restarts'
random starts), on fixed micro-batches as the evaluator runs them.  Wall seconds: compare them
within a row only (the machine may be busy).

    .venv/bin/python perf/threat_settings.py --threat digits-lpa \\
        --configs '[{}, {"steps": 80, "binary_steps": 3, "restarts": 2}]'
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

MODELS = "cnn-pgd-0.10,lenet-trades-3,mlp-pgd-0.05,cnn-standard"


def setup(doc: str, argv: list[str] | None, *, models: str, n: int, configs_help: str):
    """The command line and data both settings scripts share (this one and perf/threat_cells.py):
    ``(args, registry, threat entry, x, y)``, x and y the fixed subset of ``--n`` test images."""
    from benchmark.data import datasets
    from benchmark.registry import Registry, default_registry_root

    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--threat", required=True)
    p.add_argument("--models", default=models, help=f"comma-separated model ids (default {models})")
    p.add_argument("--n", type=int, default=n, help=f"test images (default {n})")
    p.add_argument("--configs", type=json.loads, default=[{}], help=configs_help)
    p.add_argument("--registry", default=str(default_registry_root()))
    a = p.parse_args(argv)
    if not isinstance(a.configs, list) or not all(isinstance(c, dict) for c in a.configs):
        raise SystemExit("--configs: give a JSON list of objects, e.g. '[{}, {\"steps\": 40}]'")
    torch.set_num_threads(1)
    reg = Registry(a.registry)
    x_all, y_all = datasets.load_id("digits", "test")
    idx = torch.from_numpy(datasets.subset(a.n, len(x_all), 0))
    return a, reg, reg.threat(a.threat), x_all[idx], y_all[idx]


def main(argv: list[str] | None = None) -> int:
    from benchmark.attacks import run_attack
    from benchmark.attacks.batching import fixed_batch
    from benchmark.models.load import load_model

    a, reg, threat, x, y = setup(__doc__, argv, models=MODELS, n=200, configs_help="JSON list of settings, each "
                                 "updating the threat's own (default: [{}], the entry as is)")
    print(f"| model | " + " | ".join(f"{json.dumps(c)} % | s" for c in a.configs) + " |")
    print("|---|" + "---|---|" * len(a.configs))
    for mid in a.models.split(","):
        model = fixed_batch(load_model(reg.model(mid.strip()), reg).eval())
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        xc, yc = x[ok], y[ok]
        index = ok.nonzero().squeeze(1).tolist()
        row = [mid]
        for cfg in a.configs:
            args = {**dict(threat.attack_args), **cfg}
            t0 = time.perf_counter()
            xa = run_attack(model, xc, yc, threat, seed=0, index=index, **args)
            with torch.no_grad():
                robust = (model(xa).argmax(1) == yc).sum().item()
            row += [f"{100 * robust / a.n:.1f}", f"{time.perf_counter() - t0:.1f}"]
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
