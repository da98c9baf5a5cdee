"""Benchmark: defenses against AutoAttack computed directly, and what a naive attack would report.

For every defended model of the ``digits-defenses`` suite, and for the same defenses written as a
user would in their own package (a module this script writes to a temporary folder and imports
behind the code opt-in), on the same clean-correct ID images, side by side in one process:

- **ours**: the evaluator as it stores a cell (``attack_outcome`` with the trust checks): EOT
  for a randomized model, BPDA through a transform, verdicts by the majority of draws;
- **attack only**: the same without the trust checks' escalation;
- **naive**: the attack a defense's own paper might have run: one draw per gradient (no EOT), or
  the transform's own gradient (no BPDA), no checks;
- **AutoAttack**: pyautoattack run directly on the same model: ``rand`` (APGD-CE and APGD-DLR,
  20 EOT samples each) for a randomized model, ``standard`` through the BPDA backward pass for a
  transform; its images are judged by the same rule as ours.

The gap is ours minus AutoAttack, in points (positive: ours missed adversarial examples); the
targets are those of a randomized model's calibration (mean <= 0.5, max <= 2 points).  Then the
user's package is evaluated twice with ``benchmark.evaluate`` (the numbers must repeat) and once
with ``benchmark.regress`` against the zoo entry's stored baseline (the same defense, so nothing
may be lost or gained), and every twin's stored cells are compared with the digits suite's::

    .venv/bin/python perf/defense_calibration.py [--n 600] [--threats digits-linf,digits-l2]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

USER_PACKAGE = '''
"""A defense author's own package: the models as they would write them."""
import torch
from torch import nn

from benchmark.models import architectures

WEIGHTS = {weights!r}


class NoisyMLP(nn.Module):
    """Noise injection: Gaussian noise (sigma 0.4) on the input at inference."""

    shiftbench_randomized = {{"eot": 20, "draws": 5}}  # how it tells the evaluator

    def __init__(self, sigma: float = 0.4):
        super().__init__()
        self.net = architectures.build("mlp", hidden=96, depth=2)
        self.net.load_state_dict(torch.load(WEIGHTS["noise"], weights_only=True))
        self.sigma = sigma

    def forward(self, x):
        return self.net(x + self.sigma * torch.randn_like(x))


def binarize(x):
    """The input quantisation: a threshold at 0.5 (not differentiable)."""
    return (x > 0.5).to(x.dtype)


def noisy_mlp():
    return NoisyMLP().eval()


def binarized_mlp():
    net = architectures.build("mlp", hidden=96, depth=2)
    net.load_state_dict(torch.load(WEIGHTS["standard"], weights_only=True))
    net.shiftbench_input_transform = {{"kind": "python", "function": "userdefense.models:binarize", "bpda": "identity"}}
    return net.eval()
