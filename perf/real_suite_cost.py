"""What one attacked image costs, per threat of each real suite, on the real architectures.

For each suite, one model of its zoo built with random weights (nothing is downloaded:
WideResNet-28-10 for cifar10-linf and cifar100-linf, PreAct-ResNet-18 for cifar10-l2, ResNet-50
for imagenet-linf) and wrapped so that it keeps one class by a few logits: no image is ever broken,
so every stage of every attack runs in full (the worst case, the bound `shiftbench preflight`
plans with).  Each threat's attack runs on the same ``--images`` images at 32x32 or 224x224
(perceptual threats with random LPIPS networks of the real architectures), counted pass by pass.
Per threat it prints:

* passes per attacked image, counted (forward+backward; a forward alone counts 1/3), and the
  bound preflight computes for the same settings;
* seconds per attacked image, measured;
* the ratio of the attack loop's throughput (counted passes per second) to the bare model's
  forward+backward throughput on the same batch (the attack's overhead over the physical limit;
  the perceptual threats' LPIPS network is overhead here);
* at the suite's own settings: preflight's passes per image and the seconds that take at the
  measured in-attack rate.

Seconds are CPU seconds of this process on a CPU (one torch thread by default), wall seconds on a
GPU.  ``--max-steps K`` (default 1) caps every step count of every attack so that the default run takes
a few minutes on a CPU; ``--max-steps 0`` runs the suites' own settings (hours on a CPU).

    PYTHONPATH=. .venv/bin/python perf/real_suite_cost.py                       # all four suites, 2 images
    PYTHONPATH=. .venv/bin/python perf/real_suite_cost.py --suites imagenet-linf --device cuda --images 32 --max-steps 0
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

MODELS = {  # the suites' real architectures (tests/rehearsal.py uses the same ones)
    "cifar10-linf": "rb-cifar10-Linf-Carmon2019Unlabeled",
    "cifar10-l2": "rb-cifar10-L2-Rebuffi2021Fixing_R18_cutmix_ddpm",
    "cifar100-linf": "rb-cifar100-Linf-Rebuffi2021Fixing_28_10_cutmix_ddpm",
    "imagenet-linf": "rb-imagenet-Linf-Salman2020Do_R50",
}
STEP_KEYS = ("steps", "target_steps", "polish_steps", "pre_steps", "cg_steps", "binary_steps", "targets", "grid",
             "rotations", "translations", "k", "queries", "restarts")
MARGIN = 4.0


class KeepsOneClass(torch.nn.Module):
    """The model's logits scaled to spread by about 1 on ``x`` (a random ResNet-50's spread by
    hundreds, which leaves cross-entropy without a gradient) plus ``1 + MARGIN`` on one class: it
    predicts that class for every input the attacks can make, at the cost of two elementwise ops."""

    def __init__(self, model: torch.nn.Module, n_classes: int, x: torch.Tensor, label: int = 0):
        super().__init__()
        self.model = model
        with torch.no_grad():
            z = model(x)
        self.scale = 1.0 / max(float((z.amax(1) - z.amin(1)).max()), 1e-6)
        bias = torch.zeros(n_classes, device=x.device)
        bias[label] = 1.0 + MARGIN
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale + self.bias


def capped(args: dict, cap: int) -> dict:
    """Every step count (and list of them) at most ``cap``; the settings unchanged when cap is 0."""
    if not cap:
        return dict(args)
    out = {}
    for k, v in args.items():
        if k in STEP_KEYS and isinstance(v, int):
            out[k] = min(v, cap)
        elif k in STEP_KEYS and isinstance(v, (list, tuple)):
            out[k] = [min(int(s), cap) for s in v]
        else:
            out[k] = v
    return out


def default_args(attack: str, cap: int) -> dict:
    """Settings the entry leaves at the attack's defaults, capped too (apgd-mm's 50 steps, 9 targets...)."""
    import inspect

    from benchmark.attacks import get_attack

    params = inspect.signature(get_attack(attack)).parameters
    return capped({k: p.default for k, p in params.items() if k in STEP_KEYS and p.default is not inspect._empty},
                  cap) if cap else {}


def with_networks(threat, folder: Path):
    """A perceptual threat with a random network of its architecture, pinned by sha256."""
    from benchmark.attacks import lpips
    from benchmark.registry import FrozenMap, sha256_file

    net = dict(threat.params.get("network") or {})
    if not net:
        return threat
    path = folder / f"{net['arch']}.pt"
    if not path.is_file():
        torch.manual_seed(1)
        torch.save(lpips.ARCHS[net["arch"]]().state_dict(), path)
    net.update(weights=str(path), sha256=sha256_file(path))
    net.pop("sha256_prefix", None)
    return dataclasses.replace(threat, params=FrozenMap({**threat.params, "network": FrozenMap(net)}))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """Wall time on a GPU; CPU time of this process on a CPU (comparable on a machine others load,
    with one torch thread, as perf/threat_cost.py measures)."""
    sync(device)
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def bare_rate(model, x: torch.Tensor, repeats: int) -> float:
    """Images per second of one forward+backward pass of the model on ``x``."""
    def one():
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xg).sum(), xg)

    one()
    t0 = clock(x.device)
    for _ in range(repeats):
        one()
    return repeats * len(x) / (clock(x.device) - t0)


def measure_suite(reg, suite_id: str, a, device: torch.device, folder: Path) -> list[dict]:
    from benchmark.attacks import run_attack
    from benchmark.data.datasets import NUM_CLASSES
    from benchmark.models.robustbench import build_architecture
    from benchmark.run.preflight import PassCounter, attack_cost

    suite = reg.suite(suite_id)
    spec = reg.model(a.model or MODELS[suite_id])
    classes = NUM_CLASSES[spec.dataset]
    side = 224 if spec.dataset == "imagenet" else 32
    torch.manual_seed(0)
    net = build_architecture(spec).to(device).eval()
    g = torch.Generator().manual_seed(0)
    base = torch.rand(a.images, 3, 4, 4, generator=g)  # smooth colour images, as photos are
    x = torch.nn.functional.interpolate(base, size=side, mode="bilinear", align_corners=False).to(device)
    y = torch.zeros(a.images, dtype=torch.long, device=device)
    model = KeepsOneClass(net, classes, x).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    rows = []
    for tid in [suite.id_threat, *suite.threat_shifts]:
        threat = with_networks(reg.threat(tid), folder)
        args = {**default_args(threat.attack, a.max_steps), **capped(dict(threat.attack_args), a.max_steps)}
        counter = PassCounter(model)
        rate0 = bare_rate(model, x, a.repeats)
        t0 = clock(device)
        x_adv = run_attack(counter.module, x, y, threat, seed=0, attack=threat.attack, index=torch.arange(a.images),
                           **args)
        seconds = clock(device) - t0
        rate1 = bare_rate(model, x, a.repeats)  # before and after: the machine's load moves
        with torch.no_grad():
            broken = int((model(x_adv).argmax(1) != y).sum())
        got = counter.cost(a.images)
        bound = attack_cost(threat.attack, args, classes)
        real = attack_cost(threat.attack, dict(threat.attack_args), classes)
        in_attack = got.total * a.images / seconds  # passes per second inside the attack loop
        bare = (rate0 + rate1) / 2
        rows.append({
            "suite": suite_id, "model": spec.id, "architecture": spec.architecture, "threat": tid,
            "attack": threat.attack, "settings": args, "images": a.images, "broken": broken,
            "passes_per_image": round(got.total, 2), "bound_per_image": round(bound.total, 2) if bound else None,
            "s_per_image": seconds / a.images, "attack_passes_per_s": in_attack, "bare_passes_per_s": bare,
            "ratio": in_attack / bare,
            "suite_passes_per_image": round(real.total, 1) if real else None,
            "suite_s_per_image": real.total / in_attack if real else None,
        })
        r = rows[-1]
        print(f"  {tid}: {r['passes_per_image']:.1f} passes/image (bound {r['bound_per_image']}), "
              f"{r['s_per_image']:.2f} s/image, ratio {r['ratio']:.2f}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| suite | model (random weights) | threat | attack | passes/image measured (bound) | s/image measured | "
           "attack / bare fwd+bwd throughput | passes/image at the suite's settings | s/image at the suite's settings |",
           "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        bound = f" ({r['bound_per_image']:g})" if r["bound_per_image"] is not None else ""
        sp = f"{r['suite_passes_per_image']:g}" if r["suite_passes_per_image"] is not None else "-"
        ss = f"{r['suite_s_per_image']:.1f}" if r["suite_s_per_image"] is not None else "-"
        out.append(f"| {r['suite']} | {r['model'].split('-', 3)[-1]} ({r['architecture'].split(' (')[0]}) | "
                   f"{r['threat']} | {r['attack']} | {r['passes_per_image']:g}{bound} | {r['s_per_image']:.2f} | "
                   f"{r['ratio']:.2f} | {sp} | {ss} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suites", default=",".join(MODELS))
    p.add_argument("--model", default=None, help="another model entry of the suite (one suite only)")
    p.add_argument("--images", type=int, default=2, help="images attacked per threat (one batch)")
    p.add_argument("--max-steps", type=int, default=1,
                   help="cap on every step count of every attack (0: the suites' own settings)")
    p.add_argument("--repeats", type=int, default=2, help="bare forward+backward passes timed before and after")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CPU seconds are then "
                   "comparable on a busy machine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import benchmark  # noqa: F401  (aliases pyautoattack as autoattack for robustbench)
    from benchmark.registry import Registry

    reg = Registry(check_files=False)
    device = torch.device(a.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} threads"
    print(f"device: {where}; {a.images} images per threat; steps capped at {a.max_steps or 'none (suite settings)'}",
          flush=True)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for sid in [s.strip() for s in a.suites.split(",") if s.strip()]:
            print(f"{sid} ({a.model or MODELS[sid]}):", file=sys.stderr, flush=True)
            rows += measure_suite(reg, sid, a, device, Path(tmp))
    print(table(rows))
    print(f"measured in {time.perf_counter() - t0:.0f} s (wall)")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": where, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
