"""Benchmark: what seeding each row's draws costs in a randomized defense (benchmark/models/defenses.py).

A randomized model draws every row's noise from a generator seeded by that row's pixels, so it is
seeded once per row per call: thousands of times in an attack step of EOT, and tens of thousands
in a Square escalation.  ``torch.manual_seed`` seeds every backend, and on a machine where CUDA
(or XPU, MTIA) is not initialised it queues the seed for each of them with the formatted Python
stack; the harness seeds the CPU generator alone.  This times the defense's query, judgement and
EOT calls both ways, side by side in one process, alternating which goes first, checks that they
give the same numbers, and prints the ratio.  The queued stack makes ``torch.manual_seed``'s cost
grow with the depth of the caller's Python stack: ``--stack-depth`` calls from that many frames
down (pytest runs a test about 60 deep)::

    .venv/bin/python perf/randomized_draws.py                 # mlp-noise-0.4-def-noise, 200 ID images
    .venv/bin/python perf/randomized_draws.py --stack-depth 60 --repeats 3
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mlp-noise-0.4-def-noise")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--stack-depth", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from benchmark.data import datasets
    from benchmark.models import defenses
    from benchmark.models.load import load_model
    from benchmark.registry import layered

    torch.set_num_threads(1)
    reg = layered()
    model = load_model(reg.model(args.model), reg)
    assert isinstance(model, defenses.Randomized), f"{args.model} is not a randomized model"
    x = datasets.load_id("digits", "test")[0][:args.n]

    @contextlib.contextmanager
    def every_backend(seed: int, device: torch.device):  # the seeding the harness had before
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    def calls(depth: int = args.stack_depth):
        if depth > 0:
            return calls(depth - 1)
        with torch.no_grad():
            q, j = model(x), model.decision_logits(x)
        e = model.eot_logits(x.clone().requires_grad_(True))
        return q, j, e.detach()

    ways = {"CPU generator (harness)": defenses.seeded, "torch.manual_seed": every_backend}
    seconds = {k: 0.0 for k in ways}
    outputs = {}
    original = defenses.seeded
    try:
        for r in range(args.repeats):
            for name in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                defenses.seeded = ways[name]
                t0 = time.perf_counter()
                outputs[name] = calls()
                seconds[name] += time.perf_counter() - t0
    finally:
        defenses.seeded = original
    a, b = outputs.values()
    same = all(torch.equal(u, v) for u, v in zip(a, b))
    rows = args.n * (2 * model.draws + model.eot) * args.repeats
    print(f"{args.model}: {args.n} images, query + judgement ({model.draws} draws) + EOT ({model.eot} draws), "
          f"{args.repeats} repeats, called {args.stack_depth} frames deeper")
    for name, s in seconds.items():
        print(f"  {name:<26} {s:8.2f} s  ({1e6 * s / rows:.1f} us per drawn row)")
    h, o = seconds.values()
    print(f"  ratio torch.manual_seed / harness: {o / h:.1f}x; identical outputs: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
