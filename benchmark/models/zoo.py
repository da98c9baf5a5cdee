"""The digits model zoo: deterministic (re)training of every ``builtin:<arch>`` entry with a recipe.

    shiftbench zoo train [--models PAT] [--check]

Each model entry under ``registry/models/digits/`` carries its own ``train:`` recipe, so the
weights that ship in the repo can be rebuilt and checked by anyone: ``--check`` retrains and
compares the sha256 without writing.  Training is made reproducible with fixed seeds, a single
thread, ``torch.use_deterministic_algorithms(True)`` and a seeded data order.  Bit-exact bytes are
only promised for the same torch build and CPU kind: when a ``--check`` hash differs, the largest
parameter difference to the shipped weights tells float drift (tiny) from a real change.
The digits LPIPS feature network of the perceptual threats (``lpips-digits-alexnet``, not a zoo
model) is trained and checked the same way; its sha256 lives in the threat entries naming it.

Recipe keys (``train:`` mapping of an entry):

=============  ===========================================================================
method         ``standard`` | ``pgd`` (Madry PGD-AT) | ``trades`` | ``noise`` (Gaussian aug.)
epochs         passes over the 1,197 training images
lr             Adam learning rate (cosine-decayed to 0 over the run)
seed           seeds initialisation, data order, attack starts and noise
batch_size     default 64
weight_decay   default 0
eps            Linf budget of the inner maximisation (pgd, trades)
steps          inner attack steps (default 7); step_size defaults to 2.5 * eps / steps
warmup         epochs over which eps ramps linearly from 0 (default 0)
beta           TRADES trade-off weight
sigma          std of the Gaussian noise added to inputs (noise)
subset         train on only the first n images of the seeded order (spreads accuracies)
=============  ===========================================================================
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from . import architectures
from ..registry import ModelSpec, Registry, RegistryError, filter_ids, sha256_file

METHODS = ("standard", "pgd", "trades", "noise")
RECIPE_KEYS = {
    "method", "epochs", "lr", "seed", "batch_size", "weight_decay", "eps", "steps", "step_size",
    "warmup", "beta", "sigma", "subset",
}
NEEDS = {"pgd": ("eps",), "trades": ("eps", "beta"), "noise": ("sigma",), "standard": ()}


# --------------------------------------------------------------------------- determinism
@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Single thread, deterministic kernels, seeded global RNG; restores the previous settings."""
    threads = torch.get_num_threads()
    was_det = torch.are_deterministic_algorithms_enabled()
    rng = torch.get_rng_state()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_det)
        torch.set_rng_state(rng)


def check_recipe(recipe: Mapping[str, Any], where: str = "<recipe>") -> dict[str, Any]:
    """Validate a ``train:`` mapping and fill in defaults; errors name the entry and the key."""
    r = dict(recipe)
    unknown = set(r) - RECIPE_KEYS
    if unknown:
        raise RegistryError(where, f"train.{sorted(unknown)[0]}", f"unknown recipe key; allowed: {', '.join(sorted(RECIPE_KEYS))}")
    method = r.get("method")
    if method not in METHODS:
        raise RegistryError(where, "train.method", f"expected one of {', '.join(METHODS)}, got {method!r}")
    for key in ("epochs", "lr", "seed"):
        if key not in r:
            raise RegistryError(where, f"train.{key}", "missing required recipe key")
    for key in NEEDS[method]:
        if key not in r:
            raise RegistryError(where, f"train.{key}", f"method '{method}' needs this key")
    r.setdefault("batch_size", 64)
    r.setdefault("weight_decay", 0.0)
    r.setdefault("steps", 7)
    r.setdefault("warmup", 0)
    if method in ("pgd", "trades") and not 0 < float(r["eps"]) <= 1:
        raise RegistryError(where, "train.eps", f"Linf budget must be in (0, 1] for images in [0, 1], got {r['eps']}")
    return r


