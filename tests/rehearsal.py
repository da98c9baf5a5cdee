"""A dress rehearsal world for a real suite: format-faithful fake data for every dataset shift,
randomly initialised weights of a real architecture in RobustBench's cache layout, the LPIPS
feature networks in their publishers' layouts, and a user registry folder that pins what a user
pins (the networks' sha256 in the threat entries; the checkpoints go into the weights lock on
first use, as a user's do).  Used by ``tests/run/test_rehearsal.py`` and ``perf/gpu_check.sh``.

Every image is labelled with one class ``LABEL`` and the model's last layer is set so that it
predicts that class by a margin of a few logits: every image is clean-correct, so every cell
attacks all of its images and every attack stage runs, while the cross-entropy keeps a gradient.
"""
from __future__ import annotations

import functools
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from benchmark.data import loaders
from benchmark.registry import Registry, sha256_file

LABEL = 0  # every image's class (ImageNet: n01440764, tench)
OTHER = 1  # a second, empty class folder, so that masked sets (ImageNet-A/-R, ObjectNet) have two classes
MARGIN = 4.0  # logits by which the model prefers LABEL
IMAGES = 4  # images per dataset (per severity); cells use 2
REAL = Registry(check_files=False)

# One model per suite: real architectures (full rehearsal) and smaller ones of the same zoo (fast)
MODELS = {
    "cifar10-linf": {"full": "rb-cifar10-Linf-Carmon2019Unlabeled",  # WideResNet-28-10
                     "fast": "rb-cifar10-Linf-Rebuffi2021Fixing_R18_ddpm"},  # PreAct-ResNet-18
    "cifar10-l2": {"full": "rb-cifar10-L2-Rebuffi2021Fixing_R18_cutmix_ddpm",  # PreAct-ResNet-18
                   "fast": "rb-cifar10-L2-Rebuffi2021Fixing_R18_cutmix_ddpm"},
    "cifar100-linf": {"full": "rb-cifar100-Linf-Rebuffi2021Fixing_28_10_cutmix_ddpm",  # WideResNet-28-10
                      "fast": "rb-cifar100-Linf-Rebuffi2021Fixing_R18_ddpm"},
    "imagenet-linf": {"full": "rb-imagenet-Linf-Salman2020Do_R50",  # ResNet-50
                      "fast": "rb-imagenet-Linf-Salman2020Do_R18"},
}
# Fast form: each attack with a step or two (the full rehearsal uses the suite's own settings)
FAST_ARGS = {
    "apgd-mm": {"steps": 2, "targets": 1, "target_steps": 1, "polish_steps": 1},
    "ppgd": {"steps": 1, "cg_steps": 1}, "lpa": {"steps": 1, "binary_steps": 1},
    "stadv": {"steps": 2}, "recolor": {"steps": 2}, "jpeg": {"steps": 2}, "pixel-flow": {"steps": 2},
    "brightness-contrast": {"grid": 2, "steps": 1}, "rotation-translation": {"rotations": 2, "translations": 2},
}
IMAGENET_NAMES = ["n01440764/ILSVRC2012_val_00000293.JPEG", "n01440764/ILSVRC2012_val_00002138.JPEG",
                  "n01440764/ILSVRC2012_val_00003014.JPEG", "n01440764/ILSVRC2012_val_00006697.JPEG"]


@dataclass
class World:
    suite: str
    model: str
    registry: Path  # the user layer (over the built-in registry)
    data: Path
    models: Path
    results: Path
    lock: Path  # the weights lock ($SHIFTBENCH_WEIGHTS_LOCK)

    @functools.cached_property
    def registry_obj(self) -> Registry:
        """The registry `shiftbench --registry <layer>` sees: the built-in one, the layer over it."""
        from benchmark.registry import layered_location

        return Registry(layered_location(str(self.registry)))


# --------------------------------------------------------------------------- images
def _rng(seed: str) -> np.random.Generator:
    import zlib

    return np.random.default_rng(zlib.crc32(seed.encode()))


