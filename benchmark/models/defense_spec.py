"""The declarations of :mod:`.defenses` (``randomized``, ``input_transform``), validated without
importing torch: the registry checks them when it loads an entry."""
from __future__ import annotations

from typing import Any, Mapping

TRANSFORM_KINDS = ("quantize", "jpeg", "median", "gaussian-noise", "python")
RANDOM_TRANSFORMS = ("gaussian-noise",)  # transforms whose output is random: need ``randomized``
DIFFERENTIABLE = ("gaussian-noise",)  # transforms with a useful gradient of their own (bpda: exact)
BPDA_CHOICES = ("identity", "exact")  # or python:module:function
RANDOMIZED_KEYS = ("eot", "draws", "seed")
TRANSFORM_PARAMS = {"quantize": ("bits",), "jpeg": ("quality",), "median": ("size",), "gaussian-noise": ("sigma",),
                    "python": ("function",)}
DEFAULT_RANDOMIZED = {"eot": 20, "draws": 5, "seed": 0}  # AutoAttack's rand version: 20 EOT samples


class DefenseError(ValueError):
    """A declaration that cannot be used (unknown kind, bad parameter, code not allowed)."""


# --------------------------------------------------------------------------- declarations
def check_randomized(decl: Mapping[str, Any], where: str = "randomized") -> dict[str, int]:
    """``{eot, draws, seed}`` with defaults filled in; raises :class:`DefenseError` naming the key."""
    if not isinstance(decl, Mapping):
        raise DefenseError(f"{where}: expected a mapping such as {{eot: 20, draws: 5}}, got {decl!r}")
    for k in decl:
        if k not in RANDOMIZED_KEYS:
            raise DefenseError(f"{where}.{k}: unknown key; allowed: {', '.join(RANDOMIZED_KEYS)}")
    out = {**DEFAULT_RANDOMIZED, **dict(decl)}
    for k, lo, hi in (("eot", 1, 1000), ("draws", 1, 1001), ("seed", 0, 2 ** 62)):
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise DefenseError(f"{where}.{k}: expected a whole number in [{lo}, {hi}], got {v!r}")
    if out["draws"] % 2 == 0:
        raise DefenseError(f"{where}.draws: expected an odd number of draws (a majority always exists), got "
                           f"{out['draws']}")
    return out


def check_transform(decl: Mapping[str, Any], where: str = "input_transform") -> dict[str, Any]:
    """The transform declaration with its ``bpda`` default filled in; raises naming the key."""
    if not isinstance(decl, Mapping) or "kind" not in decl:
        raise DefenseError(f"{where}: expected a mapping with a 'kind' ({', '.join(TRANSFORM_KINDS)}), got {decl!r}")
    kind = decl["kind"]
    if kind not in TRANSFORM_KINDS:
        raise DefenseError(f"{where}.kind: unknown transform {kind!r}; allowed: {', '.join(TRANSFORM_KINDS)}")
    allowed = ("kind", "bpda", *TRANSFORM_PARAMS[kind])
    for k in decl:
        if k not in allowed:
            raise DefenseError(f"{where}.{k}: unknown key for a {kind} transform; allowed: {', '.join(allowed)}")
    out = dict(decl)
    out.setdefault("bpda", "exact" if kind in DIFFERENTIABLE else "identity")
    p = TRANSFORM_PARAMS[kind][0]
    if p not in out:
        raise DefenseError(f"{where}.{p}: missing required key of a {kind} transform")
    v = out[p]
    ranges = {"bits": (1, 8), "quality": (1, 100), "size": (3, 9)}
    if p in ranges and (isinstance(v, bool) or not isinstance(v, int) or not ranges[p][0] <= v <= ranges[p][1]):
        raise DefenseError(f"{where}.{p}: expected a whole number in {list(ranges[p])}, got {v!r}")
    if p == "size" and v % 2 == 0:
        raise DefenseError(f"{where}.size: expected an odd window size, got {v}")
    if p == "sigma" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 2):
        raise DefenseError(f"{where}.sigma: expected a noise level in (0, 2], got {v!r}")
    if p == "function":
        _check_target(v, f"{where}.function")
    bpda = out["bpda"]
    if bpda not in BPDA_CHOICES:
        if not (isinstance(bpda, str) and bpda.startswith("python:")):
            raise DefenseError(f"{where}.bpda: expected identity, exact or python:module:function, got {bpda!r}")
        _check_target(bpda[len("python:"):], f"{where}.bpda")
    return out


def _check_target(target: Any, where: str) -> None:
    import re
    import sys

    if not isinstance(target, str) or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", target):
        raise DefenseError(f"{where}: expected module:function, got {target!r}")
    if target.split(".", 1)[0].split(":")[0] in sys.stdlib_module_names:
        raise DefenseError(f"{where}: {target!r} names a standard-library module, not your transform")


def code_targets(transform: Mapping[str, Any] | None) -> list[str]:
    """The modules a transform declaration would import (its ``function`` and a python ``bpda``)."""
    if not transform:
        return []
    out = []
    if transform.get("kind") == "python":
        out.append(str(transform["function"]).split(":")[0])
    bpda = transform.get("bpda")
    if isinstance(bpda, str) and bpda.startswith("python:"):
        out.append(bpda[len("python:"):].split(":")[0])
    return out
