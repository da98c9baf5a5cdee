"""LPIPS as Laidlaw et al. (ICLR 2021) use it to bound their perceptual attacks, and its networks.

The distance: run both images through a feature network, take the activations after each of its
five convolution + ReLU blocks, divide every spatial position's activation vector by its
Euclidean length (over channels) and each layer by sqrt(H W), flatten, concatenate; LPIPS is the
Euclidean distance between the two concatenations.  This is the variant of ``perceptual-advex``
(``normalize_flatten_features``): **no learned linear layer** (the original LPIPS of Zhang et al.
2018 weights each channel with learned ``lin`` layers; Laidlaw et al. drop them), so the distance
is fixed by the feature network alone.

Feature networks (``params.network.arch`` of a perceptual threat):

- ``alexnet``: torchvision's ImageNet AlexNet (the reference's ``lpips_model='alexnet'`` for
  ImageNet); weights ``alexnet-owt-7be5be79.pth`` as torchvision publishes it.
- ``cifar-alexnet``: the CIFAR-10 AlexNet the reference uses for CIFAR (``alexnet_cifar``, in
  ``perceptual-advex-checkpoints.zip`` of the perceptual-advex README); the checkpoint's
  ``model`` state dict is read (``weights_only``), its ``model.features.*`` keys used.
- ``digits-alexnet``: a five-convolution AlexNet-shaped network for the 16x16 digits, trained by
  ``shiftbench zoo train`` (standard training, deterministic) and shipped in the repository.

Nothing is downloaded: the weights file is looked up relative to the registry root of the threat
entry, then under ``$SHIFTBENCH_MODELS`` (default ``./models``), and checked against the entry's
sha256 before ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import sha256_file
from . import batching
from .batching import in_micro_batches

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIGITS_MEAN, DIGITS_STD = 0.3, 0.4  # as the digits zoo normalises its inputs
TAPS = (1, 4, 7, 9, 11)  # the ReLU after each of AlexNet's five convolutions in ``features``
NETWORK_KEYS = ("arch", "weights", "sha256", "sha256_prefix", "source")


class FeatureNet(nn.Module):
    """An AlexNet-shaped network: ``features`` (13 modules, ReLUs at :data:`TAPS`) and a
    classifier; inputs in [0, 1], normalised inside."""

    def __init__(self, features: nn.Sequential, classifier: nn.Module, mean, std):
        super().__init__()
        self.features_seq = features
        self.classifier = classifier
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features_seq):
            h = layer(h)
            if i in TAPS:
                out.append(h)
            if i == TAPS[-1]:  # the pooling after the last tap is unused, and too big for 32x32 inputs
                break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - self.mean) / self.std
        return self.classifier(self.features_seq(h))


def _alexnet_features(c_in: int, widths: tuple[int, ...], first_stride: int) -> nn.Sequential:
    c1, c2, c3, c4, c5 = widths
    return nn.Sequential(
        nn.Conv2d(c_in, c1, 3, stride=first_stride, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    )


def digits_alexnet() -> FeatureNet:
    """For 1x16x16 digits: the CIFAR AlexNet's layout (first convolution stride 2) with 16, 32,
    32, 32, 32 channels, tapped at 8, 4, 2, 2, 2 pixels; about 34K weights.  Stride 2 makes it
    4x cheaper than stride 1 (the perceptual attacks evaluate it ~20 times per step)."""
    feats = _alexnet_features(1, (16, 32, 32, 32, 32), 2)
    head = nn.Sequential(nn.Flatten(), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    return FeatureNet(feats, head, DIGITS_MEAN, DIGITS_STD)


def cifar_alexnet() -> FeatureNet:
    """The layout of perceptual-advex's ``CifarAlexNet`` (64, 192, 384, 256, 256 channels, first
    convolution stride 2), ImageNet normalisation as its feature model applies."""
    feats = _alexnet_features(3, (64, 192, 384, 256, 256), 2)
    head = nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(256 * 2 * 2, 4096), nn.ReLU(), nn.Dropout(),
                         nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))
    return FeatureNet(feats, head, IMAGENET_MEAN, IMAGENET_STD)


def imagenet_alexnet() -> FeatureNet:
    """torchvision's AlexNet (its ``features`` indices match :data:`TAPS`)."""
    import torchvision

    tv = torchvision.models.alexnet(weights=None)
    head = nn.Sequential(tv.avgpool, nn.Flatten(), tv.classifier)
    return FeatureNet(tv.features, head, IMAGENET_MEAN, IMAGENET_STD)


