"""RobustBench model zoo: build ``robustbench:<Name>`` entries from local weights, never downloading.

Weights are read from RobustBench's own cache layout, ``<model_dir>/<dataset>/<threat_model>/<Name>.pt``
(ensembles: ``<Name>.pt_m<i>.pt``), so a folder filled by ``robustbench.utils.load_model`` on a
machine with network works as is.  ``model_dir`` is the argument, else $SHIFTBENCH_MODELS, else
``./models``.  Files are checked against the entry's sha256 when it has one and read with
``torch.load(weights_only=True)``; the state-dict key fixes are RobustBench's own.

``python -m benchmark.models.robustbench generate`` writes one registry entry per model RobustBench
1.1.1 can build for cifar10 Linf/L2, cifar100 Linf and imagenet Linf.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..registry import DEFAULT_REGISTRY, IMAGENET_PREPROCESSINGS, ModelSpec, Registry, RegistryError
from .metadata import meta_block
from .weights import WeightsError, pinned, verified_state_dict

GENERATED_THREATS = (("cifar10", "Linf"), ("cifar10", "L2"), ("cifar100", "Linf"), ("imagenet", "Linf"))
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
MODEL_INFO_URL = "https://github.com/RobustBench/robustbench/blob/master/model_info/{dataset}/{threat}/{name}.json"
# Models whose robustbench constructor downloads torchvision weights (it has no checkpoint of its
# own): robustbench 1.1.1 builds Standard_R50 as normalize_model(resnet50(pretrained=True)), and
# torchvision maps pretrained=True to ResNet50_Weights.IMAGENET1K_V1 (handle_legacy_interface).
# Its file, resnet50-0676ba61.pth, carries the first 8 hex digits of its sha256 in its name (the
# torch.hub naming convention), which we check when the entry has no full sha256.
TORCHVISION_WEIGHTS = {("imagenet", "Linf", "Standard_R50"): ("resnet50", "ResNet50_Weights", "IMAGENET1K_V1")}


def _robustbench():
    """Import robustbench's zoo (needs benchmark's autoattack alias, installed on import)."""
    from .._compat import install_autoattack_alias

    install_autoattack_alias()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from robustbench import utils as rb_utils
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    return model_dicts, BenchmarkDataset, ThreatModel, rb_utils


def model_dir_root(model_dir: str | Path | None = None) -> Path:
    return Path(model_dir or os.environ.get("SHIFTBENCH_MODELS", "models")).expanduser()


def timm_name(name: str, dataset: str, threat: str) -> str:
    """The timm model name robustbench looks for (its models hosted on the HF hub)."""
    return f"{name.lower().replace('-', '_')}_{dataset.lower()}_{threat.lower()}"


def _zoo_entry(spec: ModelSpec) -> tuple[dict, str, str]:
    model_dicts, BD, TM, _ = _robustbench()
    if not spec.threat_model:
        raise RegistryError(spec.path, "threat_model", "a robustbench model needs threat_model (Linf, L2, corruptions)")
    try:
        table = model_dicts[BD(spec.dataset)][TM(spec.threat_model)]
    except (KeyError, ValueError):
        raise RegistryError(spec.path, "threat_model",
                            f"robustbench has no zoo for {spec.dataset}/{spec.threat_model}") from None
    name = spec.source_target
    if name not in table:
        close = difflib.get_close_matches(name, table, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise RegistryError(spec.path, "source", f"robustbench 1.1.1 has no {spec.dataset}/{spec.threat_model} "
                            f"model '{name}'{hint}")
    return table[name], name, spec.threat_model


def expected_path(spec: ModelSpec, registry: Registry | None, model_dir: str | Path | None = None) -> Path:
    """The weights file for an entry: its ``weights`` key if given, else RobustBench's cache layout."""
    if spec.weights and registry is not None:
        wp = registry.weights_path(spec)
        if wp is not None:
            return wp
    return model_dir_root(model_dir) / spec.dataset / str(spec.threat_model) / f"{spec.source_target}.pt"