# --------------------------------------------------------------------------- inner maximisations
def trades_adversary(model: nn.Module, x: torch.Tensor, eps: float, steps: int, step_size: float,
                     gen: torch.Generator) -> torch.Tensor:
    """TRADES inner max (Zhang et al. 2019): maximise KL(f(x') || f(x)) over the Linf ball."""
    from ..attacks._lp import project

    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    adv = (x + 0.001 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.kl_div(F.log_softmax(model(adv), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)
        adv = project(adv.detach() + step_size * grad.sign(), x, eps, "Linf")
    return adv.detach()


# --------------------------------------------------------------------------- training
def train_model(arch: str, arch_args: Mapping[str, Any], recipe: Mapping[str, Any],
                x: torch.Tensor, y: torch.Tensor, *, progress: Any = None,
                build: Callable[[], nn.Module] | None = None) -> nn.Module:
    """Train one model from scratch; same inputs give the same weights bit for bit.  ``build``
    makes the network instead of the digits architecture ``arch`` (the LPIPS feature network)."""
    from ..attacks.pgd import pgd

    r = check_recipe(recipe)
    seed = int(r["seed"])
    with deterministic(seed):
        model = build() if build is not None else architectures.build(arch, **dict(arch_args))
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(x), generator=gen)
        if r.get("subset"):
            keep = order[: int(r["subset"])]
            x, y = x[keep], y[keep]
        opt = torch.optim.Adam(model.parameters(), lr=float(r["lr"]), weight_decay=float(r["weight_decay"]))
        epochs, bs = int(r["epochs"]), int(r["batch_size"])
        n_batches = math.ceil(len(x) / bs)
        total = epochs * n_batches
        step = 0
        for epoch in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            ramp = min(1.0, (epoch + 1) / r["warmup"]) if r["warmup"] else 1.0
            for b in range(n_batches):
                idx = perm[b * bs: (b + 1) * bs]
                xb, yb = x[idx], y[idx]
                for group in opt.param_groups:  # cosine decay, per step
                    group["lr"] = float(r["lr"]) * 0.5 * (1 + math.cos(math.pi * step / total))
                model.train()
                loss = _loss(model, xb, yb, r, ramp, gen, seed * 100_003 + step, pgd)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            if progress is not None:
                progress.update(1)
    return model.eval()


def _loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, r: Mapping[str, Any], ramp: float,
          gen: torch.Generator, attack_seed: int, pgd: Any) -> torch.Tensor:
    method = r["method"]
    if method == "standard":
        return F.cross_entropy(model(xb), yb)
    if method == "noise":
        noisy = (xb + float(r["sigma"]) * torch.randn(xb.shape, generator=gen)).clamp(0, 1)
        return F.cross_entropy(model(noisy), yb)
    eps = float(r["eps"]) * ramp
    steps = int(r["steps"])
    step_size = float(r.get("step_size") or 2.5 * eps / steps)
    if method == "pgd":
        adv = pgd(model, xb, yb, eps=eps, norm="Linf", steps=steps, step_size=step_size, restarts=1,
                  seed=attack_seed, early_stop=False)
        return F.cross_entropy(model(adv), yb)
    # trades
    adv = trades_adversary(model, xb, eps, steps, step_size, gen)
    logits = model(xb)
    kl = F.kl_div(F.log_softmax(model(adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
    return F.cross_entropy(logits, yb) + float(r["beta"]) * kl


def state_bytes(model: nn.Module) -> bytes:
    """The serialised state dict.  Always saved to memory first: torch.save names the archive
    after the target file, so saving to memory keeps the bytes independent of the path."""
    buf = io.BytesIO()
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def set_sha256(entry_path: Path, sha: str) -> None:
    """Rewrite only the ``sha256:`` line of an entry, keeping its order, comments and layout."""
    text = entry_path.read_text(encoding="utf-8")
    line = yaml.safe_dump({"sha256": sha}).strip()  # quoted when YAML would read it as a number
    new, n = re.subn(r"(?m)^sha256:.*$", lambda _: line, text)
    if n != 1:
        raise RegistryError(entry_path, "sha256", f"expected exactly one top-level 'sha256:' line, found {n}")
    entry_path.write_text(new, encoding="utf-8")


def trainable(registry: Registry, patterns: str | None = None) -> list[ModelSpec]:
    """Registry models the zoo can rebuild: builtin source with a ``train:`` recipe."""
    specs = [m for m in registry.entries["models"].values() if m.source_kind == "builtin" and m.train]
    return sorted(filter_ids(specs, patterns), key=lambda m: m.id)


def _max_param_diff(model: nn.Module, path: Path) -> float | None:
    if not path.is_file():
        return None
    old = torch.load(path, map_location="cpu", weights_only=True)
    new = model.state_dict()
    if old.keys() != new.keys():
        return math.inf
    return max(float((old[k].float() - new[k].float()).abs().max()) for k in new)


# --------------------------------------------------------------------------- LPIPS feature network
@dataclass(frozen=True)
class LpipsNet:
    """The digits LPIPS feature network (``attacks.lpips``), trained like a zoo model but not
    part of the zoo: perceptual threats name its weights file in ``params.network``."""

    id: str
    arch: str  # an attacks.lpips.ARCHS name
    weights: str  # relative to the registry root
    train: Mapping[str, Any]


LPIPS_NETS = (
    LpipsNet("lpips-digits-alexnet", "digits-alexnet", "weights/lpips/digits-alexnet.pt",
             {"method": "standard", "epochs": 20, "lr": 0.003, "seed": 0}),
)


def set_network_sha256(registry: Registry, weights: str, sha: str) -> list[Path]:
    """Rewrite ``sha256:`` inside ``params.network`` of every threat entry naming ``weights``."""
    changed = []
    for path in sorted((registry.root / "threats").rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        if not re.search(rf"(?m)^\s+weights:\s*{re.escape(weights)}\s*$", text):
            continue
        new, n = re.subn(r"(?m)^(\s+sha256:)\s*.*$", lambda m: f"{m.group(1)} {sha}", text)
        if n != 1:
            raise RegistryError(path, "params.network.sha256", f"expected exactly one nested 'sha256:' line, found {n}")
        path.write_text(new, encoding="utf-8")
        changed.append(path)
    return changed


def _named_by_a_threat(registry: Registry, net: LpipsNet) -> bool:
    """Whether a threat entry of ``registry`` uses this network (only then is it part of it)."""
    return any(isinstance(t.params.get("network"), Mapping) and t.params["network"].get("weights") == net.weights
               for t in registry.entries["threats"].values())


def _train_lpips_net(net: LpipsNet, registry: Registry, x: torch.Tensor, y: torch.Tensor, check: bool,
                     bar: Any) -> bool:
    from ..attacks import lpips

    model = train_model(net.arch, {}, net.train, x, y, progress=bar, build=lpips.ARCHS[net.arch])
    blob = state_bytes(model)
    sha = hashlib.sha256(blob).hexdigest()
    wp = registry.root / net.weights
    if check:
        shipped = sha256_file(wp) if wp.is_file() else None
        bar.write(f"{'ok  ' if sha == shipped else 'DIFF'} {net.id}: {sha[:16]}")
        return sha == shipped
    wp.parent.mkdir(parents=True, exist_ok=True)
    tmp = wp.with_suffix(".pt.tmp")
    tmp.write_bytes(blob)
    tmp.replace(wp)
    entries = set_network_sha256(registry, net.weights, sha)
    bar.write(f"wrote {net.weights} ({len(blob) // 1024} KB) sha256 {sha[:16]}; updated {len(entries)} threat entries")
    return True


# --------------------------------------------------------------------------- CLI
def main(args: Any) -> int:
    """``shiftbench zoo train``: retrain (and write, unless ``--check``) every matching entry."""
    from tqdm import tqdm

    from ..data.datasets import load_id

    registry = Registry(args.registry, check_files=False)  # weights may not exist yet
    specs = trainable(registry, getattr(args, "models", None))
    nets = [n for n in filter_ids(list(LPIPS_NETS), getattr(args, "models", None)) if _named_by_a_threat(registry, n)]
    if not specs and not nets:
        print(f"no builtin model with a 'train:' recipe matches {args.models!r} in {registry.root / 'models'}",
              file=sys.stderr)
        return 2
    for spec in specs:
        check_recipe(spec.train, spec.path)
    x, y = load_id("digits", "train")
    epochs = sum(int(s.train["epochs"]) for s in specs) + sum(int(n.train["epochs"]) for n in nets)
    mismatches = 0
    t0 = time.perf_counter()
    with tqdm(total=epochs, unit="epoch", desc="zoo", file=sys.stderr) as bar:
        for spec in specs:
            if spec.dataset != "digits":
                raise RegistryError(spec.path, "dataset", "the zoo trainer only knows the 'digits' data")
            bar.set_postfix_str(spec.id)
            model = train_model(spec.source_target, spec.arch_args, spec.train, x, y, progress=bar)
            blob = state_bytes(model)
            sha = hashlib.sha256(blob).hexdigest()
            wp = registry.weights_path(spec)
            if args.check:
                ok = sha == spec.sha256
                mismatches += not ok
                extra = ""
                if not ok:
                    diff = _max_param_diff(model, wp)
                    extra = f" (max |param diff| vs shipped weights: {diff:.3g})" if diff is not None else " (no shipped file)"
                bar.write(f"{'ok  ' if ok else 'DIFF'} {spec.id}: {sha[:16]}{extra}")
            else:
                wp.parent.mkdir(parents=True, exist_ok=True)
                tmp = wp.with_suffix(".pt.tmp")
                tmp.write_bytes(blob)
                tmp.replace(wp)
                set_sha256(Path(spec.path), sha)
                bar.write(f"wrote {wp.relative_to(registry.root) if wp.is_relative_to(registry.root) else wp} "
                          f"({len(blob) // 1024} KB) sha256 {sha[:16]}")
        for net in nets:
            bar.set_postfix_str(net.id)
            mismatches += not _train_lpips_net(net, registry, x, y, args.check, bar)
    dt = time.perf_counter() - t0
    total = len(specs) + len(nets)
    print(f"{'checked' if args.check else 'trained'} {total} models in {dt:.0f} s", file=sys.stderr)
    if args.check and mismatches:
        print(f"{mismatches} of {total} models did not reproduce their sha256 "
              "(a tiny parameter difference means another CPU/torch build, not a broken recipe)", file=sys.stderr)
        return 1
    return 0
