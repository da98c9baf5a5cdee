"""Our PPGD, LPA and StAdv beside the original implementation (``perceptual-advex`` 0.2.6, the code
OODRobustBench runs), at the reference's evaluation settings, on the same images and the same
LPIPS network: robust accuracy (%) and wall seconds per model.

Columns per threat: ours at the digits entry's settings (the attack alone, as a cell runs it
before its trust checks), ours at the entry's stronger run (what ``shiftbench calibrate`` compares
with), and the reference's attack (PPGD: 40 iterations of 5 conjugate-gradient steps, h = 1e-3;
LPA: 5 rounds of 40, h = 0.1; StAdv: 100 Adam steps at learning rate 0.01, the reference's
CIFAR-10 count) at the entry's budget.  The reference's LPIPS is its ``normalize_flatten_features``
over our digits feature network's activations (the same distance as ours: printed as the largest
difference over the attacked images).  An example counts as broken only if the returned image
fools the model and, for PPGD and LPA, lies inside the LPIPS ball by our measure.  ReColor is not
compared: the reference's ReColorAdv acts on CIELUV colour and the digits are grey (our digits
ReColor is a lightness curve, docs/threats.md).

An optional dependency of this script only, never of the package.  ``perceptual-advex`` pins
packages our stack cannot take, so it installs without its dependencies, with the few modules its
imports reach::

    .venv/bin/python -m pip install --no-deps perceptual-advex==0.2.6 robustness==1.2.1.post2 \\
        cox==0.2 dill tensorboardX protobuf six recoloradv==0.0.1 advex-uar==0.0.6.dev0
    .venv/bin/python perf/reference_perceptual.py                      # 4 models, 200 images
    .venv/bin/python perf/reference_perceptual.py --models cnn-pgd-0.10 --threats digits-lpa

and one import shim, set up here: ``torchvision.models.utils.load_state_dict_from_url`` (removed
from torchvision) is ``torch.hub.load_state_dict_from_url``.
"""
from __future__ import annotations

import sys
import time
import types
import warnings

import torch

MODELS = "cnn-pgd-0.10,lenet-trades-3,mlp-pgd-0.05,cnn-standard"
THREATS = ("digits-ppgd", "digits-lpa", "digits-stadv")
INSTALL = ("python -m pip install --no-deps perceptual-advex==0.2.6 robustness==1.2.1.post2 cox==0.2 dill "
           "tensorboardX protobuf six recoloradv==0.0.1 advex-uar==0.0.6.dev0")


def import_reference():
    """``(perceptual_attacks, attacks, distances)`` of ``perceptual-advex``, with the import shim;
    SystemExit with the install command when it is missing."""
    if "torchvision.models.utils" not in sys.modules:
        shim = types.ModuleType("torchvision.models.utils")
        shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules["torchvision.models.utils"] = shim
    try:
        from perceptual_advex import attacks, distances, perceptual_attacks
    except ImportError as e:
        raise SystemExit(f"perceptual-advex is not importable ({e}); install it beside the package with:\n"
                         f"  {INSTALL}") from e
    return perceptual_attacks, attacks, distances


class ReferenceFeatures(torch.nn.Module):
    """Our LPIPS feature network as the reference's ``FeatureModel``: ``features(x)`` is the tuple
    of tapped activations its ``normalize_flatten_features`` turns into the LPIPS embedding."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.net.activations(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def reference_attack(name: str, threat, model, lpips_model, pa, at):
    bound = float(threat.params["bound"])
    if name == "digits-ppgd":
        return pa.PerceptualPGDAttack(model, bound=bound, num_iterations=40, cg_iterations=5, h=1e-3,
                                      lpips_model=lpips_model, projection="newtons")
    if name == "digits-lpa":
        return pa.LagrangePerceptualAttack(model, bound=bound, num_iterations=40, binary_steps=5, h=0.1,
                                           lpips_model=lpips_model, projection="newtons")
    if name == "digits-stadv":
        return at.StAdvAttack(model, bound=bound, num_iterations=100)
    raise SystemExit(f"no reference attack for {name!r}; choose from {', '.join(THREATS)}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from benchmark.attacks import run_attack
    from benchmark.attacks.lpips import load_network, normalized_features
    from benchmark.data import datasets
    from benchmark.registry import Registry, default_registry_root
    from benchmark.run.trust import stronger
    from threat_settings import attackable  # perf/, beside this script

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=MODELS, help=f"comma-separated model ids (default {MODELS})")
    p.add_argument("--threats", default=",".join(THREATS), help="comma-separated, of " + ", ".join(THREATS))
    p.add_argument("--n", type=int, default=200, help="test images, datasets.subset(n, 600, 0) (default 200)")
    p.add_argument("--registry", default=str(default_registry_root()))
    a = p.parse_args(argv)
    pa, at, dist = import_reference()
    torch.set_num_threads(1)
    reg = Registry(a.registry)
    x_all, y_all = datasets.load_id("digits", "test")
    idx = torch.from_numpy(datasets.subset(a.n, len(x_all), 0))
    x, y = x_all[idx], y_all[idx]
    # each threat's entry and LPIPS network (None for StAdv), loaded once for every model
    threats = {}
    for tid in [t.strip() for t in a.threats.split(",") if t.strip()]:
        threat = reg.threat(tid)
        net = load_network(threat.params["network"], threat.path).eval() if "network" in threat.params else None
        threats[tid] = threat, net
    print("robust accuracy % (wall s) on", a.n, "test images; ours: the attack at the entry's settings, its stronger "
          "run; the reference: perceptual-advex 0.2.6 at its evaluation settings\n")
    print("| model | threat | ours | ours, stronger run | reference |")
    print("|---|---|---:|---:|---:|")
    for mid in [m.strip() for m in a.models.split(",") if m.strip()]:
        model, _, xc, yc, index = attackable(reg, mid, x, y)
        for tid, (threat, net) in threats.items():
            with torch.no_grad():
                f0 = normalized_features(net, xc) if net is not None else None

            def robust(xa: torch.Tensor) -> float:
                with torch.no_grad():
                    keep = model(xa).argmax(1) == yc
                    if net is not None:  # outside the LPIPS ball counts as not broken
                        keep |= (normalized_features(net, xa) - f0).norm(dim=1) > float(threat.params["bound"]) + 1e-5
                return 100 * keep.sum().item() / a.n

            row = [mid, tid]
            for settings in (dict(threat.attack_args), stronger(threat)[1]):
                t0 = time.perf_counter()
                xa = run_attack(model, xc, yc, threat, seed=0, index=index, **settings)
                row.append(f"{robust(xa):.1f} ({time.perf_counter() - t0:.0f} s)")
            lp = ReferenceFeatures(net).eval() if net is not None else None
            if lp is not None:  # the same embedding through the reference's code, on the stronger run's images
                with torch.no_grad():
                    same = (dist.normalize_flatten_features(lp.features(xa)) - normalized_features(net, xa)).abs().max()
                if same > 1e-6:
                    raise SystemExit(f"{tid}: the reference's LPIPS embedding differs from ours by {same:.2e}")
            torch.manual_seed(0)  # the reference's random start, N(0, 0.01)
            t0 = time.perf_counter()
            ref = reference_attack(tid, threat, model, lp, pa, at)
            with warnings.catch_warnings():  # the reference's own deprecation warnings (grid_sample, ...)
                warnings.simplefilter("ignore")
                xr = ref(xc, yc).detach()
            row.append(f"{robust(xr):.1f} ({time.perf_counter() - t0:.0f} s)")
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