def _u8(n: int, h: int, w: int, seed: str) -> np.ndarray:
    """Smooth colour images (N, H, W, 3) uint8: random 4x4 blobs upsampled, as photos are smooth."""
    base = torch.from_numpy(_rng(seed).integers(0, 256, (n, 3, 4, 4)).astype(np.float32))
    up = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return up.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def _image_files(folder: Path, n: int, size: tuple[int, int], ext: str, seed: str, prefix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fmt = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "JPEG": "JPEG"}[ext]
    for i, a in enumerate(_u8(n, size[1], size[0], seed)):
        Image.fromarray(a).save(folder / f"{prefix}{i:04d}.{ext}", format=fmt)


def _cifar_pickle(path: Path, label_key: str, seed: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _u8(IMAGES, 32, 32, seed).transpose(0, 3, 1, 2).reshape(IMAGES, -1)
    with open(path, "wb") as fh:
        pickle.dump({"data": data, label_key: [LABEL] * IMAGES, "batch_label": b"testing batch 1 of 1"}, fh)


def _cifar_c(folder: Path, corruptions: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "labels.npy", np.full(5 * IMAGES, LABEL, np.int64))
    for c in corruptions:  # 5 severities x IMAGES, severity-major, as published
        np.save(folder / f"{c}.npy", _u8(5 * IMAGES, 32, 32, c))


def _objectnet(root: Path) -> None:
    """ObjectNet's four mapping files (1,000 ImageNet names in ObjectNet's own line order, a
    non-identity PyTorch index -> line map) and two class folders, one of them with images."""
    m = root / "objectnet-1.0" / "mappings"
    m.mkdir(parents=True)
    line_of = {i: (7 * i + 3) % 1000 for i in range(1000)}
    names = [""] * 1000
    for i, line in line_of.items():
        names[line] = f"imagenet class {i}"
    (m / "imagenet_to_label_2012_v2").write_text("\n".join(names) + "\n")
    (m / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): ln for i, ln in line_of.items()}))
    (m / "folder_to_objectnet_label.json").write_text(json.dumps({"fish": "Fish", "other": "Other", "spatula": "Spatula"}))
    (m / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Fish": f"imagenet class {LABEL}", "Other": f"imagenet class {OTHER}"}))  # Spatula: no ImageNet class
    _image_files(root / "objectnet-1.0" / "images" / "fish", IMAGES, (260, 260), "png", "objectnet")
    (root / "objectnet-1.0" / "images" / "other").mkdir()


def write_data(suite: str, root: Path) -> None:
    """Every file the suite's ID data and dataset shifts read, in their published formats."""
    s = REAL.suite(suite)
    corruptions = [REAL.shift(x).params["corruption"] for x in s.dataset_shifts if "-c-" in x]
    if s.dataset == "cifar10":
        _cifar_pickle(root / "cifar-10-batches-py" / "test_batch", "labels", "id")
        (root / "CIFAR-10.1").mkdir(parents=True)
        np.save(root / "CIFAR-10.1" / "cifar10.1_v6_data.npy", _u8(IMAGES, 32, 32, "c101"))
        np.save(root / "CIFAR-10.1" / "cifar10.1_v6_labels.npy", np.full(IMAGES, LABEL, np.int64))
        (root / "CIFAR-10.2").mkdir()
        keywords = np.empty(IMAGES, dtype=object)  # as published: an object array the loader must not read
        keywords[:] = ["jetliner"] * IMAGES
        np.savez(root / "CIFAR-10.2" / "cifar102_test.npz", images=_u8(IMAGES, 32, 32, "c102"),
                 labels=np.full(IMAGES, LABEL, np.int64), label_names=np.array(loaders.CIFAR10_CLASSES),
                 ti_indices=np.arange(IMAGES, dtype=np.int64), keywords=keywords)
        cls = loaders.CIFAR10_CLASSES[LABEL]
        _image_files(root / "CINIC-10" / "test" / cls, IMAGES, (32, 32), "png", "cinic", prefix="n02691156_")
        _image_files(root / "CINIC-10" / "test" / cls, 2, (32, 32), "png", "cinic-c", prefix="cifar10-test-")
        _image_files(root / "CIFAR-10-R" / cls, IMAGES, (48, 40), "png", "cifar10r")  # not yet box-resized
        _cifar_c(root / "CIFAR-10-C", corruptions)
    elif s.dataset == "cifar100":
        _cifar_pickle(root / "cifar-100-python" / "test", "fine_labels", "id100")
        _cifar_c(root / "CIFAR-100-C", corruptions)
    elif s.dataset == "imagenet":
        wnids = sorted(loaders.imagenet_wnid_to_index())
        wnid, other = wnids[LABEL], wnids[OTHER]
        for i, name in enumerate(IMAGENET_NAMES):  # val/ in RobustBench's layout, sizes around 224-288
            folder = root / "val" / name.split("/")[0]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_u8(1, 300 + 20 * i, 330, name)[0]).save(folder / name.split("/")[1], format="JPEG")
        for c in corruptions:  # published as 224 x 224 crops
            for sev in range(1, 6):
                for name in IMAGENET_NAMES:
                    d = root / "ImageNet-C" / c / str(sev) / name.split("/")[0]
                    d.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(_u8(1, 224, 224, f"{c}{sev}{name}")[0]).save(d / name.split("/")[1], format="JPEG")
        _image_files(root / "imagenetv2-matched-frequency-format-val" / str(LABEL), IMAGES, (320, 280), "jpeg", "v2")
        for folder in ("imagenet-a", "imagenet-r", "sketch"):
            _image_files(root / folder / wnid, IMAGES, (300, 260), "jpg" if folder != "sketch" else "JPEG", folder)
            (root / folder / other).mkdir()
        _objectnet(root)
    else:
        raise ValueError(suite)