def _missing(spec: ModelSpec, path: Path, how: str) -> WeightsError:
    return WeightsError(
        f"{spec.path}: weights for robustbench model '{spec.source_target}' not found: {path}\n"
        f"Nothing is downloaded at run time. On a machine with network, {how}, then copy the file to "
        f"{path} (or point --model-dir / $SHIFTBENCH_MODELS at the folder holding "
        f"{spec.dataset}/{spec.threat_model}/). See docs/real-suites.md."
    )


def _checkpoint_state(ckpt: Any, name: str, rb_utils) -> dict:
    """RobustBench's key fixes: unwrap 'state_dict'/'last', strip 'module.' and 'model.'."""
    if isinstance(ckpt, dict) and ("Kireev2021Effectiveness" in name or name == "Andriushchenko2020Understanding"):
        ckpt = ckpt.get("last", ckpt)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    state = rb_utils.rm_substr_from_state_dict(state, "module.")
    return rb_utils.rm_substr_from_state_dict(state, "model.")


def _load_checkpoint(path: Path, sha256: str | None, spec: ModelSpec) -> Any:
    try:
        return verified_state_dict(path, sha256, spec.path)
    except WeightsError:
        raise
    except Exception as exc:  # weights_only refuses pickled objects other than tensors and containers
        raise WeightsError(
            f"{spec.path}: {path} cannot be read with torch.load(weights_only=True) ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}). Convert it once on a trusted machine: "
            f"torch.save(torch.load(p, weights_only=False)['state_dict'] or the tensors it holds, p), then "
            f"record the new sha256 in the entry."
        ) from None


def load(spec: ModelSpec, registry: Registry | None, model_dir: str | Path | None = None) -> nn.Module:
    """Build a ``robustbench:<Name>`` model with local, verified weights (eval mode, inputs in [0, 1])."""
    entry, name, threat = _zoo_entry(spec)
    _, BD, _, rb_utils = _robustbench()
    dataset = BD(spec.dataset)
    path = expected_path(spec, registry, model_dir)
    tname = timm_name(name, spec.dataset, threat)
    import timm

    if timm.is_model(tname):  # hosted on the HF hub by timm: build empty, load the local copy
        if not path.is_file():
            raise _missing(spec, path, f"run torch.save(timm.create_model('{tname}', pretrained=True)"
                                       ".state_dict(), '<file>')")
        _pin(spec, registry, [path])
        model = timm.create_model(tname, num_classes=NUM_CLASSES[spec.dataset], pretrained=False)
        model.load_state_dict(_load_checkpoint(path, spec.sha256, spec))
        return model.eval()
    gid = entry["gdrive_id"]
    if (spec.dataset, threat, name) in TORCHVISION_WEIGHTS:
        return _load_torchvision(spec, name, threat, path, registry)
    if not gid:
        raise WeightsError(f"{spec.path}: robustbench model '{name}' has no checkpoint of its own (its "
                           "constructor downloads pretrained weights at build time); it cannot run offline")
    if isinstance(gid, list):
        return _load_ensemble(spec, entry, name, path, dataset, rb_utils, registry)
    if not path.is_file():
        raise _missing(spec, path, f"run robustbench.utils.load_model('{name}', dataset='{spec.dataset}', "
                                   f"threat_model='{threat}', model_dir='models')")
    _pin(spec, registry, [path])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = entry["model"]()
    state = _checkpoint_state(_load_checkpoint(path, spec.sha256, spec), name, rb_utils)
    if spec.dataset == "imagenet":
        if name in ("Liu2023Comprehensive_Swin-B", "Liu2023Comprehensive_Swin-L", "Mo2022When_Swin-B",
                    "RodriguezMunoz2024Characterizing_Swin-B", "RodriguezMunoz2024Characterizing_Swin-L"):
            from timm.models.swin_transformer import checkpoint_filter_fn

            state = checkpoint_filter_fn(state, model.model)
        if not _keys_match(model, state):  # most ImageNet checkpoints lack the normaliser's 'model.' prefix
            state = rb_utils.add_substr_to_state_dict(state, "model.")
    return rb_utils._safe_load_state_dict(model, name, state, dataset).eval()


