"""Registry: YAML entries under ``registry/`` loaded into frozen, validated specs.

Every entry is one small YAML file.  Validation is strict: an unknown key, a wrong type, a
missing weights file or an implausible budget raises :class:`RegistryError` naming the file and
the key, so a broken entry is never skipped silently.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import fnmatch
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
# The built-in registry: a wheel carries a copy of the repository's top-level ``registry/`` as
# package data (``benchmark/_registry``, see setup.py); a checkout reads ``registry/`` itself.
PACKAGED_REGISTRY = Path(__file__).resolve().parent / "_registry"
DEFAULT_REGISTRY = PACKAGED_REGISTRY if PACKAGED_REGISTRY.is_dir() else REPO_ROOT / "registry"
BUILTIN_REGISTRY = DEFAULT_REGISTRY

KINDS = ("models", "shifts", "threats", "suites")
PROTOCOLS = ("lean", "reference")  # a suite's designs of its dataset-shift cells (benchmark/run/design.py)
LP_NORMS = ("Linf", "L2", "L1")
MODEL_SOURCES = ("builtin", "robustbench", "python", "file")
PYTHON_ATTACK = "python:"  # a threat's ``attack: python:module:function`` (benchmark.attacks.code_attack)
# How ImageNet-sized images become a model's 224-ish inputs (a model entry's ``preprocessing``).
# The first four are robustbench 1.1.1's PREPROCESSINGS (robustbench/data.py); robustbench derives
# the last from timm's config of the Debenedetti2022Light XCiT models (bicubic, crop_pct 1.0, 224).
IMAGENET_PREPROCESSINGS = ("Res256Crop224", "BicubicRes256Crop224", "Crop288", "Res224", "BicubicRes224Crop224")
DEFAULT_IMAGENET_PREPROCESSING = "Res256Crop224"  # robustbench's default for ImageNet
# A loader shift's ``params.transform``: a fixed transform, or ``model`` (the model's preprocessing).
SHIFT_TRANSFORMS = ("model", "res256crop224", "crop224", "res32", "box32", "none", *IMAGENET_PREPROCESSINGS)


class RegistryError(ValueError):
    """A registry entry is invalid; the message names the file and the key."""

    def __init__(self, path: Path | str, key: str | None, message: str):
        self.path, self.key = Path(path), key
        where = f"{path}" + (f": key '{key}'" if key else "")
        super().__init__(f"{where}: {message}")


# --------------------------------------------------------------------------- specs
class FrozenMap(dict):
    """An immutable, hashable dict, so that specs holding mappings stay hashable."""

    def _readonly(self, *args, **kwargs):
        raise TypeError("registry specs are immutable")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps(canonical(self), sort_keys=True, default=str))

    def __reduce__(self):
        return (FrozenMap, (dict(self),))


@dataclass(frozen=True)
class ModelSpec:
    """A model entry.  ``source`` is ``builtin:<arch>``, ``robustbench:<Name>``,
    ``file:<relative/path.pt>`` (a torchscript-free state dict for a builtin arch given in
    ``arch``) or ``python:module:factory`` (the only kind that runs user code, by intent)."""

    id: str
    source: str
    dataset: str
    architecture: str
    training: str
    weights: str | None = None  # path relative to the registry root, or absolute
    sha256: str | None = None
    arch_args: Mapping[str, Any] = field(default_factory=FrozenMap)
    threat_model: str | None = None  # robustbench: Linf | L2 | corruptions
    preprocessing: str | None = None  # ImageNet models: one of IMAGENET_PREPROCESSINGS (default Res256Crop224)
    train: Mapping[str, Any] = field(default_factory=FrozenMap)  # recipe for `shiftbench zoo train`
    reference: str | None = None  # paper / URL
    notes: str | None = None
    # what the submitter measured, e.g. {clean_acc: 0.953} (checked by `shiftbench submit`); not
    # part of a cell's hash since it changes no number
    claimed: Mapping[str, Any] = field(default_factory=FrozenMap)
    # what is known about the model (training family, extra data, architecture family and size,
    # threat trained for, venue, published numbers, provenance; see META_KEYS); generated, never
    # hand-typed (`python -m benchmark.models.metadata`); not hashed: it changes no number
    meta: Mapping[str, Any] = field(default_factory=FrozenMap)
    # a defense the evaluator must know of (benchmark/models/defenses.py, docs/defenses.md): a random
    # output ({eot: 20, draws: 5}: attacks average over EOT samples, outcomes are majority votes) and a
    # transform of the input ({kind: quantize, bits: 1}: attacked through by BPDA); hashed when present
    randomized: Mapping[str, Any] = field(default_factory=FrozenMap)
    input_transform: Mapping[str, Any] = field(default_factory=FrozenMap)
    path: str = ""  # file the entry came from (filled in by the loader)

    @property
    def source_kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def source_target(self) -> str:
        return self.source.split(":", 1)[1]


@dataclass(frozen=True)
class ShiftSpec:
    """A dataset shift: where its images come from and how labels map to the ID classes."""

    id: str
    dataset: str  # the ID dataset it shifts (digits, cifar10, cifar100, imagenet)
    source: str  # synthetic:<generator> | loader:<format>
    family: str  # noise, blur, digital, geometric, natural, ...
    version: int = 1
    description: str = ""
    severities: tuple[int, ...] = ()  # empty: the shift has no severity levels
    params: Mapping[str, Any] = field(default_factory=FrozenMap)
    url: str | None = None
    files: tuple[Mapping[str, Any], ...] = ()  # [{path, sha256|md5}] relative to the data root
    # the downloads ``files`` are extracted from: [{name, url, size, md5|sha256, source}], checked by
    # `shiftbench verify-archives`; ``source`` says where each checksum was published
    archives: tuple[Mapping[str, Any], ...] = ()
    layout: str | None = None  # human-readable folder layout expected
    label_map: str | None = None  # how labels map to the ID classes (e.g. imagenet-r-200)
    mask_logits: bool = False  # evaluate on the subset's classes only
    path: str = ""


@dataclass(frozen=True)
class ThreatSpec:
    """A threat: the perturbation set (norm + budget, or a non-Lp family) and the attack."""

    id: str
    kind: str  # lp | rotation-translation | pixel-flow | brightness-contrast | jpeg | stadv | recolor | lpips
    # name in benchmark.attacks, or python:module:function: the user's own attack (a defense author's
    # adaptive attack), imported only on the code opt-in like python: model sources
    attack: str
    eps: float = 0.0
    norm: str | None = None  # for kind == lp
    attack_args: Mapping[str, Any] = field(default_factory=FrozenMap)
    params: Mapping[str, Any] = field(default_factory=FrozenMap)  # non-Lp budget parameters
    version: int = 1
    description: str = ""
    # a known limit of the numbers (e.g. the attack is weaker than AutoAttack here); shown on the
    # leaderboard, not part of a cell's hash since it does not change any number
    caveat: str = ""
    # one of OODRobustBench's six threat shifts (Linf/L2 budget, PPGD, LPA, StAdv, ReColor) at
    # the reference's bound or the suite's stand-in for it; not hashed (it changes no number)
    reference_set: bool = False
    path: str = ""

    def params_text(self) -> str:
        """The non-Lp budget as ``k=v, ...``; a nested mapping (a perceptual threat's feature
        network) is shown by its ``arch``."""
        def show(v: Any) -> str:
            return str(v.get("arch", "...")) if isinstance(v, Mapping) else str(v)

        return ", ".join(f"{k}={show(v)}" for k, v in sorted(self.params.items()))


@dataclass(frozen=True)
class SuiteSpec:
    """What one leaderboard is made of: ID data, ID threat, dataset and threat shifts."""

    id: str
    dataset: str
    id_threat: str
    dataset_shifts: tuple[str, ...] = ()
    threat_shifts: tuple[str, ...] = ()
    models: tuple[str, ...] = ("*",)  # glob patterns over model ids of this dataset; "!pattern" excludes
    n_examples: int = 1000
    n_shift_examples: int | None = None  # per dataset-shift cell (one severity); default n_examples
    seed: int = 0
    # the design of the dataset-shift cells (benchmark/run/design.py): "lean" attacks each ID test
    # image under ``shifts_per_image`` of the shifts that corrupt the ID test set image by image
    # (at all their severities); "reference" under every one of them, as OODRobustBench does
    protocol: str = "reference"
    shifts_per_image: int = 1
    description: str = ""
    # module prefixes whose ``python:`` model entries this suite may import without --allow-code
    allow_code: tuple[str, ...] = ()
    path: str = ""


SPEC_TYPES: dict[str, type] = {
    "models": ModelSpec,
    "shifts": ShiftSpec,
    "threats": ThreatSpec,
    "suites": SuiteSpec,
}


# --------------------------------------------------------------------------- parsing
_FRACTION = re.compile(r"^\s*([0-9.]+)\s*/\s*([0-9.]+)\s*$")


def parse_eps(value: Any, path: Path, key: str = "eps") -> float:
    """Budgets may be written as numbers or as fractions such as ``8/255``."""
    if isinstance(value, bool):
        raise RegistryError(path, key, f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _FRACTION.match(value)
        if m:
            return float(m.group(1)) / float(m.group(2))
        try:
            return float(value)
        except ValueError:
            pass
    raise RegistryError(path, key, f"expected a number or a fraction like '8/255', got {value!r}")


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is bool:
        return isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        inner = args[0] if args else Any
        return all(_type_ok(v, inner) for v in value)
    if origin in (collections.abc.Mapping, dict) or tp in (Mapping, dict):
        return isinstance(value, dict)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    """Readable names for error messages: ``int``, ``str or null``, ``list of int``, ``mapping``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is tuple:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (collections.abc.Mapping, dict) or tp in (Mapping, dict):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return FrozenMap({k: _freeze(v) for k, v in value.items()})
    return value


