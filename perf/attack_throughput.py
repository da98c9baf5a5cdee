"""Benchmark: images per second of the fast attack (apgd-mm) and of AutoAttack-standard, one run.

On the suite's ID threat (``cifar10-linf``: Linf 8/255) with the entry's own attack settings, the
same clean-correct images for both attacks, each at every batch size asked for; prints a table
and the ratio at each attack's best batch size.  Meant for a GPU (it uses CUDA when present), but
it runs anywhere:

    .venv/bin/python perf/attack_throughput.py --data-dir /data --n 1000 --batch-sizes 256,512,1024
    .venv/bin/python perf/attack_throughput.py --synthetic --n 64 --batch-sizes 32   # no dataset

``--synthetic`` draws uniform-noise images and labels them with the model's own prediction (so
all are clean-correct): a cost figure only, and an optimistic one, since such images sit closer
to the boundary than real ones and the attacks stop early on them.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clean_correct(model, x: torch.Tensor, y: torch.Tensor, device, batch: int = 512):
    keep = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            keep.append(model(x[i:i + batch].to(device)).argmax(1).cpu() == y[i:i + batch])
    ok = torch.cat(keep)
    return x[ok], y[ok]


def time_attack(model, x, y, threat, *, attack: str, args: dict, batch_size: int, device, seed: int = 0):
    """Seconds to attack all of ``x`` in batches of ``batch_size``, and the robust accuracy."""
    from benchmark.attacks import run_attack

    robust = 0
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        adv = run_attack(model, xb, yb, threat, seed=seed, attack=attack, **args)
        with torch.no_grad():
            robust += int((model(adv).argmax(1) == yb).sum())
    _sync(device)
    return time.perf_counter() - t0, robust / max(1, len(x))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="cifar10-linf")
    ap.add_argument("--model", default="autoattack-resnet18")
    ap.add_argument("--data-dir", default=None, help="dataset root (else $SHIFTBENCH_DATA)")
    ap.add_argument("--synthetic", action="store_true", help="uniform-noise images labelled by the model")
    ap.add_argument("--n", type=int, default=1000, help="test images (before keeping the clean-correct ones)")
    ap.add_argument("--aa-n", type=int, default=None, help="images for AutoAttack (default: all of them)")
    ap.add_argument("--batch-sizes", default="128,256,512")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args(argv)

    import benchmark  # noqa: F401  (aliases pyautoattack as autoattack)
    from benchmark.data import datasets
    from benchmark.models.load import allowed_code, load_model
    from benchmark.registry import DEFAULT_REGISTRY, Registry

    device = torch.device(a.device)
    reg = Registry(DEFAULT_REGISTRY)
    suite = reg.suite(a.suite)
    threat = reg.threat(suite.id_threat)
    # the suite's allow_code opt-in (cifar10-linf allows the ResNet-18 inside pyautoattack's wheel)
    model = load_model(reg.model(a.model), reg, allow_code=allowed_code(suite.allow_code)).to(device).eval()
    if a.synthetic:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(a.n, 3, 32, 32, generator=g)
        with torch.no_grad():
            y = torch.cat([model(x[i:i + 256].to(device)).argmax(1).cpu() for i in range(0, a.n, 256)])
    else:
        x, y = datasets.load_id(reg.model(a.model).dataset, "test", a.data_dir)
        x, y = x[:a.n], y[:a.n]
    x, y = clean_correct(model, x, y, device)
    n_aa = min(len(x), a.aa_n or len(x))
    print(f"{a.model} on {a.suite} ID threat {threat.id} ({threat.norm} eps={threat.eps:g}), device "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"{len(x)} clean-correct images ({n_aa} for AutoAttack){', synthetic' if a.synthetic else ''}")
    rows = []
    for bs in [int(b) for b in a.batch_sizes.split(",")]:
        s_fast, r_fast = time_attack(model, x, y, threat, attack=threat.attack, args=dict(threat.attack_args),
                                     batch_size=bs, device=device)
        rows.append((threat.attack, bs, len(x), s_fast, r_fast))
        s_aa, r_aa = time_attack(model, x[:n_aa], y[:n_aa], threat, attack="autoattack",
                                 args={"version": "standard", "batch_size": bs}, batch_size=bs, device=device)
        rows.append(("autoattack", bs, n_aa, s_aa, r_aa))
    print("| attack | batch | images | s | images/s | robust % of clean-correct |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, bs, n, s, r in rows:
        print(f"| {name} | {bs} | {n} | {s:.1f} | {n / s:.1f} | {100 * r:.1f} |")
    best = {name: max(n / s for nm, _, n, s, _ in rows if nm == name) for name in {r[0] for r in rows}}
    print(f"best images/s: {threat.attack} {best[threat.attack]:.1f}, autoattack {best['autoattack']:.1f}; "
          f"ratio {best[threat.attack] / best['autoattack']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
