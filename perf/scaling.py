"""Benchmark: cells per minute of one grid run serially, on 2 local worker processes and through a
local Ray (2 CPUs), as ratios measured in one run; then the attack cost behind docs/scaling.md's
worked estimate for the CIFAR-10 Linf suite and a 700-model zoo.

    PYTHONPATH=. .venv/bin/python perf/scaling.py                       # the default, modest grid
    PYTHONPATH=. .venv/bin/python perf/scaling.py --models 'mlp-*' --n 120
    PYTHONPATH=. .venv/bin/python perf/scaling.py --skip-grid --gpu-passes-per-s 3000   # estimate only

What is measured here: the three grid rates (each on a fresh results folder, same cells, outcomes
checked identical), the forward+backward passes apgd-mm spends per attacked image at the CIFAR
suite's settings (on a robust digits CNN, the robustness of robust CIFAR models), and this CPU's
forward+backward rate of the CIFAR-10 ResNet-18 that ships in the pyautoattack wheel.  What is
estimated: the GPU pass rate (``--gpu-passes-per-s``, no GPU here), the clean accuracy of the
zoo, and linear scaling over GPUs.  The machine's cores may be shared with other work while this
runs: the ratios are then noisy, and the output says so.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

# CIFAR-10 Linf suite image counts per model (cell n = 10,000, capped by the set's size):
# ID test 10,000; CIFAR-10.1 v6 2,000; CIFAR-10.2 test 2,000; CINIC-10 (ImageNet part, fixed subset)
# 10,000; CIFAR-10-R at most 10,000 (its size is whatever the user builds); CIFAR-10-C 15 x 5 x 10,000;
# each threat shift on the ID test set x 10,000.
CIFAR10_SET_SIZE = {"cifar10.1": 2000, "cifar10.2": 2000}


def grid_cells(reg, a):
    from benchmark.run import plan

    return plan.plan_suite(reg, "digits", models=a.models, shifts=a.shifts, threats=a.threats, n_examples=a.n)


def time_grid(cells, reg, out: Path, executor=None, workers: int = 1) -> float:
    from benchmark.run.evaluate import run_grid

    t0 = time.perf_counter()
    counts = run_grid(cells, reg, out, progress=False, executor=executor, workers=workers)
    dt = time.perf_counter() - t0
    assert counts["ran"] == len(cells), counts
    return dt


def same_outcomes(cells, a: Path, b: Path) -> bool:
    from benchmark.run import store

    return all(store.read_json(a / c.filename)["robust_correct"] == store.read_json(b / c.filename)["robust_correct"]
               for c in cells)


def _ready() -> int:
    import benchmark.run.evaluate  # noqa: F401  (what a worker imports before its first cell)

    return os.getpid()


def local_worker_start_s(workers: int = 2) -> float:
    """Seconds until ``workers`` fresh worker processes have imported torch and shiftbench."""
    from benchmark.run.executors import LocalExecutor

    ex = LocalExecutor(workers=workers)
    t0 = time.perf_counter()
    ex.start()
    try:
        ex.submit([_ready] * workers)
        pids = set()
        while len(pids) < workers:
            for _, pid in ex.wait():
                pids.add(pid)
            if len(pids) < workers:  # one worker took both: ask again
                ex.submit([_ready])
        return time.perf_counter() - t0
    finally:
        ex.close()


class PassCounter(torch.nn.Module):
    """Counts the images that go through the model with gradients on (attack steps)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x):
        if torch.is_grad_enabled():
            self.images += len(x)
        return self.model(x)


def passes_per_image(reg, model_id: str, n: int) -> tuple[float, float, int]:
    """apgd-mm at the CIFAR suite's settings (the entry's defaults: 50 CE steps, 9 targets x 20,
    polish 40) on ``n`` digits test images, Linf eps of the digits ID threat: forward+backward
    passes per attacked (clean-correct) image, and the robust fraction of those."""
    from benchmark.attacks import run_attack
    from benchmark.data import datasets
    from benchmark.models.load import load_model

    threat = reg.threat(reg.suite("digits").id_threat)
    cifar = reg.threat(reg.suite("cifar10-linf").id_threat)
    model = PassCounter(load_model(reg.model(model_id), reg))
    x, y = datasets.load_id("digits", "test")
    x, y = x[:n], y[:n]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    adv = run_attack(model, x, y, threat, seed=0, attack=cifar.attack, **dict(cifar.attack_args))
    with torch.no_grad():
        robust = float((model(adv).argmax(1) == y).float().mean())
    return model.images / len(x), robust, len(x)


def resnet18_fwd_bwd_rate(reg, batch: int = 64, reps: int = 3) -> float:
    """Images/s of forward+backward (input gradient) of the CIFAR-10 ResNet-18 on this CPU."""
    from benchmark.models.load import load_model

    # its source is code (python:pyautoattack.examples.resnet:ResNet18, inside a dependency's wheel):
    # allowed here by name, as this script asks for exactly that model
    model = load_model(reg.model("autoattack-resnet18"), reg, allow_code=("pyautoattack.examples",))
    x = torch.rand(batch, 3, 32, 32)
    y = torch.zeros(batch, dtype=torch.long)

    def step():
        xi = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xi), y).backward()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    return batch * reps / (time.perf_counter() - t0)