ARCHS: dict[str, Callable[[], FeatureNet]] = {
    "digits-alexnet": digits_alexnet, "cifar-alexnet": cifar_alexnet, "alexnet": imagenet_alexnet,
}


# --------------------------------------------------------------------------- the distance
def normalized_features(net: FeatureNet, x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """(N, D): every layer's activations unit-normalised over channels at each position, scaled by
    1 / sqrt(H W), flattened and concatenated, so that LPIPS is a Euclidean distance here."""
    return in_micro_batches(lambda part: _normalized_features(net, part, eps), x)


def _normalized_features(net: FeatureNet, x: torch.Tensor, eps: float) -> torch.Tensor:
    parts = []
    for a in net.activations(x):
        # sqrt(|a|^2 + eps^2) rather than |a| + eps: the same value to 1e-10, and a finite
        # gradient even where every channel is exactly 0 (sqrt's slope there is infinite)
        norm = (a.pow(2).sum(1, keepdim=True) + eps * eps).sqrt()
        parts.append((a / (norm * (a.shape[2] * a.shape[3]) ** 0.5)).flatten(1))
    return torch.cat(parts, 1)


class Linearization:
    """The normalised features' derivative at fixed points ``x``: ``jvp(v)`` is J v, exact up to
    rounding, at about the cost of one forward pass (what forward-mode autodiff computes, without
    its dual-tensor overhead: 4-6 forward passes here).  The feature networks are convolutions,
    ReLUs and max-pools, so J v is the convolutions applied to ``v`` with the ReLU masks and
    pooling indices of ``x``, then the derivative of the per-position normalisation.  Runs on
    the same fixed-size micro-batches as everything else (:mod:`.batching`).  Networks with other
    layers fall back to ``torch.func.jvp``."""

    SUPPORTED = (nn.Conv2d, nn.ReLU, nn.MaxPool2d)

    def __init__(self, net: FeatureNet, x: torch.Tensor, eps: float = 1e-10):
        self.net, self.x, self.eps = net, x.detach(), eps
        self.fast = all(isinstance(m, self.SUPPORTED) for m in net.features_seq)
        self.chunks: list[tuple[list, list[torch.Tensor]]] = []
        self.size = batching.current_size(x.device) or max(1, len(x))
        if self.fast:
            with torch.no_grad():
                for start in range(0, len(x), self.size):
                    self.chunks.append(self._record(batching.pad_rows(self.x[start:start + self.size], self.size)))

    def _record(self, x: torch.Tensor) -> tuple[list, list[torch.Tensor]]:
        """Per layer what its derivative needs (ReLU masks, pooling indices), and the taps."""
        net, info, taps = self.net, [], []
        h = (x - net.mean) / net.std
        for i, layer in enumerate(net.features_seq):
            if isinstance(layer, nn.MaxPool2d):
                h, ind = F.max_pool2d(h, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                      ceil_mode=layer.ceil_mode, return_indices=True)
                info.append(ind)
            else:
                h = layer(h)
                info.append(h > 0 if isinstance(layer, nn.ReLU) else None)
            if i in TAPS:
                taps.append(h)
            if i == TAPS[-1]:  # as activations(): nothing after the last tap is used
                break
        return info, taps

    def _tangent(self, info: list, taps: list[torch.Tensor], v: torch.Tensor) -> torch.Tensor:
        net, parts, k = self.net, [], 0
        t = v / net.std
        for i, (layer, extra) in enumerate(zip(net.features_seq, info)):
            if isinstance(layer, nn.Conv2d):
                t = F.conv2d(t, layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
            elif isinstance(layer, nn.ReLU):
                t = t * extra
            else:  # max-pool: the tangent at the input's maxima
                t = t.flatten(2).gather(2, extra.flatten(2)).view(extra.shape)
            if i in TAPS:
                a = taps[k]
                k += 1
                norm = (a.pow(2).sum(1, keepdim=True) + self.eps * self.eps).sqrt()
                scale = (a.shape[2] * a.shape[3]) ** 0.5
                da = (t - a * (a * t).sum(1, keepdim=True) / norm.pow(2)) / (norm * scale)
                parts.append(da.flatten(1))
                if i == TAPS[-1]:
                    break
        return torch.cat(parts, 1)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """J v for a batch of directions ``v`` (one per point)."""
        v = v.detach()
        if not self.fast:
            _, jv = torch.func.jvp(lambda z: normalized_features(self.net, z), (self.x,), (v,))
            return jv
        with torch.no_grad():
            outs = []
            for (info, taps), start in zip(self.chunks, range(0, len(v), self.size)):
                part = v[start:start + self.size]
                outs.append(self._tangent(info, taps, batching.pad_rows(part, self.size))[:len(part)])
            return torch.cat(outs) if outs else v.new_zeros((0, 0))


def lpips(net: FeatureNet, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Per-example LPIPS distance (Laidlaw et al.'s variant, no learned linear layer)."""
    return (normalized_features(net, x1) - normalized_features(net, x2)).norm(dim=1)


# --------------------------------------------------------------------------- loading
class FeatureNetError(RuntimeError):
    pass


def registry_root_of(entry_path: str) -> Path | None:
    """The registry folder an entry file lives in (the parent of its ``threats/`` folder)."""
    p = Path(entry_path).resolve() if entry_path else None
    while p is not None and p != p.parent:
        if p.name == "threats":
            return p.parent
        p = p.parent
    return None


def weights_candidates(weights: str, entry_path: str) -> list[Path]:
    """Where a network's weights file is looked for, in order."""
    w = Path(weights).expanduser()
    if w.is_absolute():
        return [w]
    out = []
    root = registry_root_of(entry_path)
    if root is not None:
        out.append(root / w)
    out.append(Path(os.environ.get("SHIFTBENCH_MODELS", "models")).expanduser() / w)
    return out


NETWORK_LOCK = "networks.lock"  # beside the networks: sha256 pinned by `shiftbench fetch` (trust on first use)


def pinned_sha256(path: str | Path) -> str | None:
    """The sha256 ``shiftbench fetch`` pinned on first download for a network published without a
    checksum (``networks.lock`` beside it, the lock-file format of ``data/pins.py``), else None."""
    lock = Path(path).parent / NETWORK_LOCK
    if not lock.is_file():
        return None
    try:
        return str(json.loads(lock.read_text())["models"][Path(path).name][Path(path).name])
    except (ValueError, KeyError, TypeError):
        return None


def check_network(spec: Any, where: str) -> dict[str, Any]:
    """Validate a threat's ``params.network`` mapping; errors name the file and the key."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: key 'params.network': expected a mapping with keys {', '.join(NETWORK_KEYS)}")
    for key in spec:
        if key not in NETWORK_KEYS:
            raise ValueError(f"{where}: key 'params.network.{key}': unknown (allowed: {', '.join(NETWORK_KEYS)})")
    net = dict(spec)
    if net.get("arch") not in ARCHS:
        raise ValueError(f"{where}: key 'params.network.arch': expected one of {', '.join(ARCHS)}, "
                         f"got {net.get('arch')!r}")
    if not isinstance(net.get("weights"), str):
        raise ValueError(f"{where}: key 'params.network.weights': the weights file (relative to the registry "
                         "root or to $SHIFTBENCH_MODELS) is required")
    sha, prefix = net.get("sha256"), net.get("sha256_prefix")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise ValueError(f"{where}: key 'params.network.sha256': expected 64 lowercase hex digits, got {sha!r}")
    if prefix is not None and not (isinstance(prefix, str) and re.fullmatch(r"[0-9a-f]{8,63}", prefix)):
        raise ValueError(f"{where}: key 'params.network.sha256_prefix': expected 8 to 63 hex digits, got {prefix!r}")
    return net


def load_network(spec: Mapping[str, Any], entry_path: str = "") -> FeatureNet:
    """The feature network a threat names, verified and in eval mode, gradients off (cached)."""
    where = entry_path or "<threat>"
    net = check_network(spec, where)
    cands = weights_candidates(net["weights"], entry_path)
    found = next((p for p in cands if p.is_file()), None)
    source = net.get("source") or "see docs/threats.md"
    if found is None:
        raise FeatureNetError(
            f"{where}: key 'params.network.weights': the {net['arch']} LPIPS network's weights were not found; "
            f"looked for {' and '.join(str(p) for p in cands)}. Nothing is downloaded at run time: get the file "
            f"from {source} and put it at {cands[-1]} (or point $SHIFTBENCH_MODELS at the folder holding "
            f"{net['weights']}).")
    sha, prefix = net.get("sha256"), net.get("sha256_prefix")
    if sha is None and prefix is None:
        sha = pinned_sha256(found)
    return _load_verified(str(found), net["arch"], sha, prefix, where, source)


@functools.lru_cache(maxsize=4)
def _load_verified(path: str, arch: str, sha256: str | None, prefix: str | None, where: str, source: str) -> FeatureNet:
    got = sha256_file(path)
    if sha256 is None and prefix is None:
        raise FeatureNetError(
            f"{where}: key 'params.network.sha256': no checksum is pinned for {path} (sha256 {got}). Check that "
            f"the file is the one published at {source}, then write its sha256 into the entry (`shiftbench fetch` "
            f"pins it in {Path(path).parent / NETWORK_LOCK} when it downloads it).")
    if sha256 is not None and got != sha256:
        raise FeatureNetError(f"{where}: key 'params.network.sha256': {path} has sha256 {got}, the entry says "
                              f"{sha256}; the file is corrupt or different: get it again from {source}")
    if prefix is not None and not got.startswith(prefix):
        raise FeatureNetError(f"{where}: key 'params.network.sha256_prefix': {path} has sha256 {got}, which does "
                              f"not start with {prefix}; the file is corrupt or different: get it again from {source}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = ARCHS[arch]()
    load_state(model, state, arch, path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_state(model: FeatureNet, state: Mapping[str, Any], arch: str, path: str = "") -> None:
    """Fill ``model`` from a checkpoint in its publisher's layout: ours (``features_seq.*``),
    torchvision's (``features.*``), or perceptual-advex's (``{'model': {'model.features.*': ...}}``);
    only the feature layers are required (LPIPS never uses the classifier)."""
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    feats = {}
    for k, v in state.items():
        for prefix in ("features_seq.", "model.features.", "features.", "module.model.features."):
            if k.startswith(prefix):
                feats[k[len(prefix):]] = v
                break
    want = model.features_seq.state_dict().keys()
    missing = [k for k in want if k not in feats]
    if missing:
        raise FeatureNetError(f"{path}: not a {arch} checkpoint: feature weights {', '.join(missing[:3])} missing "
                              f"(found keys like {', '.join(list(state)[:3])})")
    model.features_seq.load_state_dict({k: feats[k] for k in want})
    rest = {k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")}
    if rest and rest.keys() == model.classifier.state_dict().keys():
        model.classifier.load_state_dict(rest)