'''


def reference(model, x, y, threat, seed: int) -> float:
    """AutoAttack run directly (rand for a randomized model), judged by the model's verdict rule."""
    from pyautoattack import AutoAttack

    from benchmark.attacks.autoattack import reset_global_counter
    from benchmark.models.defenses import judge, randomization

    version = "rand" if randomization(model) is not None else "standard"
    reset_global_counter()
    aa = AutoAttack(model, norm=threat.norm, eps=float(threat.eps), version=version, seed=seed, device="cpu")
    aa.verbose = False
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=500, state_path=None)
    return float((judge(model, x_adv).argmax(1) == y).float().sum())


def naive_twin(model):
    """The same defense without what accounts for it: one draw per gradient, the transform's own gradient."""
    import dataclasses  # noqa: F401

    from benchmark.models.defenses import Randomized, Transformed

    if isinstance(model, Randomized):
        return Randomized(naive_twin(model.inner), eot=1, draws=model.draws, seed=model.seed)
    if isinstance(model, Transformed):
        return Transformed(model.inner, model.transform, "exact", None, model.name)
    if hasattr(model, "inner"):
        return type(model)(naive_twin(model.inner))
    return model


def compare(name: str, model, x, y, threats, seed: int) -> list[dict]:
    from benchmark.run.evaluate import attack_outcome

    rows = []
    for t in threats:
        t0 = time.perf_counter()
        ours = attack_outcome(model, x, y, t, seed=seed, checks=True)
        t1 = time.perf_counter()
        alone = attack_outcome(model, x, y, t, seed=seed, checks=False)
        naive = attack_outcome(naive_twin(model), x, y, t, seed=seed, checks=False)
        ok = ours.clean_correct.astype(bool)
        import torch

        idx = torch.from_numpy(ok.nonzero()[0])
        t2 = time.perf_counter()
        aa = reference(model, x[idx], y[idx], t, seed)
        t3 = time.perf_counter()
        n = len(y)
        rows.append({"model": name, "threat": t.id, "n": n, "clean": ok.mean(), "ours": ours.robust_correct.sum() / n,
                     "alone": alone.robust_correct.sum() / n, "naive": naive.robust_correct.sum() / n,
                     "aa": aa / n, "ours_s": t1 - t0, "aa_s": t3 - t2,
                     "flags": [k for k, v in ours.checks.items() if isinstance(v, dict) and v.get("ok") is False]})
        r = rows[-1]
        print(f"  {name} {t.id}: clean {100 * r['clean']:.1f}  ours {100 * r['ours']:.1f}  attack only "
              f"{100 * r['alone']:.1f}  naive {100 * r['naive']:.1f}  AutoAttack {100 * r['aa']:.1f}  "
              f"gap {100 * (r['ours'] - r['aa']):+.2f} pp  ({r['ours_s']:.0f} s vs {r['aa_s']:.0f} s)", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | threat | n | clean % | ours % | attack only % | naive % | AutoAttack % | gap (pp) | flags | "
           "ours s | AA s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['threat']} | {r['n']} | {100 * r['clean']:.1f} | {100 * r['ours']:.1f} | "
                   f"{100 * r['alone']:.1f} | {100 * r['naive']:.1f} | {100 * r['aa']:.1f} | "
                   f"{100 * (r['ours'] - r['aa']):+.2f} | {', '.join(r['flags']) or '-'} | {r['ours_s']:.0f} | "
                   f"{r['aa_s']:.0f} |")
    gaps = [100 * (r["ours"] - r["aa"]) for r in rows]
    out.append("")
    out.append(f"mean gap {sum(gaps) / len(gaps):+.2f} pp (target <= 0.5), max gap {max(gaps):+.2f} pp (target <= 2)"
               f": targets {'met' if sum(gaps) / len(gaps) <= 0.5 and max(gaps) <= 2 else 'NOT met'}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--threats", default="digits-linf,digits-l2")
    ap.add_argument("--models", default=None, help="defended zoo models (default: all of digits-defenses; "
                    "'none': only --variants)")
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--skip-user", action="store_true", help="only the zoo entries")
    ap.add_argument("--variants", default="", help="more randomized models, not in the zoo: comma-separated "
                    "MODEL:SIGMA (a zoo network with Gaussian noise of SIGMA at inference, EOT 20, 5 draws)")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()

    import torch

    from benchmark import evaluate, regress
    from benchmark.data import datasets
    from benchmark.models.defenses import defend
    from benchmark.models.load import code_opt_in, load_model
    from benchmark.registry import Registry, filter_ids
    from benchmark.report.defenses import defended, twin_of
    from benchmark.run import store
    from benchmark.run.plan import plan_suite

    torch.set_num_threads(1)
    reg = Registry(ROOT / "registry")
    suite = reg.suite("digits-defenses")
    threats = [reg.threat(t) for t in args.threats.split(",")]
    x, y = datasets.load_id("digits", "test")
    idx = torch.from_numpy(datasets.subset(args.n, len(x), suite.seed))
    x, y = x[idx], y[idx]
    models = [m for m in filter_ids(reg.suite_models(suite), args.models) if defended(m)]
    rows = []
    print(f"zoo defenses ({len(models)}), n={args.n}:", flush=True)
    for spec in models:
        rows += compare(spec.id, load_model(spec, reg), x, y, threats, suite.seed)

    for item in filter(None, args.variants.split(",")):
        mid, _, sigma = item.partition(":")
        net = load_model(reg.model(mid), reg)
        model = defend(net, randomized={"eot": 20, "draws": 5},
                       input_transform={"kind": "gaussian-noise", "sigma": float(sigma)})
        rows += compare(f"{mid} + noise {sigma}", model, x, y, threats, suite.seed)

    if not args.skip_user:
        tmp = Path(tempfile.mkdtemp(prefix="userdefense-"))
        pkg = tmp / "userdefense"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        weights = {"noise": str(reg.weights_path(reg.model("mlp-noise-0.4"))),
                   "standard": str(reg.weights_path(reg.model("mlp-standard")))}
        (pkg / "models.py").write_text(textwrap.dedent(USER_PACKAGE.format(weights=weights)))
        sys.path.insert(0, str(tmp))
        from userdefense import models as user  # noqa: E402

        print("a user's package (userdefense.models), through benchmark.evaluate:", flush=True)
        with code_opt_in(True):
            for name, factory in (("userdefense:noisy_mlp", user.noisy_mlp),
                                  ("userdefense:binarized_mlp", user.binarized_mlp)):
                frames = [evaluate(factory(), suite="digits-defenses", shifts=[], threats=[t.id for t in threats[1:]],
                                   allow_code=True) for _ in range(2)]
                same = frames[0][["clean_acc", "robust_acc"]].equals(frames[1][["clean_acc", "robust_acc"]])
                print(f"  {name}: evaluate twice -> identical: {same}")
                for r in frames[0].itertuples():
                    print(f"    {r.threat}: clean {100 * r.clean_acc:.1f}  robust {100 * r.robust_acc:.1f}  "
                          f"flags {r.flags or '-'}")
                rows += compare(name, defend(factory(), allow_code=True), x, y, threats, suite.seed)
            print("  regress of the user's noise-injection model against the zoo entry's stored baseline:")
            from benchmark.workflows.regress import export_baseline

            base = export_baseline(reg, "digits-defenses", "mlp-noise-0.4-def-noise", args.results)
            res = regress("python:userdefense.models:noisy_mlp", base, registry=reg, allow_code=True)
            print(textwrap.indent(res.cells[["data", "threat", "robust_baseline", "robust_now", "lost", "gained",
                                             "verdict"]].to_string(index=False), "    "))

    print("\ntwins: stored cells of digits-defenses against the same cells of digits")
    plans = {s: {(c.model.id, c.data_name, c.threat.id): c for c in plan_suite(reg, s)} for s in ("digits", "digits-defenses")}
    twins = {t.id: t for t in (twin_of(spec, reg.suite_models(suite)) for spec in models) if t is not None}
    for twin in twins.values():
        for key, c in plans["digits-defenses"].items():
            if key[0] != twin.id or key not in plans["digits"]:
                continue
            a = store.read_json(Path(args.results) / "digits-defenses" / c.filename)
            b = store.read_json(Path(args.results) / "digits" / plans["digits"][key].filename)
            same = all(a[k] == b[k] for k in ("clean_correct", "robust_correct"))
            print(f"  {twin.id} {key[1]} {key[2]}: per-example outcomes identical: {same}")
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