# --------------------------------------------------------------------------- weights
def _bias_towards(state: dict, n_classes: int, model: torch.nn.Module) -> dict:
    """The checkpoint with its last layer rescaled so that random logits spread by about 1 (a
    random ResNet-50's spread by 240, which would leave cross-entropy without a gradient), and its
    class bias set so that the model predicts LABEL by MARGIN logits more than that spread."""
    bias = [k for k, v in state.items() if k.endswith("bias") and tuple(v.shape) == (n_classes,)][-1]
    weight = bias[: -len("bias")] + "weight"
    side = 224 if n_classes == 1000 else 32
    x = torch.rand(4, 3, side, side, generator=torch.Generator().manual_seed(0))

    def spread() -> float:
        model.load_state_dict(state)
        with torch.no_grad():
            z = model.eval()(x)
        return float((z.amax(1) - z.amin(1)).max())

    state[bias] = torch.zeros(n_classes)
    state[weight] = state[weight] / max(spread(), 1e-6)
    state[bias][LABEL] = spread() + MARGIN
    return state


def write_model(model_id: str, model_dir: Path) -> Path:
    """Random weights of the entry's architecture, saved as RobustBench saves checkpoints."""
    from benchmark.models import robustbench as zoo

    spec = REAL.model(model_id)
    torch.manual_seed(0)
    net = zoo.build_architecture(spec)
    n_classes = zoo.NUM_CLASSES[spec.dataset]
    state = _bias_towards({k: v.clone() for k, v in net.state_dict().items()}, n_classes, net)
    if spec.dataset == "imagenet":  # RobustBench's ImageNet checkpoints lack the normaliser's 'model.' prefix
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    path = zoo.expected_path(spec, None, model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path


def write_networks(model_dir: Path) -> dict[str, Path]:
    """The LPIPS feature networks in their publishers' layouts: perceptual-advex's CIFAR AlexNet
    (``{'model': {'model.features.*': ...}}``) and torchvision's AlexNet state dict."""
    from benchmark.attacks import lpips

    torch.manual_seed(1)
    out = {"cifar-alexnet": model_dir / "lpips" / "alexnet_cifar.pt",
           "alexnet": model_dir / "lpips" / "alexnet-owt-7be5be79.pth"}
    out["cifar-alexnet"].parent.mkdir(parents=True, exist_ok=True)
    cifar = lpips.cifar_alexnet()
    torch.save({"model": {f"model.features.{k}": v for k, v in cifar.features_seq.state_dict().items()}},
               out["cifar-alexnet"])
    import torchvision

    torch.save(torchvision.models.alexnet(weights=None).state_dict(), out["alexnet"])
    return out


# --------------------------------------------------------------------------- registry layer
def write_registry(suite: str, layer: Path, networks: dict[str, Path], fast: bool, data: Path) -> None:
    """The user's registry folder: the suite's perceptual threats with their networks' sha256
    written in (what docs/real-suites.md tells a user to do), shift entries whose published
    checksums or image lists fake files cannot match with those dropped or replaced by a list of
    the fake files, and (fast form) fewer attack steps."""
    s = REAL.suite(suite)
    for tid in (s.id_threat, *s.threat_shifts):
        t = REAL.threat(tid)
        entry = yaml.safe_load(Path(t.path).read_text())
        changed = False
        net = entry.get("params", {}).get("network")
        if net is not None:
            net.pop("sha256_prefix", None)
            net["sha256"] = sha256_file(networks[net["arch"]])
            changed = True
        if fast and t.attack in FAST_ARGS:
            entry["attack_args"] = dict(FAST_ARGS[t.attack])
            changed = True
        if changed:
            out = layer / "threats" / s.dataset / f"{tid}.yaml"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(yaml.safe_dump(entry, sort_keys=False))
    for sid in s.dataset_shifts:
        sh = REAL.shift(sid)
        listed = sh.params.get("image_ids")
        if not listed and not any(f.get("sha256") or f.get("md5") for f in sh.files):
            continue
        entry = yaml.safe_load(Path(sh.path).read_text())
        entry["files"] = [{"path": f["path"]} for f in entry["files"]]
        out = layer / "shifts" / s.dataset / f"{sid}.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        if listed:  # OODRobustBench's list names real files: a list of the fake ones, pinned the same way
            folder = data / entry["params"]["root"]
            skip = entry["params"].get("exclude_prefix") or "\0"
            names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                           if p.is_file() and not p.name.startswith(skip))
            lst = out.parent / f"{sid}_image_ids.txt"
            lst.write_text("\n".join(names) + "\n")
            entry["params"].update(image_ids=lst.name, image_ids_sha256=sha256_file(lst), limit=len(names))
        out.write_text(yaml.safe_dump(entry, sort_keys=False))
    layer.mkdir(parents=True, exist_ok=True)