def _pin(spec: ModelSpec, registry: Registry | None, files: list[Path]) -> None:
    """Checkpoints the entry does not pin itself (no sha256; ensembles: every part but the
    first) are verified against the registry's lock file, or recorded there on first use."""
    if registry is not None and (spec.sha256 is None or len(files) > 1):
        pinned(registry.root, spec.id, files, spec.path)


def weight_files(spec: ModelSpec, registry: Registry | None, model_dir: str | Path | None = None) -> list[Path]:
    """The checkpoint files a ``robustbench:`` entry is built from (ensembles: every part);
    only those present (none when the weights are not downloaded yet)."""
    entry, name, threat = _zoo_entry(spec)
    path = expected_path(spec, registry, model_dir)
    if (spec.dataset, threat, name) in TORCHVISION_WEIGHTS:
        return [p for p in torchvision_weights_paths(spec, path) if p.is_file()][:1]
    gid = entry.get("gdrive_id")
    if isinstance(gid, list) and not timm_name_known(name, spec.dataset, threat):
        parts = [Path(f"{path}_m{i}.pt") for i in range(len(gid))]
        return parts if all(p.is_file() for p in parts) else []
    return [path] if path.is_file() else []


def needed_files(spec: ModelSpec, registry: Registry | None,
                 model_dir: str | Path | None = None) -> tuple[list[tuple[Path, ...]], str | None]:
    """What loading a ``robustbench:`` entry needs, present or not: one tuple of alternatives per
    required file (a torchvision-weights model's file may be in our cache layout or the torch hub
    cache), and a reason the model cannot run offline at all (None if it can).  For preflight."""
    entry, name, threat = _zoo_entry(spec)
    path = expected_path(spec, registry, model_dir)
    if (spec.dataset, threat, name) in TORCHVISION_WEIGHTS:
        return [tuple(torchvision_weights_paths(spec, path))], None
    gid = entry.get("gdrive_id")
    if timm_name_known(name, spec.dataset, threat):
        return [(path,)], None
    if not gid:
        return [], "it has no checkpoint of its own (robustbench's constructor downloads weights): it cannot run offline"
    if isinstance(gid, list):
        return [(Path(f"{path}_m{i}.pt"),) for i in range(len(gid))], None
    return [(path,)], None


def build_architecture(spec: ModelSpec) -> nn.Module:
    """The entry's network with random weights (nothing is read or downloaded): what its
    checkpoint fills, for measuring its speed before the weights are there."""
    entry, name, threat = _zoo_entry(spec)
    import timm

    tname = timm_name(name, spec.dataset, threat)
    tv = TORCHVISION_WEIGHTS.get((spec.dataset, threat, name))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if tv is not None:  # the constructor would download: build the same net without weights
            import torchvision.models as tvm
            from robustbench.model_zoo.architectures.utils_architectures import normalize_model
            from robustbench.model_zoo.imagenet import mu, sigma

            return normalize_model(getattr(tvm, tv[0])(weights=None), mu, sigma)
        if timm.is_model(tname):
            return timm.create_model(tname, num_classes=NUM_CLASSES[spec.dataset], pretrained=False)
        return entry["model"]()


def cell_weights(spec: ModelSpec, registry: Registry, model_dir: str | Path | None = None, *,
                 record: bool = True) -> tuple | None:
    """What the cell key holds for the checkpoints of an entry that does not pin them itself:
    ``((file name, sha256), ...)`` from the lock file, recorded now (trust on first use) when the
    files are present and not locked yet (unless ``record`` is false); None when the entry pins
    them (its sha256) or the files are absent (the cell then fails to load and writes nothing)."""
    from .weights import lock_path, read_lock

    known = read_lock(lock_path(registry.root)).get(spec.id)
    if known is None:
        if not record:
            return None
        files = weight_files(spec, registry, model_dir)
        if not files or (spec.sha256 is not None and len(files) == 1):
            return None
        known = pinned(registry.root, spec.id, files, spec.path)
    return tuple(sorted(known.items()))


