"""Several attack settings of one threat side by side: robust accuracy (%) and seconds per model.

How the converged settings of the digits non-Lp threats were chosen (docs/threats.md): each model's
clean-correct images of a fixed subset (``datasets.subset``, seed 0) attacked with each setting
in turn (the threat's own settings updated by it; the examples' positions index the restarts'
random starts), on fixed micro-batches as the evaluator runs them.  Wall seconds: compare them
within a row only (the machine may be busy).

    .venv/bin/python perf/threat_settings.py --threat digits-lpa \\
        --configs '[{}, {"steps": 80, "binary_steps": 3, "restarts": 2}]'

With ``--profiles native,avx2`` each setting also runs under every CPU profile of
:mod:`benchmark.run.cpus` (one child process each) and the table gives, per profile, robust
accuracy and the examples whose outcome differs from the first profile's: how stable a setting is
across CPU code paths (a long chaotic attack turns last bits into outcomes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

MODELS = "cnn-pgd-0.10,lenet-trades-3,mlp-pgd-0.05,cnn-standard"


def setup(doc: str, argv: list[str] | None, *, models: str, n: int, configs_help: str, extra=None):
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
    if extra is not None:
        extra(p)
    a = p.parse_args(argv)
    if not isinstance(a.configs, list) or not all(isinstance(c, dict) for c in a.configs):
        raise SystemExit("--configs: give a JSON list of objects, e.g. '[{}, {\"steps\": 40}]'")
    torch.set_num_threads(1)
    reg = Registry(a.registry)
    x_all, y_all = datasets.load_id("digits", "test")
    idx = torch.from_numpy(datasets.subset(a.n, len(x_all), 0))
    return a, reg, reg.threat(a.threat), x_all[idx], y_all[idx]


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profiles", default="", help="comma-separated CPU profiles (benchmark.run.cpus), e.g. "
                   "native,avx2: run every setting under each and count the outcomes that differ")
    p.add_argument("--outcomes-json", action="store_true", help=argparse.SUPPRESS)  # a profile's child process


def attackable(reg, mid: str, x: torch.Tensor, y: torch.Tensor):
    """Model ``mid`` on fixed micro-batches, as the evaluator runs it, and what it classifies
    right: ``(model, ok, xc, yc, index)``, ``index`` their positions (the restarts' streams)."""
    from benchmark.attacks.batching import fixed_batch
    from benchmark.models.load import load_model

    model = fixed_batch(load_model(reg.model(mid), reg).eval())
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, ok, x[ok], y[ok], ok.nonzero().squeeze(1).tolist()


def outcomes(a, reg, threat, x, y) -> dict[str, list[tuple[list[int], float]]]:
    """Per model, per setting: each image's robust outcome (1 robust, 0 broken or misclassified)
    and the attack's wall seconds."""
    from benchmark.attacks import run_attack

    out = {}
    for mid in [m.strip() for m in a.models.split(",") if m.strip()]:
        model, ok, xc, yc, index = attackable(reg, mid, x, y)
        out[mid] = []
        for cfg in a.configs:
            args = {**dict(threat.attack_args), **cfg}
            t0 = time.perf_counter()
            xa = run_attack(model, xc, yc, threat, seed=0, index=index, **args)
            with torch.no_grad():
                robust = torch.zeros(len(x), dtype=torch.int64)
                robust[ok.nonzero().squeeze(1)] = (model(xa).argmax(1) == yc).long()
            out[mid].append((robust.tolist(), time.perf_counter() - t0))
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmark.run import cpus

    argv = sys.argv[1:] if argv is None else argv
    a, reg, threat, x, y = setup(__doc__, argv, models=MODELS, n=200, configs_help="JSON list of settings, each "
                                 "updating the threat's own (default: [{}], the entry as is)", extra=_options)
    if a.outcomes_json:
        print(json.dumps(outcomes(a, reg, threat, x, y)))
        return 0
    profiles = [q.strip() for q in a.profiles.split(",") if q.strip()]
    if not profiles:
        runs = {"": outcomes(a, reg, threat, x, y)}
    else:
        runs = {}
        for q in profiles:  # a profile's variables must be set before torch starts: a child process each
            child = [sys.executable, os.path.abspath(__file__), *argv, "--outcomes-json"]
            done = subprocess.run(child, env=cpus.profile_env(q), capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"profile {q}: the child failed:\n{done.stderr[-2000:]}")
            runs[q] = json.loads(done.stdout.strip().splitlines()[-1])
    first = next(iter(runs))  # flips are counted against the first profile's outcomes
    columns = [(k, q) for k in range(len(a.configs)) for q in runs]
    print("| model | " + " | ".join(f"{json.dumps(a.configs[k])}{f' [{q}]' if q else ''} % | s"
                                    + (" | flips" if q != first else "") for k, q in columns) + " |")
    print("|---|" + "".join("---|---|" + ("---|" if q != first else "") for _, q in columns))
    for mid in runs[first]:
        row = [mid]
        for k, q in columns:
            robust, secs = runs[q][mid][k]
            row += [f"{100 * sum(robust) / a.n:.1f}", f"{secs:.1f}"]
            if q != first:
                row.append(str(sum(u != v for u, v in zip(runs[first][mid][k][0], robust))))
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