def build(suite: str, root: Path, *, fast: bool) -> World:
    root.mkdir(parents=True, exist_ok=True)
    model = MODELS[suite]["fast" if fast else "full"]
    w = World(suite, model, root / "registry", root / "data", root / "models", root / "results",
              root / "weights.lock")
    write_data(suite, w.data)
    write_model(model, w.models)
    write_registry(suite, w.registry, write_networks(w.models), fast, w.data)
    return w


def patch_sources(monkeypatch) -> None:
    """What fake files cannot match and the tests cannot write: the published md5 of the
    CIFAR-10/100 test batches (dropped) and RobustBench's 5,000-image ImageNet list (our 4)."""
    for ds in ("cifar10", "cifar100"):
        src = dict(loaders.ID_SOURCES[ds], files=({"path": loaders.ID_SOURCES[ds]["files"][0]["path"]},))
        monkeypatch.setitem(loaders.ID_SOURCES, ds, src)
    monkeypatch.setattr(loaders, "robustbench_imagenet_list", lambda: list(IMAGENET_NAMES))


def fast_cells(suite: str) -> tuple[str, str]:
    """The fast form's sample: (shifts, threats) patterns with the ID data, the suite's ID threat,
    each threat shift and one dataset shift of each loader format, less those an earlier suite of
    :data:`MODELS` covers (cifar10-l2 shares cifar10-linf's entries); at least one dataset shift.
    A corruption's severity 3 brings its batch of five severities."""
    s = REAL.suite(suite)
    earlier = [REAL.suite(x) for x in list(MODELS)[:list(MODELS).index(suite)]]
    seen_shifts = {sid for e in earlier for sid in e.dataset_shifts}
    seen_threats = {t for e in earlier for t in e.threat_shifts}

    def fmt(sid: str) -> str:
        sh = REAL.shift(sid)
        return f"{sh.source} {sh.params.get('transform')} {sh.mask_logits}"

    covered = {fmt(sid) for sid in seen_shifts}
    picked: dict[str, str] = {}
    for sid in s.dataset_shifts:
        if fmt(sid) not in covered:
            picked.setdefault(fmt(sid), sid)
    chosen = list(picked.values()) or [s.dataset_shifts[-1]]
    shifts = ["id"] + [f"{sid}-3" if REAL.shift(sid).severities else sid for sid in chosen]
    threats = [s.id_threat] + [t for t in s.threat_shifts if t not in seen_threats]
    return ",".join(shifts), ",".join(threats)


__all__ = ["World", "build", "patch_sources", "fast_cells", "MODELS", "FAST_ARGS"]