def timm_name_known(name: str, dataset: str, threat: str) -> bool:
    import timm

    return bool(timm.is_model(timm_name(name, dataset, threat)))


def _keys_match(model: nn.Module, state: dict) -> bool:
    own = set(model.state_dict())
    return len(own & set(state)) >= 0.5 * max(1, len(state))


def torchvision_weights_paths(spec: ModelSpec, path: Path) -> list[Path]:
    """Where a torchvision-weights model's file may be: our cache layout, then the torch hub cache
    (``<torch hub dir>/checkpoints/<file>``, where robustbench's constructor would download it)."""
    arch, enum, member = TORCHVISION_WEIGHTS[(spec.dataset, str(spec.threat_model), spec.source_target)]
    import torchvision.models as tvm

    url = getattr(tvm, enum)[member].url
    return [path, Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]]


def _load_torchvision(spec: ModelSpec, name: str, threat: str, path: Path, registry: Registry | None = None) -> nn.Module:
    import re

    import torchvision.models as tvm
    from robustbench.model_zoo.architectures.utils_architectures import normalize_model
    from robustbench.model_zoo.imagenet import mu, sigma

    arch, enum, member = TORCHVISION_WEIGHTS[(spec.dataset, threat, name)]
    url = getattr(tvm, enum)[member].url
    candidates = torchvision_weights_paths(spec, path)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise WeightsError(
            f"{spec.path}: weights for robustbench model '{name}' not found; looked for "
            + " and ".join(str(p) for p in candidates) + ".\nNothing is downloaded at run time. robustbench builds "
            f"this model from torchvision's {enum}.{member}: on a machine with network run "
            f"torchvision.models.{arch}(weights='{member}') (it fills the torch hub cache) or download {url}, "
            f"then copy the file to {candidates[0]}. See docs/real-suites.md.")
    if spec.sha256 is None:  # the hub file name's sha256 prefix, as torch.hub's check_hash uses it
        prefix = re.search(r"-([a-f0-9]{8,})\.", url.rsplit("/", 1)[-1]).group(1)
        from ..registry import sha256_file

        got = sha256_file(found)
        if not got.startswith(prefix):
            raise WeightsError(f"{spec.path}: {found} has sha256 {got}, but torchvision's file name {url} says it "
                               f"starts with {prefix}; the file is corrupt or different: re-download it")
    _pin(spec, registry, [found])
    state = _load_checkpoint(found, spec.sha256, spec)
    model = normalize_model(getattr(tvm, arch)(weights=None), mu, sigma)
    model.model.load_state_dict(state)
    return model.eval()


def _ensemble_targets(model: nn.Module, name: str, n: int) -> list:
    """Where each checkpoint ``<Name>.pt_m<i>.pt`` of an ensemble goes, as robustbench.utils.load_model
    puts it: plain ensembles into ``model.models[i]``; Bai2023Improving's two base models into
    ``comp_model.models[0/1]`` and its third file's ``model``/``bn`` into the mixing network and its
    batch norm; Bai2024MixedNUTS's files into ``std_model`` and ``rob_model``."""
    if name.startswith("Bai2023Improving"):
        cm = model.comp_model
        return [(cm.models, 0, None), (cm.models, 1, None), (cm, "policy_net", "model"), (cm, "bn", "bn")]
    if name.startswith("Bai2024MixedNUTS"):
        return [(model, "std_model", None), (model, "rob_model", None)]
    return [(model.models, i, None) for i in range(n)]