def _check_plain(value: Any, path: Path, key: str, depth: int = 0) -> None:
    """Entry values are plain JSON data (strings, finite numbers, booleans, null, lists, mappings
    with string keys): they are hashed into cell keys and stored in results."""
    import math

    if depth > 32:
        raise RegistryError(path, key, "nested too deeply")
    if isinstance(value, float) and not math.isfinite(value):
        raise RegistryError(path, key, f"expected a finite number, got {value}")
    if isinstance(value, str) and any(ord(c) < 32 and c not in "\t\n\r" for c in value):
        raise RegistryError(path, key, f"control characters in {value!r}")
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, path, key, depth + 1)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise RegistryError(path, key, f"mapping keys must be strings, got {k!r}")
            _check_plain(v, path, key, depth + 1)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise RegistryError(path, key, f"expected a plain value (string, number, boolean, list, mapping), "
                            f"got {type(value).__name__} {value!r} (quote it to make it a string)")


def build_spec(kind: str, data: Any, path: Path) -> Any:
    """Validate one entry's raw mapping against its spec type and build the spec."""
    cls = SPEC_TYPES[kind]
    if not isinstance(data, dict):
        raise RegistryError(path, None, f"expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "path"}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RegistryError(path, str(key), f"unknown key{hint}; allowed: {', '.join(fields)}")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in data:
            raise RegistryError(path, name, "missing required key")
    values: dict[str, Any] = {}
    for key, value in data.items():
        _check_plain(value, path, str(key))
        if kind == "threats" and key == "eps":
            value = parse_eps(value, path)
        tp = hints[key]
        if not _type_ok(value, tp):
            raise RegistryError(path, key, f"expected {_type_name(tp)}, got {value!r}")
        values[key] = _freeze(value)
    stem = path.stem
    if values["id"] != stem:
        raise RegistryError(path, "id", f"id '{values['id']}' must match the file name '{stem}.yaml'")
    values["path"] = str(path)
    spec = cls(**values)
    _check_semantics(kind, spec, path)
    return spec


def _check_semantics(kind: str, spec: Any, path: Path) -> None:
    if kind == "threats":
        if spec.kind == "lp":
            if spec.norm not in LP_NORMS:
                raise RegistryError(path, "norm", f"an lp threat needs norm in {LP_NORMS}, got {spec.norm!r}")
            limits = {"Linf": LINF_MAX, "L2": 64.0, "L1": 4096.0}
            if spec.eps < 0:
                raise RegistryError(path, "eps", f"budget must be >= 0, got {spec.eps}")
            if spec.eps > limits[spec.norm]:
                hint = " (images are in [0, 1]: write 8/255, not 8)" if spec.norm == "Linf" else ""
                raise RegistryError(
                    path, "eps", f"implausible {spec.norm} budget {spec.eps} > {limits[spec.norm]}{hint}"
                )
        elif spec.norm is not None:
            raise RegistryError(path, "norm", f"only lp threats take a norm, this one is kind '{spec.kind}'")
        if spec.attack.startswith(PYTHON_ATTACK):  # a plain unknown name fails when the attack is looked up
            check_python_source(spec.attack[len(PYTHON_ATTACK):], path, "attack", "attack")
    if kind == "models":
        if spec.source_kind not in MODEL_SOURCES or ":" not in spec.source:
            raise RegistryError(
                path, "source", f"expected one of {', '.join(s + ':...' for s in MODEL_SOURCES)}, got {spec.source!r}"
            )
        if spec.source_kind == "python":
            check_python_source(spec.source_target, path)
        if spec.weights is not None:
            check_weights_ref(spec.weights, path)
        if spec.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", spec.sha256):
            raise RegistryError(path, "sha256", "expected 64 lowercase hex digits")
        if spec.preprocessing is not None:
            if spec.preprocessing not in IMAGENET_PREPROCESSINGS:
                close = difflib.get_close_matches(spec.preprocessing, IMAGENET_PREPROCESSINGS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise RegistryError(path, "preprocessing", f"unknown preprocessing {spec.preprocessing!r}{hint}; "
                                    f"allowed: {', '.join(IMAGENET_PREPROCESSINGS)}")
            if spec.dataset != "imagenet":
                raise RegistryError(path, "preprocessing", "only ImageNet models take a preprocessing (CIFAR and "
                                    f"digits images are used at their own size), this model is for '{spec.dataset}'")
        if spec.meta:
            check_meta(spec.meta, path)
        if spec.randomized or spec.input_transform:
            try:
                if spec.randomized:
                    check_randomized(spec.randomized)
                if spec.input_transform:
                    t = check_transform(spec.input_transform)
                    if t["kind"] in RANDOM_TRANSFORMS and not spec.randomized:
                        raise DefenseError(f"input_transform: {t['kind']} draws random numbers; declare "
                                           "randomized: {eot: 20, draws: 5} too")
            except DefenseError as exc:
                key = str(exc).split(":", 1)[0]
                raise RegistryError(path, key, str(exc).split(": ", 1)[1]) from None
        for k, v in spec.claimed.items():
            if k not in CLAIMED_KEYS:
                raise RegistryError(path, f"claimed.{k}", f"unknown claim; allowed: {', '.join(CLAIMED_KEYS)}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                hint = " (write a fraction such as 0.953, not a percentage)" if isinstance(v, (int, float)) and v > 1 else ""
                raise RegistryError(path, f"claimed.{k}", f"expected a fraction in [0, 1], got {v!r}{hint}")
        if spec.source_kind in ("builtin", "file"):
            if not spec.weights:
                raise RegistryError(path, "weights", f"a {spec.source_kind} model needs a weights file")
            if not spec.sha256:
                raise RegistryError(path, "sha256", "a weights file needs its sha256")
    if kind == "suites":
        if spec.n_examples <= 0:
            raise RegistryError(path, "n_examples", "must be positive")
        if spec.n_shift_examples is not None and spec.n_shift_examples <= 0:
            raise RegistryError(path, "n_shift_examples", "must be positive")
        if spec.protocol not in PROTOCOLS:
            raise RegistryError(path, "protocol", f"unknown protocol {spec.protocol!r}; allowed: {', '.join(PROTOCOLS)}")
        if isinstance(spec.shifts_per_image, bool) or spec.shifts_per_image < 1:
            raise RegistryError(path, "shifts_per_image", f"expected a whole number >= 1, got {spec.shifts_per_image!r}")
        for prefix in spec.allow_code:
            if not _MODULE.fullmatch(prefix):
                raise RegistryError(path, "allow_code", f"{prefix!r}: expected a module prefix such as 'mypkg.models'")
    if kind == "shifts":
        if not all(1 <= s <= 5 for s in spec.severities):
            raise RegistryError(path, "severities", "severities are integers 1..5")
        for i, f in enumerate(spec.files):
            check_file_item(f, path, f"files[{i}]")
        for i, a in enumerate(spec.archives):
            check_archive_item(a, path, f"archives[{i}]")
        transform = spec.params.get("transform")
        if spec.source.startswith("loader:") and transform is not None and transform not in SHIFT_TRANSFORMS:
            raise RegistryError(path, "params", f"unknown transform {transform!r}; allowed: {', '.join(SHIFT_TRANSFORMS)}")


# --------------------------------------------------------------------------- declared defenses
# A model entry's ``randomized`` and ``input_transform`` (what they do: benchmark/models/defenses.py).
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
    """A transform's ``module:function`` (or a BPDA approximation's): the check of every python
    target (:func:`check_python_source`), as a :class:`DefenseError` naming ``where``."""
    if not isinstance(target, str):
        raise DefenseError(f"{where}: expected module:function, got {target!r}")
    try:
        check_python_source(target, "", None, kind="transform")
    except RegistryError as exc:
        raise DefenseError(f"{where}: {str(exc).removeprefix(': ')}") from None


CLAIMED_KEYS = ("clean_acc", "robust_acc")  # a model entry's ``claimed``: accuracies as fractions

# A model entry's ``meta``: the known values of each categorical field (``shiftbench analyze --by``
# groups by them).  ``adversarial-training``: a robust-training method the source does not name
# more precisely (RobustBench's model_info has no training-method field); ``external``: extra data
# of a kind the source does not state.
TRAINING_FAMILIES = ("standard", "pgd-at", "trades", "noise-augmentation", "adversarial-training", "certified",
                     "unknown")
EXTRA_DATA = ("none", "unlabeled", "synthetic", "pre-training", "external", "unknown")
ARCH_FAMILIES = ("mlp", "cnn", "lenet", "resnet", "preact-resnet", "wide-resnet", "densenet", "vit", "xcit", "swin",
                 "convnext", "ensemble", "other")
TRAINED_THREATS = ("Linf", "L2", "L1", "corruptions", "none")
META_CHOICES = {"training_family": TRAINING_FAMILIES, "extra_data": EXTRA_DATA, "arch": ARCH_FAMILIES,
                "threat": TRAINED_THREATS}
META_KEYS = ("training_family", "extra_data", "arch", "params", "threat", "eps", "venue", "year", "published",
             "provenance")
META_REQUIRED = ("training_family", "extra_data", "arch", "threat", "provenance")
PUBLISHED_KEYS = ("clean_acc", "autoattack_acc", "source")
PROVENANCE_KEYS = ("repo", "commit", "path", "recipe", "generator")


def check_meta(meta: Mapping[str, Any], path: Path) -> None:
    """A model entry's ``meta``: known keys, known values, fractions for published accuracies,
    and a provenance that says where the values came from."""
    for k in meta:
        if k not in META_KEYS:
            close = difflib.get_close_matches(str(k), META_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RegistryError(path, f"meta.{k}", f"unknown key{hint}; allowed: {', '.join(META_KEYS)}")
    for k in META_REQUIRED:
        if k not in meta:
            raise RegistryError(path, f"meta.{k}", "missing required key")
    for k, choices in META_CHOICES.items():
        v = meta.get(k)
        if v is not None and v not in choices:
            close = difflib.get_close_matches(str(v), choices, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RegistryError(path, f"meta.{k}", f"unknown value {v!r}{hint}; allowed: {', '.join(choices)}")
    params = meta.get("params")
    if params is not None and (isinstance(params, bool) or not isinstance(params, int) or params <= 0):
        raise RegistryError(path, "meta.params", f"expected a positive whole number of parameters, got {params!r}")
    if meta.get("eps") is not None:
        if meta.get("threat") not in LP_NORMS:
            raise RegistryError(path, "meta.eps", f"a budget needs an Lp threat ({', '.join(LP_NORMS)}), "
                                f"threat is {meta.get('threat')!r}")
        eps = parse_eps(meta["eps"], path, "meta.eps")
        if not 0 < eps <= {"Linf": LINF_MAX, "L2": 64.0, "L1": 4096.0}[meta["threat"]]:
            raise RegistryError(path, "meta.eps", f"implausible {meta['threat']} budget {eps}")
    if meta.get("venue") is not None and not (isinstance(meta["venue"], str) and meta["venue"].strip()):
        raise RegistryError(path, "meta.venue", f"expected a non-empty string, got {meta['venue']!r}")
    year = meta.get("year")
    if year is not None and (isinstance(year, bool) or not isinstance(year, int) or not 1980 <= year <= 2100):
        raise RegistryError(path, "meta.year", f"expected a year such as 2019, got {year!r}")
    pub = meta.get("published")
    if pub is not None:
        if not isinstance(pub, Mapping):
            raise RegistryError(path, "meta.published", f"expected a mapping with keys {', '.join(PUBLISHED_KEYS)}")
        for k, v in pub.items():
            if k not in PUBLISHED_KEYS:
                raise RegistryError(path, f"meta.published.{k}", f"unknown key; allowed: {', '.join(PUBLISHED_KEYS)}")
            if k != "source" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
                hint = " (write a fraction such as 0.953, not a percentage)" if isinstance(v, (int, float)) and v > 1 else ""
                raise RegistryError(path, f"meta.published.{k}", f"expected a fraction in [0, 1], got {v!r}{hint}")
        if not isinstance(pub.get("source"), str) or not pub["source"].strip():
            raise RegistryError(path, "meta.published.source", "published numbers need their source (a non-empty string)")
        if not ({"clean_acc", "autoattack_acc"} & set(pub)):
            raise RegistryError(path, "meta.published", "expected clean_acc and/or autoattack_acc")
    prov = meta["provenance"]
    if not isinstance(prov, Mapping) or not prov:
        raise RegistryError(path, "meta.provenance", f"expected a mapping with keys among {', '.join(PROVENANCE_KEYS)}")
    for k, v in prov.items():
        if k not in PROVENANCE_KEYS:
            raise RegistryError(path, f"meta.provenance.{k}", f"unknown key; allowed: {', '.join(PROVENANCE_KEYS)}")
        if not isinstance(v, str) or not v.strip():
            raise RegistryError(path, f"meta.provenance.{k}", f"expected a non-empty string, got {v!r}")
    if "commit" in prov and not re.fullmatch(r"[0-9a-f]{40}", prov["commit"]):
        raise RegistryError(path, "meta.provenance.commit", "expected a 40-hex-digit git commit")
    if not ("recipe" in prov or {"repo", "commit", "path"} <= set(prov)):
        raise RegistryError(path, "meta.provenance", "say where the values came from: repo, commit and path of the "
                            "source record, or the recipe they were derived from")


LINF_MAX = 0.5  # an Linf budget above half the pixel range can turn any image into any other
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def check_python_source(target: str, path: Path | str, key: str | None = "source", kind: str = "model") -> None:
    """``python:module:factory`` (a model's ``source``) or ``python:module:function`` (a threat's
    ``attack``, ``kind="attack"``): a well-formed module and attribute, and not a standard-library
    module (``python:os:system`` names a shell, not a model or an attack).  Nothing is imported here."""
    import sys

    what, noun = ("factory", "source") if kind == "model" else ("function", kind)
    module, _, factory = target.partition(":")
    if not _MODULE.fullmatch(module) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", factory):
        raise RegistryError(path, key, f"expected python:<module>:<{what}>, got 'python:{target}'")
    top = module.split(".", 1)[0]
    if top in sys.stdlib_module_names or top == "builtins":
        raise RegistryError(path, key, f"'python:{target}' names the standard-library module '{top}', "
                            f"not {kind} code; a python {noun} must name your own {kind} {what}")


CODE_ENV = "SHIFTBENCH_ALLOW_CODE"  # "1": any module; else comma-separated module prefixes


class CodeNotAllowed(RegistryError):
    """A ``python:`` entry (a model source, a threat's attack) was about to be imported without the
    user's opt-in."""


def allowed_code(suite_prefixes: typing.Sequence[str] = ()) -> bool | tuple[str, ...]:
    """The opt-in in force: True (any module: ``--allow-code``), or the allowed module prefixes
    (those of ``$SHIFTBENCH_ALLOW_CODE`` plus a suite's ``allow_code``)."""
    raw = os.environ.get(CODE_ENV, "").strip()
    if raw in ("1", "*", "all"):
        return True
    return tuple(p.strip() for p in raw.split(",") if p.strip()) + tuple(suite_prefixes)


def module_allowed(module: str, prefixes: Any) -> bool:
    """Whether ``module`` is one of ``prefixes`` or inside one (``a.b`` allows ``a.b.c``, not ``a.bc``);
    ``prefixes`` True allows every module."""
    if prefixes is True:
        return True
    return any(module == p.rstrip(".") or module.startswith(p.rstrip(".") + ".") for p in (prefixes or ()))


def check_weights_ref(weights: str, path: Path) -> None:
    """A weights reference is ``pkg:<package>/<file>`` or a path inside the registry folder:
    no absolute path, no ``..`` (symlinks are checked when the path is resolved)."""
    if weights.startswith("pkg:"):
        package, _, rel = weights[4:].partition("/")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", package) or not rel or _escapes(rel):
            raise RegistryError(path, "weights", f"{weights!r}: expected pkg:<top-level package>/<relative path> "
                                "(no dots in the package name, no '..' in the path)")
        return
    if _escapes(weights):
        raise RegistryError(path, "weights", f"{weights!r} leaves the registry folder; weights live under the "
                            "registry folder (a relative path without '..'), or inside an installed package "
                            "(pkg:<package>/<path>)")


def _escapes(rel: str) -> bool:
    """An absolute path, a drive, or a ``..`` part: a path that can leave its root."""
    from pathlib import PurePosixPath, PureWindowsPath

    return (rel.startswith(("/", "\\", "~")) or PureWindowsPath(rel).drive != "" or
            ".." in PurePosixPath(rel.replace("\\", "/")).parts)


def contained(root: Path, rel: str, entry_path: Path | str, key: str) -> Path:
    """``root / rel`` with symlinks resolved, which must stay inside ``root``."""
    full = (Path(root) / rel)
    real, base = full.resolve(), Path(root).resolve()
    if real != base and base not in real.parents:
        raise RegistryError(entry_path, key, f"{rel!r} resolves to {real}, outside {base} (a symlink that leaves "
                            "the folder?); copy the file into the folder instead")
    return full


FILE_KEYS = ("path", "sha256", "md5")
ARCHIVE_KEYS = ("name", "url", "size", "md5", "sha256", "source")
_HEX = {"md5": 32, "sha256": 64}


def _check_keys(item: Any, allowed: tuple[str, ...], required: tuple[str, ...], path: Path, key: str) -> None:
    if not isinstance(item, Mapping):
        raise RegistryError(path, key, f"expected a mapping with keys {', '.join(allowed)}, got {item!r}")
    unknown = sorted(set(item) - set(allowed))
    if unknown:
        raise RegistryError(path, key, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    for k in required:
        if not isinstance(item.get(k), str) or not item[k].strip():
            raise RegistryError(path, key, f"needs '{k}' (a non-empty string)")
    for algo, n in _HEX.items():
        v = item.get(algo)
        if v is not None and not (isinstance(v, str) and re.fullmatch(f"[0-9a-f]{{{n}}}", v)):
            raise RegistryError(path, key, f"{algo} {v!r}: expected {n} lowercase hex digits")


def check_file_item(item: Any, path: Path, key: str) -> None:
    """A shift entry's ``files`` item: ``path`` under the data root, optional ``sha256``/``md5``."""
    _check_keys(item, FILE_KEYS, ("path",), path, key)
    if _escapes(item["path"]):
        raise RegistryError(path, key, f"path {item['path']!r} leaves the data root; give a path relative to it, "
                            "without '..'")


def check_archive_item(item: Any, path: Path, key: str) -> None:
    """A shift entry's ``archives`` item: the file ``name`` as downloaded from ``url``, at least one
    published checksum (``md5``, ``sha256``), optional ``size`` in bytes, and ``source``: where the
    checksums were published (never a checksum computed by us from an unverified copy)."""
    _check_keys(item, ARCHIVE_KEYS, ("name", "url", "source"), path, key)
    if "/" in item["name"] or "\\" in item["name"]:
        raise RegistryError(path, key, f"name {item['name']!r}: a plain file name, as downloaded")
    if not (item.get("md5") or item.get("sha256")):
        raise RegistryError(path, key, f"archive '{item['name']}' needs a published md5 or sha256")
    size = item.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise RegistryError(path, key, f"size {size!r}: expected a positive number of bytes")


MAX_ENTRY_BYTES = 1 << 20  # an entry is a few hundred bytes


class _EntryLoader(yaml.SafeLoader):
    """``safe_load`` without aliases: an entry never needs ``*ref``, and aliases are how a small
    file expands into billions of nodes ("billion laughs") once walked."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            raise _alias_error(self.peek_event())
        return super().compose_node(parent, index)


def _alias_error(event: yaml.AliasEvent) -> yaml.YAMLError:
    return yaml.composer.ComposerError(None, None, f"alias '*{event.anchor}' not allowed in registry entries "
                                       "(write the value out)", event.start_mark)


MAX_ENTRY_DEPTH = 64  # collections inside collections; an entry needs 4


def _safe_entry(text: str) -> Any:
    """The entry's YAML through libyaml's safe loader (about 8x faster than the pure-Python one,
    which a registry of 300 entries spends most of its load time in), after a pass over its
    parse events, also in C, that refuses aliases and nesting deeper than :data:`MAX_ENTRY_DEPTH`
    (the C composer recurses without Python's recursion guard).  Without libyaml: the pure-Python
    :class:`_EntryLoader`, which refuses the same."""
    if not getattr(yaml, "__with_libyaml__", False):
        return yaml.load(text, Loader=_EntryLoader)  # noqa: S506  (a SafeLoader subclass)
    depth = 0
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise _alias_error(event)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_ENTRY_DEPTH:
                raise RecursionError
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return yaml.load(text, Loader=yaml.CSafeLoader)  # noqa: S506  (libyaml's SafeLoader)


def load_yaml(path: Path) -> Any:
    """Read one entry: safe YAML only (no python tags), no aliases, at most 1 MiB."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_ENTRY_BYTES:
            raise RegistryError(path, None, f"{size} bytes: too large for a registry entry (limit {MAX_ENTRY_BYTES})")
        return _safe_entry(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RegistryError(path, None, f"not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise RegistryError(path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise RegistryError(path, None, "not valid YAML: nested too deeply") from None
    except OSError as exc:
        raise RegistryError(path, None, f"cannot be read: {exc.strerror or exc}") from None


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


UNHASHED_FIELDS = ("path", "caveat", "claimed", "reference_set", "meta")  # where an entry lives, what is said about it
# fields left out of the hash while empty: an entry without a defense hashes as before defenses existed
HASHED_WHEN_SET = ("randomized", "input_transform")


# A RobustBench entry's words, generated from RobustBench's model_info (``python -m
# benchmark.models.metadata robustbench``) and its zoo (``python -m benchmark.models.robustbench
# generate``): its numbers are fixed by the RobustBench name, dataset, threat model and
# preprocessing, and the checkpoint's sha256 (the entry's, or the weights lock's pin, also in the
# cell key), so rewording them leaves every cell key as it was.  Other entries keep these fields
# in the hash, as their stored results were keyed with them.
DESCRIPTIVE_FIELDS = ("architecture", "training", "reference", "notes")


def canonical(obj: Any, *, hashing: bool = False) -> Any:
    """A JSON-able, order-stable form of a spec or mapping (for storage; ``hashing``: the form a
    content hash covers, without :data:`DESCRIPTIVE_FIELDS` of RobustBench entries)."""
    if dataclasses.is_dataclass(obj):
        skip = UNHASHED_FIELDS
        if hashing and isinstance(obj, ModelSpec) and obj.source_kind == "robustbench":
            skip = UNHASHED_FIELDS + DESCRIPTIVE_FIELDS
        return {f.name: canonical(getattr(obj, f.name), hashing=hashing) for f in dataclasses.fields(obj)
                if f.name not in skip and (f.name not in HASHED_WHEN_SET or getattr(obj, f.name))}
    if isinstance(obj, Mapping):
        return {str(k): canonical(v, hashing=hashing) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v, hashing=hashing) for v in obj]
    return obj


def content_hash(obj: Any, length: int = 16) -> str:
    blob = json.dumps(canonical(obj, hashing=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


# --------------------------------------------------------------------------- registry
class Registry:
    """All entries of one registry folder, or of several folders layered one over another, keyed
    by kind and id.

    ``root`` is a folder, a sequence of folders (the first is the base layer), or those folders
    joined by ``os.pathsep`` (:attr:`location`, how worker processes rebuild the same registry).
    An entry of an upper layer shadows the entry of the same kind and id below it; two entries
    with one id in the same layer raise.  A suite covers the models of its own layer and of the
    layers above it (the built-in ``digits`` suite ranks a user's models; a suite defined in a
    user folder ranks only that folder's models).  Unknown ids raise with a "did you mean".
    """

    def __init__(self, root: Path | str | typing.Sequence[Path | str] = DEFAULT_REGISTRY, *,
                 check_files: bool = True):
        if isinstance(root, (str, os.PathLike)):
            roots = [p for p in str(root).split(os.pathsep) if p]
        else:
            roots = [str(p) for p in root]
        if not roots:
            raise RegistryError(str(root), None, "no registry folder given")
        self.roots: tuple[Path, ...] = tuple(Path(p) for p in roots)
        self.root = self.roots[-1]  # the top layer: where new entries are written
        for r in self.roots:
            if not r.is_dir():
                raise RegistryError(r, None, "registry folder does not exist")
        self.entries: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        for root_dir in self.roots:
            layer: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
            for kind in KINDS:
                folder = root_dir / kind
                if not folder.is_dir():
                    continue
                for path in sorted(folder.rglob("*.yaml")):
                    spec = build_spec(kind, load_yaml(path), path)
                    if spec.id in layer[kind]:
                        other = layer[kind][spec.id].path
                        raise RegistryError(path, "id", f"duplicate {kind[:-1]} id '{spec.id}' (also in {other})")
                    layer[kind][spec.id] = spec
            for kind in KINDS:
                self.entries[kind].update(layer[kind])
        if check_files:
            self._check_references()

    @property
    def location(self) -> str:
        """The folders of this registry as one string, for :class:`Registry` in another process."""
        return os.pathsep.join(str(r) for r in self.roots)

    def holds(self, spec: Any) -> bool:
        """Whether an entry's file lies inside one of this registry's folders."""
        p = Path(spec.path).resolve() if getattr(spec, "path", "") else None
        return p is not None and any(p.is_relative_to(r.resolve()) for r in self.roots)

    def layer_of(self, spec: Any) -> int:
        """Index in :attr:`roots` of the folder an entry's file lies in (the top layer if none)."""
        p = Path(spec.path).resolve() if getattr(spec, "path", "") else None
        if p is not None:
            for i in range(len(self.roots) - 1, -1, -1):
                if p.is_relative_to(self.roots[i].resolve()):
                    return i
        return len(self.roots) - 1

    # -- lookups
    def get(self, kind: str, name: str) -> Any:
        table = self.entries[kind]
        if name not in table:
            close = difflib.get_close_matches(name, table, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(f"no {kind[:-1]} named '{name}' in {self.root / kind}{hint}")
        return table[name]

    def model(self, name: str) -> ModelSpec:
        return self.get("models", name)

    def shift(self, name: str) -> ShiftSpec:
        return self.get("shifts", name)

    def threat(self, name: str) -> ThreatSpec:
        return self.get("threats", name)

    def suite(self, name: str) -> SuiteSpec:
        return self.get("suites", name)

    def weights_path(self, spec: ModelSpec) -> Path | None:
        """Where an entry's weights live: under the registry root (symlinks must not lead out of
        it), or ``pkg:<package>/<path>`` for a file shipped inside an installed package (found
        without importing anything: only top-level package names, e.g.
        ``pkg:pyautoattack/examples/model_test.pt``)."""
        if spec.weights is None:
            return None
        given = Path(spec.weights)
        if given.is_absolute() and (not self.holds(spec) or
                                    given.resolve().is_relative_to(self.roots[self.layer_of(spec)].resolve())):
            # an entry named on the command line (regress --model ENTRY.yaml / --weights FILE): the
            # user chose this file, or it lies in the registry folder anyway; still sha256-checked.
            # Registry YAML files never get here with an absolute path: loading them refuses one.
            return given
        check_weights_ref(spec.weights, Path(spec.path))
        if spec.weights.startswith("pkg:"):
            import importlib.util
            import sys

            package, _, rel = spec.weights[4:].partition("/")
            # an imported package's __path__ first: aliasing (autoattack -> pyautoattack) replaces its __spec__
            where = getattr(sys.modules.get(package), "__path__", None)
            if where is None:  # a top-level name: located by the finders, its code is not run
                found = importlib.util.find_spec(package)
                where = found.submodule_search_locations if found is not None else None
            if not where:
                raise RegistryError(spec.path, "weights", f"{spec.weights!r}: expected pkg:<installed package>/<path>, "
                                    f"and package '{package}' must be installed")
            return contained(Path(list(where)[0]), rel, spec.path, "weights")
        return contained(self.roots[self.layer_of(spec)], spec.weights, spec.path, "weights")

    def suite_models(self, suite: SuiteSpec, patterns: str | None = None) -> list[ModelSpec]:
        lowest = self.layer_of(suite)
        keep = [p for p in suite.models if not p.startswith("!")]
        drop = [p[1:] for p in suite.models if p.startswith("!")]  # "!pattern" excludes
        out = [
            m
            for m in self.entries["models"].values()
            if m.dataset == suite.dataset and any(fnmatch.fnmatchcase(m.id, p) for p in keep)
            and not any(fnmatch.fnmatchcase(m.id, p) for p in drop) and self.layer_of(m) >= lowest
        ]
        return sorted(filter_ids(out, patterns), key=lambda m: m.id)

    # -- validation across entries
    def _check_references(self) -> None:
        for spec in self.entries["models"].values():
            wp = self.weights_path(spec)
            if spec.source_kind in ("builtin", "file") and wp is not None and not wp.is_file():
                raise RegistryError(spec.path, "weights", f"weights file not found: {wp} (run `shiftbench zoo train`)")
        for suite in self.entries["suites"].values():
            refs = [("id_threat", "threats", suite.id_threat)]
            refs += [("dataset_shifts", "shifts", s) for s in suite.dataset_shifts]
            refs += [("threat_shifts", "threats", t) for t in suite.threat_shifts]
            for key, kind, name in refs:
                if name not in self.entries[kind]:
                    close = difflib.get_close_matches(name, self.entries[kind], n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    raise RegistryError(suite.path, key, f"no {kind[:-1]} named '{name}'{hint}")
                if kind == "shifts" and self.entries[kind][name].dataset != suite.dataset:
                    raise RegistryError(
                        suite.path, key, f"shift '{name}' is for dataset '{self.entries[kind][name].dataset}', "
                        f"not '{suite.dataset}'"
                    )

    def check_weights(self) -> list[str]:
        """Verify every local weights file against its sha256; return the problems found."""
        problems = []
        for spec in self.entries["models"].values():
            wp = self.weights_path(spec)
            if wp is None or not wp.is_file() or spec.sha256 is None:
                continue
            actual = sha256_file(wp)
            if actual != spec.sha256:
                problems.append(f"{spec.path}: key 'sha256': {wp} has sha256 {actual}, entry says {spec.sha256}")
        # feature networks that threats name (perceptual threats' LPIPS network) and that ship in
        # this registry; files kept elsewhere ($SHIFTBENCH_MODELS) are checked when an attack loads them
        for t in self.entries["threats"].values():
            net = t.params.get("network") if isinstance(t.params, Mapping) else None
            if not isinstance(net, Mapping) or not isinstance(net.get("weights"), str) or not net.get("sha256"):
                continue
            wp = self.root / net["weights"]
            if wp.is_file() and (actual := sha256_file(wp)) != net["sha256"]:
                problems.append(f"{t.path}: key 'params.network.sha256': {wp} has sha256 {actual}, "
                                f"entry says {net['sha256']}")
        return problems


def filter_ids(specs: list[Any], patterns: str | None) -> list[Any]:
    """Keep specs whose id matches any of the comma-separated glob patterns (all if None)."""
    if not patterns:
        return list(specs)
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    return [s for s in specs if any(fnmatch.fnmatchcase(s.id, p) for p in pats)]


def default_registry_root() -> Path:
    return Path(os.environ.get("SHIFTBENCH_REGISTRY", DEFAULT_REGISTRY))


def layered_location(user: str | Path | None = None) -> str:
    """The built-in registry with the user's folder (``user``, else ``$SHIFTBENCH_REGISTRY``)
    layered over it, as a :attr:`Registry.location` string.  A user folder that is the built-in
    one itself adds nothing."""
    user = user if user is not None else os.environ.get("SHIFTBENCH_REGISTRY") or None
    roots = [str(BUILTIN_REGISTRY)]
    if user is not None:
        for part in str(user).split(os.pathsep):
            if part and Path(part).resolve() not in {Path(r).resolve() for r in roots}:
                roots.append(part)
    return os.pathsep.join(roots)


def layered(user: str | Path | None = None, *, check_files: bool = True) -> "Registry":
    """The registry the command line uses: built-in entries, user entries layered over them."""
    return Registry(layered_location(user), check_files=check_files)