def cifar_images_per_model(reg) -> tuple[int, int]:
    from benchmark.run import plan

    cells = plan.plan_suite(reg, "cifar10-linf", models="autoattack-resnet18")
    return len(cells), sum(min(c.n, CIFAR10_SET_SIZE.get(c.shift_id, c.n)) for c in cells)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mlp-standard,mlp-pgd-0.10,cnn8-standard,cnn8-pgd-0.05,lenet-standard,"
                                        "lenet-pgd-0.10")
    ap.add_argument("--shifts", default="id,gaussian_noise,contrast")
    ap.add_argument("--threats", default="digits-linf,digits-l2")
    ap.add_argument("--n", type=int, default=120, help="examples per cell")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each executor, interleaved; the best counts")
    ap.add_argument("--skip-grid", action="store_true", help="only the attack cost and the estimate")
    ap.add_argument("--robust-model", default="cnn-pgd-0.10", help="digits model for the pass count")
    ap.add_argument("--pass-n", type=int, default=200, help="digits test images for the pass count")
    ap.add_argument("--gpu-passes-per-s", type=float, default=2000.0,
                    help="ESTIMATED forward+backward images/s of one GPU on a typical zoo model (WRN-28-10 "
                         "class); measure yours with perf/attack_throughput.py")
    ap.add_argument("--clean-acc", type=float, default=0.8, help="ESTIMATED share of images that are attacked")
    a = ap.parse_args(argv)

    import benchmark  # noqa: F401  (aliases pyautoattack as autoattack)
    from benchmark.registry import DEFAULT_REGISTRY, Registry

    reg = Registry(DEFAULT_REGISTRY)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at start; other processes sharing these "
          f"cores make every ratio below noisy (rerun on an idle machine for clean numbers)")
    if not a.skip_grid:
        from benchmark.run.executors import make_executor

        # one core per worker everywhere: the serial baseline too (torch's threads spin-wait badly on
        # shared cores, which would flatter the parallel rows)
        torch.set_num_threads(1)
        cells = grid_cells(reg, a)
        print(f"grid: {len(cells)} digits cells ({a.models}; {a.shifts}; {a.threats}; n={a.n})")
        import ray

        names = ("local, 1 worker (in process, 1 torch thread)", "local, 2 worker processes (1 thread each)",
                 "ray, local, 2 CPUs (1 CPU per task)")
        times: dict[str, list[float]] = {k: [] for k in names}
        ok = True
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # joined by the ray rows
        start_s = time.perf_counter() - t0
        try:
            for rep in range(a.repeats):  # interleaved, so that a burst of load elsewhere hits all three
                with tempfile.TemporaryDirectory() as tmp:
                    tmp = Path(tmp)
                    times[names[0]].append(time_grid(cells, reg, tmp / "w1", workers=1))
                    times[names[1]].append(time_grid(cells, reg, tmp / "w2", workers=2))
                    times[names[2]].append(time_grid(cells, reg, tmp / "ray", executor=make_executor("ray")))
                    ok &= same_outcomes(cells, tmp / "w1", tmp / "w2") and same_outcomes(cells, tmp / "w1", tmp / "ray")
        finally:
            ray.shutdown()
        best = {k: min(v) for k, v in times.items()}
        base = len(cells) / best[names[0]] * 60
        print(f"| executor | s (best of {a.repeats}; all) | cells/min | vs 1 worker |")
        print("|---|---:|---:|---:|")
        for name in names:
            rate = len(cells) / best[name] * 60
            print(f"| {name} | {best[name]:.1f} ({', '.join(f'{t:.1f}' for t in times[name])}) | {rate:.1f} | "
                  f"{rate / base:.2f}x |")
        print(f"(Ray's own start, not in its rows: {start_s:.1f} s; the local workers' start is in theirs: "
              f"2 fresh processes importing torch and shiftbench took {local_worker_start_s(2):.1f} s just now.) "
              f"per-example outcomes identical across the three: {ok}")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")

    # ---- attack cost (measured) and the CIFAR-10 estimate
    passes, robust, attacked = passes_per_image(reg, a.robust_model, a.pass_n)
    cpu_rate = resnet18_fwd_bwd_rate(reg)
    n_cells, images = cifar_images_per_model(reg)
    print(f"\nmeasured: apgd-mm at the cifar10-linf settings spends {passes:.0f} forward+backward passes per attacked "
          f"image ({attacked} clean-correct digits images on {a.robust_model}, {100 * robust:.0f}% of them robust)")
    print(f"measured: CIFAR-10 ResNet-18 forward+backward on this CPU: {cpu_rate:.0f} images/s "
          f"-> {passes / cpu_rate:.2f} s per attacked image")
    print(f"cifar10-linf: {n_cells} cells, {images:,} images per model (CIFAR-10-R counted at its 10,000 cap)")
    attacked_per_model = images * a.clean_acc
    gpu_s = attacked_per_model * passes / a.gpu_passes_per_s
    cpu_s = attacked_per_model * passes / cpu_rate
    print(f"estimated (clean accuracy {a.clean_acc:.0%}, GPU {a.gpu_passes_per_s:.0f} passes/s, linear scaling):")
    print(f"  one model: {cpu_s / 86400:.0f} CPU-days here, {gpu_s / 3600:.1f} GPU-hours")
    for models, gpus in ((77, 1), (77, 8), (700, 8), (700, 64)):
        print(f"  {models} models on {gpus} GPUs: {models * gpu_s / gpus / 3600:,.0f} h "
              f"({models * gpu_s / gpus / 86400:.1f} days)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