def _load_ensemble(spec: ModelSpec, entry: dict, name: str, path: Path, dataset, rb_utils,
                   registry: Registry | None = None) -> nn.Module:
    parts = [Path(f"{path}_m{i}.pt") for i in range(len(entry["gdrive_id"]))]
    absent = [p for p in parts if not p.is_file()]
    if absent:
        raise WeightsError(
            f"{spec.path}: weights for robustbench model '{name}' not found: "
            + ", ".join(str(p) for p in absent) + f"\nNothing is downloaded at run time. On a machine with network, run "
            f"robustbench.utils.load_model('{name}', dataset='{spec.dataset}', threat_model='{spec.threat_model}', "
            f"model_dir='models') (it writes the {len(parts)} files {path.name}_m<i>.pt), then copy them to "
            f"{path.parent} (or point --model-dir / $SHIFTBENCH_MODELS at the folder holding "
            f"{spec.dataset}/{spec.threat_model}/). See docs/real-suites.md.")
    _pin(spec, registry, parts)  # every part, not only the first the entry's sha256 covers
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # Bai* constructors print
            warnings.simplefilter("ignore")
            model = entry["model"]()
    except Exception as exc:
        if _needs_cuda(exc):
            raise WeightsError(f"{spec.path}: {CUDA_ONLY_NOTE} Run it on a machine with a GPU.") from None
        raise
    targets = _ensemble_targets(model, name, len(parts))
    for i, p in enumerate(parts):  # sha256 covers the first part only; see the entry's notes
        ckpt = _load_checkpoint(p, spec.sha256 if i == 0 else None, spec)
        state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
        state = rb_utils.rm_substr_from_state_dict(state, "module.")
        if name.startswith("Bai2023Improving") and i == 2:  # the mixing network and its output BN
            for owner, attr, key in targets[2:]:
                if not isinstance(state, dict) or key not in state:
                    raise WeightsError(f"{spec.path}: {p} has no '{key}' entry; expected robustbench's "
                                       f"{name} mixing-network checkpoint")
                setattr(owner, attr, rb_utils._safe_load_state_dict(getattr(owner, attr), name, state[key], dataset))
            continue
        owner, attr, _ = targets[i]
        if name.startswith("Bai2024MixedNUTS") and attr == "rob_model" and spec.dataset == "imagenet":
            from timm.models.swin_transformer import checkpoint_filter_fn

            state = rb_utils.add_substr_to_state_dict(checkpoint_filter_fn(state, model.rob_model.model), "model.")
        part = owner[attr] if isinstance(owner, nn.ModuleList) else getattr(owner, attr)
        part = rb_utils._safe_load_state_dict(part, name, state, dataset).eval()
        if isinstance(owner, nn.ModuleList):
            owner[attr] = part
        else:
            setattr(owner, attr, part)
    return model.eval()


# --------------------------------------------------------------------------- generator
def entry_id(dataset: str, threat: str, name: str) -> str:
    """Registry id of a zoo model, e.g. ``rb-cifar10-Linf-Carmon2019Unlabeled``."""
    return f"rb-{dataset}-{threat}-{name}"


CUDA_ONLY_NOTE = ("robustbench 1.1.1 builds it only where CUDA is available: its BiT-M constructor "
                  "(model_zoo/architectures/bit_rn.py) puts its normalisation constants on the GPU.")


def _needs_cuda(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, (RuntimeError, AssertionError)) and ("NVIDIA driver" in text or "CUDA" in text)


@contextlib.contextmanager
def _cuda_calls_stay_on_device():
    """For the generator's parameter count only: ``Tensor.cuda()`` returns the tensor unchanged, so
    constructors that call it (robustbench's BiT-M) build on a machine without a GPU."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def _buildable(entry: dict, name: str, dataset: str, threat: str) -> tuple[bool, str, str]:
    """Whether robustbench 1.1.1 can build the model offline; its class name; a reason if not.

    Built on the meta device: no memory is allocated and no weights are read.
    """
    import timm

    tname = timm_name(name, dataset, threat)
    tv = TORCHVISION_WEIGHTS.get((dataset, threat, name))
    if not entry["gdrive_id"] and not timm.is_model(tname) and tv is None:
        return False, "", "no checkpoint of its own (constructor downloads weights)"

    spec = ModelSpec(id=entry_id(dataset, threat, name), source=f"robustbench:{name}", dataset=dataset,
                     architecture="", training="", threat_model=threat)

    def build() -> nn.Module:
        return build_architecture(spec)

    note = ""
    try:
        with torch.device("meta"):
            model = build()
    except Exception as first:  # some constructors read tensor values (timm's drop-path schedules): build for real
        try:
            if _needs_cuda(first) and not torch.cuda.is_available():
                note = CUDA_ONLY_NOTE
                with torch.no_grad(), _cuda_calls_stay_on_device():  # not on meta: it reads tensor values
                    model = build()
            else:
                with torch.no_grad():
                    model = build()
        except Exception as exc:  # a broken constructor in robustbench 1.1.1
            return False, "", f"constructor fails: {type(exc).__name__}: {str(exc)[:120]}"
    inner = getattr(model, "model", model)
    n = sum(p.numel() for p in model.parameters())
    return True, f"{type(inner).__name__} ({n / 1e6:.1f}M params)", note


def robustbench_preprocessing(entry: dict, name: str, dataset: str, threat: str) -> str | None:
    """The preprocessing robustbench 1.1.1 feeds a model (``robustbench.data.get_preprocessing``):
    its zoo entry's ``preprocessing``, or for timm-hosted models the one derived from timm's config
    (resize floor(size / crop_pct) with timm's interpolation, center crop size).  None off ImageNet."""
    if dataset != "imagenet":
        return None
    if entry.get("preprocessing"):
        prep = entry["preprocessing"]
    else:
        import timm

        tname = timm_name(name, dataset, threat)
        cfg = timm.models.get_pretrained_cfg(tname) if timm.is_model(tname) else None
        if cfg is None:
            raise ValueError(f"robustbench gives {dataset}/{threat}/{name} no preprocessing and timm has no config "
                             f"'{tname}' to derive one from")
        size = int(cfg.input_size[1])
        scale = int(math.floor(size / cfg.crop_pct))  # as robustbench.data.get_timm_model_preprocessing
        interp = {"bicubic": "Bicubic", "bilinear": ""}.get(cfg.interpolation, cfg.interpolation)
        prep = f"{interp}Res{scale}Crop{size}"
    if prep not in IMAGENET_PREPROCESSINGS:
        raise ValueError(f"robustbench preprocesses {dataset}/{threat}/{name} with {prep!r}, which shiftbench does "
                         f"not implement (known: {', '.join(IMAGENET_PREPROCESSINGS)}); add it to "
                         "registry.IMAGENET_PREPROCESSINGS and loaders.image_transform")
    return prep


def _yaml_str(s: str) -> str:
    import json

    return json.dumps(s)  # JSON strings are valid YAML scalars


def generate(out_root: Path = DEFAULT_REGISTRY / "models", *, quiet: bool = False,
             only: Sequence[str] | None = None) -> dict[str, int]:
    """Write one YAML per buildable model; return counts per (dataset, threat). Skips are printed.

    ``only``: ``<dataset>-<threat>`` keys (e.g. ``imagenet-Linf``) to regenerate; default all."""
    model_dicts, BD, TM, _ = _robustbench()
    known = [f"{d}-{t}" for d, t in GENERATED_THREATS]
    unknown = sorted(set(only or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown zoo {', '.join(unknown)}; known: {', '.join(known)}")
    counts: dict[str, int] = {}
    for dataset, threat in GENERATED_THREATS:
        if only and f"{dataset}-{threat}" not in only:
            continue
        table = model_dicts[BD(dataset)][TM(threat)]
        folder = Path(out_root) / dataset / "robustbench" / threat
        folder.mkdir(parents=True, exist_ok=True)
        written = set()
        for name, entry in table.items():
            ok, arch, why = _buildable(entry, name, dataset, threat)  # why: a note when ok
            if not ok:
                if not quiet:
                    print(f"skip {dataset}/{threat}/{name}: {why}", file=sys.stderr)
                continue
            eid = entry_id(dataset, threat, name)
            notes = ["Generated by `python -m benchmark.zoo_robustbench generate`; do not edit by hand."]
            if isinstance(entry["gdrive_id"], list):
                notes.append(f"Ensemble of {len(entry['gdrive_id'])} checkpoints <Name>.pt_m<i>.pt; "
                             "sha256 covers the first.")
            if why:
                notes.append(why)
            tv = TORCHVISION_WEIGHTS.get((dataset, threat, name))
            if tv is not None:
                notes.append(f"robustbench builds it from torchvision's {tv[1]}.{tv[2]} (downloaded by its constructor); "
                             f"shiftbench reads that file from <model dir>/{dataset}/{threat}/{name}.pt or the torch "
                             "hub cache and checks the sha256 prefix in torchvision's file name.")
            prep = robustbench_preprocessing(entry, name, dataset, threat)
            lines = [
                f"id: {eid}",
                f"source: robustbench:{name}",
                f"dataset: {dataset}",
                f"threat_model: {threat}",
                *([f"preprocessing: {prep}"] if prep else []),
                f"architecture: {_yaml_str(arch)}",
                "training: see reference",
                f"reference: {MODEL_INFO_URL.format(dataset=dataset, threat=threat, name=name)}",
                "sha256: null",
                f"notes: {_yaml_str(' '.join(notes))}",
            ]
            path = folder / f"{eid}.yaml"
            keep = meta_block(path.read_text(encoding="utf-8")) if path.is_file() else ""  # metadata.py writes it
            path.write_text("\n".join(lines) + "\n" + keep, encoding="utf-8")
            written.add(f"{eid}.yaml")
        for stale in folder.glob("rb-*.yaml"):  # models robustbench dropped
            if stale.name not in written:
                stale.unlink()
        counts[f"{dataset}-{threat}"] = len(written)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.zoo_robustbench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write registry/models/<dataset>/robustbench/<threat>/*.yaml")
    g.add_argument("--out", type=Path, default=DEFAULT_REGISTRY / "models", help="the registry's models folder")
    g.add_argument("--quiet", action="store_true")
    g.add_argument("--only", default=None, help="comma-separated <dataset>-<threat> zoos, e.g. imagenet-Linf")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    only = [k.strip() for k in args.only.split(",") if k.strip()] if args.only else None
    counts = generate(args.out, quiet=args.quiet, only=only)
    for k, v in counts.items():
        print(f"{k}: {v} entries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def checkpoint_sources(spec: ModelSpec, registry: Registry | None,
                       model_dir: str | Path | None = None) -> list[tuple[Path, dict[str, Any]]] | str:
    """Where ``shiftbench fetch`` gets each checkpoint of a ``robustbench:`` entry: ``(target, how)``
    per file, ``how`` holding ``url`` and ``gdrive_id`` (robustbench's Google Drive id, downloaded by
    its own ``download_gdrive_new`` into the path its ``load_model`` uses) or ``sha256_prefix``
    (torchvision's file); a sentence instead when there is no public file to download."""
    entry, name, threat = _zoo_entry(spec)
    path = expected_path(spec, registry, model_dir)
    tv = TORCHVISION_WEIGHTS.get((spec.dataset, threat, name))
    if tv is not None:
        import re

        import torchvision.models as tvm

        url = getattr(tvm, tv[1])[tv[2]].url
        prefix = re.search(r"-([a-f0-9]{8,})\.", url.rsplit("/", 1)[-1]).group(1)
        return [(path, {"url": url, "sha256_prefix": prefix})]
    if timm_name_known(name, spec.dataset, threat):
        tname = timm_name(name, spec.dataset, threat)
        return (f"its weights are timm's '{tname}' on the Hugging Face hub, not a file robustbench downloads: "
                f"torch.save(timm.create_model('{tname}', pretrained=True).state_dict(), '{path}')")
    gid = entry.get("gdrive_id")
    if not gid:
        return "it has no checkpoint of its own (robustbench's constructor downloads weights)"
    ids = gid if isinstance(gid, list) else [gid]
    targets = [Path(f"{path}_m{i}.pt") for i in range(len(ids))] if isinstance(gid, list) else [path]
    return [(t, {"url": f"https://drive.google.com/uc?id={g}", "gdrive_id": g}) for t, g in zip(targets, ids)]
