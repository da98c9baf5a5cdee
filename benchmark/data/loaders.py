"""Real datasets (CIFAR-10/100, ImageNet and their shifts) read from their published on-disk formats.

Nothing here downloads: a missing file raises :class:`DataMissingError` listing every missing
path under the data root and the URL to get it from.  Files an entry lists with a ``sha256``
(or ``md5``, where the source publishes only that) are checked before they are read.

Every loader returns ``(x, y)``: ``x`` float32 (N, C, H, W) in [0, 1], ``y`` int64 labels in the
*ID* class space (CIFAR-10 indices, or ImageNet-1k indices in the sorted-wnid order that
RobustBench and torchvision use).  Shifts that cover only some ID classes (ImageNet-A/-R: 200,
ObjectNet: 113) set ``mask_logits``; the evaluator then wraps the model with
:func:`masked_model` over :func:`logit_subset` and maps labels with :func:`subset_labels`.

Formats (``source: loader:<format>`` in a shift entry, settings in ``params``):

* ``npy-pair``   images + labels ``.npy`` (CIFAR-10.1 v6): params ``images``, ``labels``.
* ``npz``        one ``.npz`` (CIFAR-10.2): params ``file``, ``images_key``, ``labels_key``.
* ``cifar-c``    ``<dir>/<corruption>.npy`` (5 x 10,000 images, severity-major) + ``labels.npy``.
* ``image-folder`` ``<root>/<class>/*`` with ``label_map`` cifar10 | imagenet-wnid | imagenet-index;
  params ``root``, ``exclude_prefix`` (CINIC-10's CIFAR-origin files), ``transform`` (a fixed one,
  or ``model``: the evaluated model's preprocessing), ``limit`` (a fixed seeded subset), or
  ``image_ids`` + ``image_ids_sha256`` (a list shipped beside the entry: its first ``limit``
  images, in order; see :func:`fixed_image_list`).
* ``imagenet-c`` ``<dir>/<corruption>/<severity>/<wnid>/*.JPEG`` on RobustBench's 5,000-image list
  (or ``params.image_list``, a text file of ``<wnid>/<file>`` lines under the data root).
* ``objectnet``  ``objectnet-1.0/images/<folder>/*.png`` + ``objectnet-1.0/mappings/*``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..registry import DEFAULT_IMAGENET_PREPROCESSING, IMAGENET_PREPROCESSINGS, SHIFT_TRANSFORMS, ShiftSpec

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
SUBSET_SEED = 0  # fixed: which images a `limit` keeps must never change between runs

# In-distribution test sets.  md5 values are the ones torchvision publishes for these files.
ID_SOURCES: dict[str, dict[str, Any]] = {
    "cifar10": {
        "format": "cifar-pickle",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "files": ({"path": "cifar-10-batches-py/test_batch", "md5": "40351d587109b95175f43aff81a1287e"},),
        "label_key": "labels",
    },
    "cifar100": {
        "format": "cifar-pickle",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "files": ({"path": "cifar-100-python/test", "md5": "f0ef6b0ae62326f3e7ffdfab6717acfc"},),
        "label_key": "fine_labels",
    },
    "imagenet": {
        "format": "imagenet-list",
        "url": "https://image-net.org/download-images.php (ILSVRC2012 validation set, sorted into val/<wnid>/)",
        "files": ({"path": "val/"},),
        "root": "val",
    },
}


class DataMissingError(FileNotFoundError):
    """Dataset files are missing under the data root; the message says which and where to get them."""


class DataChecksumError(RuntimeError):
    """A dataset file does not match the checksum its entry gives."""


# --------------------------------------------------------------------------- file checks
_HASHED: dict[tuple[str, int, int, str], str] = {}


def _digest(path: Path, algo: str) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, algo)
    if key not in _HASHED:
        h = hashlib.new(algo)
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        _HASHED[key] = h.hexdigest()
    return _HASHED[key]


def file_digest(path: Path, algo: str = "sha256") -> str:
    """A file's md5 or sha256, hashed once per process and file version."""
    return _digest(Path(path), algo)


def check_files(files: Sequence[Mapping[str, Any]], root: Path, *, what: str, url: str | None,
                layout: str | None = None, hint: str | None = None) -> list[str]:
    """Raise if any listed file is missing (all of them named at once) or has the wrong checksum.

    A path ending in ``/`` names a folder that must exist.  Checksums are cached per
    (path, size, mtime) so repeated loads in one process hash each file once.  A file without a
    checksum in its entry is checked against the data root's lock file (:func:`_check_pinned`);
    returns those not pinned yet, for :func:`record_pins` once they have been read successfully.
    """
    missing = []
    for f in files:
        rel = str(f["path"])
        p = root / rel
        if not (p.is_dir() if rel.endswith("/") else p.is_file()):
            missing.append(rel)
    if missing:
        raise DataMissingError(_missing_message(what, root, missing, url, layout, hint))
    for f in files:
        p = root / str(f["path"])
        for algo in ("sha256", "md5"):
            want = f.get(algo)
            if want and p.is_file():
                got = _digest(p, algo)
                if got != want:
                    raise DataChecksumError(
                        f"{what}: {p} has {algo} {got}, the entry says {want}; the file is corrupt or a "
                        f"different version: re-download it from {url or 'its source'}"
                    )
    unpinned = []
    for f in files:
        p = root / str(f["path"])
        if p.is_file() and not (f.get("sha256") or f.get("md5")) and not _check_pinned(root, str(f["path"]), what, url):
            unpinned.append(str(f["path"]))
    return unpinned


DATA_LOCK = "shiftbench-data.lock"  # in the data root: sha256 of files whose entries give no checksum


def _check_pinned(root: Path, rel: str, what: str, url: str | None) -> bool:
    """A listed file without a published checksum is pinned in ``<data root>/shiftbench-data.lock``
    the first time it is read successfully (trust on first use, :func:`record_pins`) and verified
    on every later read (hashed once per process and file version), so a replaced file cannot
    serve stale results.  Returns whether the file is pinned already."""
    from .pins import PinError, read_pins

    lock = root / DATA_LOCK
    try:
        known = read_pins(lock).get(rel)
    except PinError as exc:
        raise DataChecksumError(f"{what}: {exc}") from None
    if known is None:
        return False
    got = _digest(root / rel, "sha256")
    if known.get("sha256") != got:
        raise DataChecksumError(
            f"{what}: {root / rel} has sha256 {got}, but {lock} pinned {known.get('sha256')} when it was first "
            f"read: the file was replaced. Restore it (from {url or 'its source'}), or delete its line in the "
            "lock file to trust the new one")
    return True


def record_pins(root: Path, rels: Sequence[str], what: str) -> None:
    """Pin files read successfully for the first time (see :func:`_check_pinned`), with a message."""
    import sys

    from .pins import pin

    for rel in rels:
        _, recorded = pin(root / DATA_LOCK, rel, {"sha256": _digest(root / rel, "sha256")})
        if recorded:
            print(f"{what}: {rel} has no published checksum; recorded its sha256 in {root / DATA_LOCK} (trust on "
                  "first use); later reads are verified against it", file=sys.stderr)


def _missing_message(what: str, root: Path, missing: Sequence[str], url: str | None,
                     layout: str | None, hint: str | None = None) -> str:
    lines = [f"{what}: dataset files missing under the data root {root} (set --data-dir or $SHIFTBENCH_DATA):"]
    lines += [f"  - {m}" for m in missing]
    if url:
        lines.append(f"Get them from {url} (nothing is downloaded automatically).")
    if layout:
        lines.append(f"Expected layout: {layout}")
    if hint:
        lines.append(hint)
    lines.append("See docs/real-suites.md.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- images
def _to_nchw(images: np.ndarray, what: str) -> torch.Tensor:
    """uint8 (N, H, W, C) or (N, C, H, W) arrays -> float32 (N, C, H, W) in [0, 1]."""
    a = np.asarray(images)
    if a.ndim != 4:
        raise ValueError(f"{what}: expected 4-d image array, got shape {a.shape}")
    if a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(a)).float().div_(255.0)
    else:
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        if x.numel() and float(x.max()) > 1.0:
            x = x / 255.0
    return x.clamp_(0, 1)


def _labels(a: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a).astype(np.int64).reshape(-1))


def image_transform(name: str | None) -> Callable[[Any], torch.Tensor]:
    """PIL image -> float tensor (C, H, W) in [0, 1].

    A model preprocessing (``registry.IMAGENET_PREPROCESSINGS``), built exactly as robustbench
    1.1.1 builds it: ``Res256Crop224`` (resize 256, center crop 224), ``BicubicRes256Crop224``,
    ``Crop288`` (center crop 288, no resize), ``Res224`` (resize to 224 x 224, no crop) and
    ``BicubicRes224Crop224`` (timm's config for the XCiT models).  Fixed transforms of shift entries:
    ``res256crop224`` (= ``Res256Crop224``), ``crop224`` (center crop only: ImageNet-C images are
    already 224 x 224), ``res32`` (CIFAR-sized re-collections resized to 32 x 32 if needed),
    ``box32`` (PIL box filter to 32 x 32, as CIFAR-10-R's make_cifar-r.py builds its images; a
    no-op on images it already made).
    """
    from PIL import Image
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    table = {
        "Res256Crop224": [T.Resize(256), T.CenterCrop(224)],
        "BicubicRes256Crop224": [T.Resize(256, interpolation=bicubic), T.CenterCrop(224)],
        "Crop288": [T.CenterCrop(288)],
        "Res224": [T.Resize([224, 224])],
        "BicubicRes224Crop224": [T.Resize(224, interpolation=bicubic), T.CenterCrop(224)],
        "res256crop224": [T.Resize(256), T.CenterCrop(224)],
        "crop224": [T.CenterCrop(224)],
        "res32": [T.Resize((32, 32))],
        "box32": [T.Lambda(lambda im: im if im.size == (32, 32) else im.resize((32, 32), Image.BOX))],
        None: [],
        "none": [],
    }
    assert set(SHIFT_TRANSFORMS) - {MODEL_TRANSFORM} <= set(table)
    if name not in table:
        raise ValueError(f"unknown transform {name!r}; known: {', '.join(str(k) for k in table if k)} (a shift "
                         f"entry's '{MODEL_TRANSFORM}' is resolved to the model's preprocessing first)")
    return T.Compose(table[name] + [T.ToTensor()])


def _read_images(paths: Sequence[Path], transform: Callable[[Any], torch.Tensor], *,
                 crop_border: int = 0) -> torch.Tensor:
    """Decode images in a few threads (PIL releases the GIL while decoding)."""
    from PIL import Image

    def one(p: Path) -> torch.Tensor:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if crop_border:
                im = im.crop((crop_border, crop_border, im.width - crop_border, im.height - crop_border))
            return transform(im)

    if not paths:
        raise ValueError("no images to read")
    workers = max(1, min(8, (os.cpu_count() or 1), len(paths) // 64 or 1))
    if workers == 1:
        out = [one(p) for p in paths]
    else:
        with ThreadPoolExecutor(workers) as pool:
            out = list(pool.map(one, paths))
    return torch.stack(out).clamp_(0, 1)


def _limit(items: list, limit: int | None) -> list:
    """A fixed, seeded subset of ``limit`` items (sorted by position), or all of them."""
    if not limit or len(items) <= limit:
        return items
    keep = np.sort(np.random.default_rng(SUBSET_SEED).permutation(len(items))[:limit])
    return [items[i] for i in keep]


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- class maps
def _robustbench_helper(name: str) -> Path:
    """A file in robustbench's helper_files, found without importing robustbench (slow)."""
    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("robustbench is not installed; it ships the ImageNet class map and 5,000-image list")
    return Path(list(spec.submodule_search_locations)[0]) / "helper_files" / name


def imagenet_wnid_to_index() -> dict[str, int]:
    """ImageNet-1k wnid -> class index (sorted wnids, as torchvision and RobustBench)."""
    with open(_robustbench_helper("imagenet_class_to_id_map.json"), encoding="utf-8") as fh:
        return {str(k): int(v) for k, v in json.load(fh).items()}


def robustbench_imagenet_list() -> list[str]:
    """RobustBench's fixed 5,000 ImageNet validation images, as ``<wnid>/<file>`` paths."""
    text = _robustbench_helper("imagenet_test_image_ids.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def class_index(label_map: str | None, folder: str, what: str) -> int:
    """The ID class index of an image folder's name under a label map."""
    if label_map == "cifar10":
        if folder not in CIFAR10_CLASSES:
            raise ValueError(f"{what}: folder '{folder}' is not a CIFAR-10 class ({', '.join(CIFAR10_CLASSES)})")
        return CIFAR10_CLASSES.index(folder)
    if label_map == "imagenet-wnid":
        table = imagenet_wnid_to_index()
        if folder not in table:
            raise ValueError(f"{what}: folder '{folder}' is not an ImageNet-1k wnid")
        return table[folder]
    if label_map == "imagenet-index":
        if not folder.isdigit() or not 0 <= int(folder) < 1000:
            raise ValueError(f"{what}: folder '{folder}' is not an ImageNet class index 0..999")
        return int(folder)
    raise ValueError(f"{what}: key 'label_map': unknown label map {label_map!r} for an image folder "
                     "(use cifar10, imagenet-wnid or imagenet-index)")


# --------------------------------------------------------------------------- preprocessing
MODEL_TRANSFORM = "model"  # a shift entry's params.transform that defers to the model's preprocessing


def model_preprocessing(dataset: str, preprocessing: str | None) -> str | None:
    """The preprocessing a model of ``dataset`` gets: its entry's, else ImageNet's default; none
    for CIFAR-sized data (used at 32 x 32 as stored)."""
    if dataset != "imagenet":
        if preprocessing is not None:
            raise ValueError(f"preprocessing {preprocessing!r} given for a {dataset} model; only ImageNet "
                             "models take one")
        return None
    if preprocessing is None:
        return DEFAULT_IMAGENET_PREPROCESSING
    if preprocessing not in IMAGENET_PREPROCESSINGS:
        raise ValueError(f"unknown preprocessing {preprocessing!r}; allowed: {', '.join(IMAGENET_PREPROCESSINGS)}")
    return preprocessing


def shift_preprocessing(spec: ShiftSpec, preprocessing: str | None) -> str | None:
    """What turns a shift's files into images for a model with this ``preprocessing``: the
    entry's fixed ``params.transform``, or the model's own where the entry says ``model``."""
    transform = dict(spec.params).get("transform")
    if transform == MODEL_TRANSFORM:
        return model_preprocessing(spec.dataset, preprocessing)
    return transform


# --------------------------------------------------------------------------- ID data
def load_id(dataset: str, split: str, root: Path,
            preprocessing: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ID test set of a real dataset (ImageNet: RobustBench's fixed 5,000 validation images,
    read with the model's ``preprocessing``, default ``Res256Crop224``)."""
    if split != "test":
        raise ValueError(f"only the test split of {dataset} is used by the benchmark, got split={split!r}")
    if dataset not in ID_SOURCES:
        raise KeyError(f"no loader for dataset '{dataset}' (known: digits, {', '.join(ID_SOURCES)})")
    preprocessing = model_preprocessing(dataset, preprocessing)
    src = ID_SOURCES[dataset]
    root = Path(root)
    what = f"{dataset} test set"
    check_files(src["files"], root, what=what, url=src["url"])
    if src["format"] == "cifar-pickle":
        with open(root / src["files"][0]["path"], "rb") as fh:
            d = pickle.load(fh, encoding="latin1")  # the official format; md5-checked above
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return _to_nchw(x, what), _labels(d[src["label_key"]])
    return _imagenet_list(root / src["root"], what=what, url=src["url"], transform=preprocessing)


def _imagenet_list(folder: Path, *, what: str, url: str | None, transform: str,
                   names: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``folder/<wnid>/<file>`` for each listed name (default: RobustBench's 5,000)."""
    wnids = imagenet_wnid_to_index()
    names = list(names) if names is not None else robustbench_imagenet_list()
    paths = [folder / n for n in names]
    missing = [str(p.relative_to(folder.parent)) for p in paths if not p.is_file()]
    if missing:
        shown = missing[:10] + ([f"... and {len(missing) - 10} more"] if len(missing) > 10 else [])
        raise DataMissingError(_missing_message(what, folder.parent, shown, url,
                                                f"{folder.name}/<wnid>/ILSVRC2012_val_*.JPEG"))
    y = torch.tensor([wnids[n.split("/")[0]] for n in names], dtype=torch.int64)
    return _read_images(paths, image_transform(transform)), y


# --------------------------------------------------------------------------- shifts
def load_shift(spec: ShiftSpec, severity: int | None, root: Path,
               preprocessing: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and ID-space labels of a ``loader:<format>`` dataset shift.

    Entries whose ``params.transform`` is ``model`` (the ImageNet image folders and ObjectNet) are
    read with the model's ``preprocessing``; the others with their own fixed transform."""
    root = Path(root)
    fmt = spec.source.partition(":")[2]
    if fmt not in FORMATS:
        raise KeyError(f"{spec.path}: key 'source': unknown loader format '{fmt}' (known: {', '.join(FORMATS)})")
    if spec.severities and severity not in spec.severities:
        raise ValueError(f"{spec.path}: shift '{spec.id}' has severities {list(spec.severities)}, not {severity}")
    hint = None
    if spec.archives:
        names = ", ".join(str(a["name"]) for a in spec.archives)
        hint = (f"Before extracting, check the download ({names}) against its published checksums: "
                f"shiftbench verify-archives --suite <suite> --shifts {spec.id} --archive-dir <folder>")
    unpinned = check_files(spec.files, root, what=f"{spec.path or spec.id}", url=spec.url, layout=spec.layout,
                           hint=hint)
    params = dict(spec.params)
    if params.get("transform") == MODEL_TRANSFORM:
        params["transform"] = shift_preprocessing(spec, preprocessing)
    x, y = FORMATS[fmt](spec, severity, root, params)
    record_pins(root, unpinned, f"{spec.path or spec.id}")
    return x, y


def _param(spec: ShiftSpec, params: dict, key: str) -> Any:
    if key not in params:
        raise KeyError(f"{spec.path}: key 'params': the {spec.source} loader needs params.{key}")
    return params[key]


def _npy_pair(spec: ShiftSpec, severity, root: Path, params: dict):
    x = np.load(root / _param(spec, params, "images"), allow_pickle=False)
    y = np.load(root / _param(spec, params, "labels"), allow_pickle=False)
    return _to_nchw(x, spec.id), _labels(y)


def _npz(spec: ShiftSpec, severity, root: Path, params: dict):
    """Two arrays of an ``.npz``.  Members are read lazily, so other members (CIFAR-10.2 also
    ships label names, Tiny Images indices and keywords) are never loaded, and never unpickled."""
    path = root / _param(spec, params, "file")
    keys = params.get("images_key", "images"), params.get("labels_key", "labels")
    with np.load(path, allow_pickle=False) as d:
        absent = [k for k in keys if k not in d.files]
        if absent:
            raise ValueError(f"{spec.path}: {path} has no array(s) {', '.join(absent)} (it holds "
                             f"{', '.join(d.files)}); expected layout: {spec.layout}")
        try:
            x, y = d[keys[0]], d[keys[1]]
        except ValueError as exc:  # an object array: would need pickle, which downloads never get
            raise ValueError(f"{spec.path}: {path}: {exc}; shiftbench does not unpickle downloaded files. "
                             f"Expected layout: {spec.layout}") from None
    return _to_nchw(x, spec.id), _labels(y)


def _cifar_c(spec: ShiftSpec, severity, root: Path, params: dict):
    folder = root / _param(spec, params, "dir")
    images = np.load(folder / f"{_param(spec, params, 'corruption')}.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(folder / "labels.npy", allow_pickle=False)
    per = params.get("per_severity", len(images) // 5)
    if len(images) != 5 * per or len(labels) < severity * per:
        raise ValueError(f"{spec.path}: {folder} holds {len(images)} images and {len(labels)} labels; "
                         f"expected 5 severities x {per}")
    sl = slice((severity - 1) * per, severity * per)
    return _to_nchw(np.array(images[sl]), spec.id), _labels(labels[sl])


def fixed_image_list(spec: ShiftSpec) -> list[str] | None:
    """The entry's fixed list of images (``params.image_ids``: a text file beside its YAML, one
    ``<class folder>/<file>`` per line, checked against ``params.image_ids_sha256``), cut to its
    first ``limit`` lines: the images a reference benchmark evaluates, in its order.  None when
    the entry has no list."""
    params = dict(spec.params)
    if not params.get("image_ids"):
        return None
    from ..registry import contained

    where = spec.path or spec.id
    path = contained(Path(spec.path).parent, str(params["image_ids"]), where, "params.image_ids")
    if not path.is_file():
        raise DataMissingError(f"{where}: key 'params.image_ids': {path} is missing; it ships with the registry")
    want = params.get("image_ids_sha256")
    got = _digest(path, "sha256")
    if not want or got != want:
        raise DataChecksumError(f"{where}: key 'params.image_ids_sha256': {path} has sha256 {got}, the entry says "
                                f"{want}; restore the file shipped with the registry")
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return names[:params["limit"]] if params.get("limit") else names


def _listed_items(spec: ShiftSpec, base: Path, names: Sequence[str], root: Path) -> list[tuple[Path, int]]:
    """(path, label) of each listed ``<class folder>/<file>`` under ``base``; all of them must exist."""
    missing = [n for n in names if not (base / n).is_file()]
    if missing:
        shown = missing[:10] + ([f"... and {len(missing) - 10} more"] if len(missing) > 10 else [])
        raise DataMissingError(_missing_message(spec.path or spec.id, root, [f"{base.relative_to(root)}/{m}" for m in shown],
                                                spec.url, spec.layout))
    labels = {f: class_index(spec.label_map, f, spec.path or spec.id) for f in {n.split("/")[0] for n in names}}
    return [(base / n, labels[n.split("/")[0]]) for n in names]


def _image_folder(spec: ShiftSpec, severity, root: Path, params: dict):
    base = root / _param(spec, params, "root")
    names = fixed_image_list(spec)
    if names is not None:  # a reference benchmark's images, in its order (no seeded subset)
        items = _listed_items(spec, base, names, root)
        x = _read_images([p for p, _ in items], image_transform(params.get("transform")))
        return x, torch.tensor([c for _, c in items], dtype=torch.int64)
    prefix = params.get("exclude_prefix")
    items: list[tuple[Path, int]] = []
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        label = class_index(spec.label_map, d.name, spec.path or spec.id)
        files = sorted(p for p in d.iterdir() if _is_image(p) and not (prefix and p.name.startswith(prefix)))
        items += [(p, label) for p in files]
    if not items:
        raise DataMissingError(_missing_message(spec.path or spec.id, root, [f"{params['root']}/<class>/<images>"],
                                                spec.url, spec.layout))
    items = _limit(items, params.get("limit"))
    x = _read_images([p for p, _ in items], image_transform(params.get("transform")))
    return x, torch.tensor([c for _, c in items], dtype=torch.int64)


def _imagenet_c(spec: ShiftSpec, severity, root: Path, params: dict):
    folder = root / _param(spec, params, "dir") / _param(spec, params, "corruption") / str(severity)
    names = None
    if params.get("image_list"):  # a text file of <wnid>/<file> lines under the data root
        names = [ln.strip() for ln in (root / params["image_list"]).read_text(encoding="utf-8").splitlines() if ln.strip()]
    return _imagenet_list(folder, what=spec.path or spec.id, url=spec.url, transform=params.get("transform", "crop224"),
                          names=names)


OBJECTNET_MAPPINGS = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                      "imagenet_to_label_2012_v2", "pytorch_to_imagenet_2012_id.json")


def _mapping_json(path: Path) -> Any:
    if not path.is_file():
        raise DataMissingError(f"ObjectNet mapping file missing: {path}; it ships in objectnet-1.0/mappings/ "
                               "of the ObjectNet download (https://objectnet.dev/download.html)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); re-extract it from the ObjectNet download") from None


def objectnet_groups(root: Path, base: str = "objectnet-1.0") -> dict[str, list[int]]:
    """ObjectNet image folder -> the ImageNet-1k indices it maps to (113 folders overlap ImageNet).

    Uses the four mapping files ObjectNet ships in ``mappings/``:

    * ``folder_to_objectnet_label.json``: image folder -> ObjectNet label;
    * ``objectnet_to_imagenet_1k.json``: ObjectNet label -> ``'; '``-separated ImageNet class names;
    * ``imagenet_to_label_2012_v2``: one ImageNet class name per line, in ObjectNet's own class order;
    * ``pytorch_to_imagenet_2012_id.json``: PyTorch class index (sorted wnids, the index models
      output) -> line number in ``imagenet_to_label_2012_v2``.

    The line order is *not* the PyTorch order, so names go name -> line -> PyTorch index, as in
    ObjectNet's own evaluation code and in CLIP_benchmark / imagenet-testbed.  With the published
    files the 113 ObjectNet classes map to 125 distinct ImageNet classes (no class is shared); a
    shared class is allowed (it scores for each ObjectNet class it belongs to), see
    :func:`objectnet_labels`.
    """
    m = Path(root) / base / "mappings"
    folder_to_label = _mapping_json(m / "folder_to_objectnet_label.json")
    label_to_imagenet = _mapping_json(m / "objectnet_to_imagenet_1k.json")
    pytorch_to_line = _mapping_json(m / "pytorch_to_imagenet_2012_id.json")
    names_file = m / "imagenet_to_label_2012_v2"
    if not names_file.is_file():
        raise DataMissingError(f"ObjectNet mapping file missing: {names_file}; it ships in objectnet-1.0/mappings/")
    lines = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines()]
    where = m / "pytorch_to_imagenet_2012_id.json"
    try:
        line_to_index = {int(line): int(idx) for idx, line in pytorch_to_line.items()}
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"{where}: expected a JSON object of PyTorch class index -> line number") from None
    if sorted(line_to_index.values()) != list(range(1000)) or len(line_to_index) != 1000:
        raise ValueError(f"{where}: expected the 1000 PyTorch class indices 0..999, each mapped to its own line")
    name_lines: dict[str, list[int]] = {}
    for i, name in enumerate(lines):
        if name:
            name_lines.setdefault(name, []).append(i)
    out: dict[str, list[int]] = {}
    for folder, label in folder_to_label.items():
        if label not in label_to_imagenet:
            continue  # one of the ObjectNet classes with no ImageNet counterpart
        ids = set()
        for name in (n.strip() for n in str(label_to_imagenet[label]).split(";")):
            if not name:
                continue
            found = name_lines.get(name, [])
            if len(found) != 1:
                problem = "is not a line of" if not found else f"is on {len(found)} lines of"
                raise ValueError(f"{m / 'objectnet_to_imagenet_1k.json'}: ImageNet class '{name}' (ObjectNet "
                                 f"'{label}') {problem} {names_file}; the mapping files do not match each other")
            if found[0] not in line_to_index:
                raise ValueError(f"{where}: no PyTorch class index for line {found[0]} ('{name}')")
            ids.add(line_to_index[found[0]])
        if ids:
            out[folder] = sorted(ids)
    return out


def objectnet_labels(groups: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """One ID-space label per ObjectNet folder: the smallest ImageNet index of its group that no
    other group holds, so that :func:`subset_labels` maps it back to its own ObjectNet class even
    where mapping files share an ImageNet class between two ObjectNet classes."""
    owners: dict[int, int] = {}
    for ids in groups.values():
        for i in ids:
            owners[i] = owners.get(i, 0) + 1
    out = {}
    for folder, ids in groups.items():
        own = [i for i in ids if owners[i] == 1]
        if not own:
            raise ValueError(f"ObjectNet mappings: every ImageNet class of folder '{folder}' ({list(ids)}) also "
                             "belongs to another ObjectNet class, so its images cannot be labelled; fix "
                             "objectnet_to_imagenet_1k.json")
        out[folder] = min(own)
    return out


def _objectnet(spec: ShiftSpec, severity, root: Path, params: dict):
    base = params.get("root", "objectnet-1.0")
    groups = objectnet_groups(root, base)
    labels = objectnet_labels(groups)
    items: list[tuple[Path, int]] = []
    for folder in sorted(groups):
        d = root / base / "images" / folder
        if d.is_dir():
            items += [(p, labels[folder]) for p in sorted(d.iterdir()) if _is_image(p)]
    if not items:
        raise DataMissingError(_missing_message(spec.path or spec.id, root, [f"{base}/images/<folder>/*.png"],
                                                spec.url, spec.layout))
    items = _limit(items, params.get("limit"))
    x = _read_images([p for p, _ in items], image_transform(params.get("transform", DEFAULT_IMAGENET_PREPROCESSING)),
                     crop_border=int(params.get("crop_border", 2)))
    return x, torch.tensor([c for _, c in items], dtype=torch.int64)


FORMATS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "npy-pair": _npy_pair,
    "npz": _npz,
    "cifar-c": _cifar_c,
    "image-folder": _image_folder,
    "imagenet-c": _imagenet_c,
    "objectnet": _objectnet,
}


# --------------------------------------------------------------------------- logit masking
def logit_subset(spec: ShiftSpec, root: Path) -> list[list[int]] | None:
    """The ID classes a ``mask_logits`` shift covers, as groups of ID indices (None: no masking).

    ImageNet-A/-R: one group per class folder present (200 each); ObjectNet: one group per
    overlapping ObjectNet class (113), holding every ImageNet class mapped to it.
    """
    if not spec.mask_logits:
        return None
    params = dict(spec.params)
    if spec.source == "loader:objectnet":
        groups = objectnet_groups(Path(root), params.get("root", "objectnet-1.0"))
        return [groups[f] for f in sorted(groups)]
    if spec.source == "loader:image-folder":
        base = Path(root) / _param(spec, params, "root")
        if not base.is_dir():
            raise DataMissingError(_missing_message(spec.path or spec.id, Path(root), [str(params["root"]) + "/"],
                                                    spec.url, spec.layout))
        idx = sorted({class_index(spec.label_map, d.name, spec.path or spec.id) for d in base.iterdir() if d.is_dir()})
        return [[i] for i in idx]
    raise ValueError(f"{spec.path}: key 'mask_logits': not supported for source '{spec.source}'")


class SubsetLogits(nn.Module):
    """Wrap a classifier so it scores only a subset of its classes.

    ``groups[k]`` lists the wrapped model's class indices that make up subset class ``k``; the
    subset logit is the max over the group (a group of one is a plain selection).  Gradients flow
    through, so attacks run on the masked model exactly as on any other.
    """

    def __init__(self, model: nn.Module, groups: Sequence[Sequence[int]]):
        super().__init__()
        if not groups or any(len(g) == 0 for g in groups):
            raise ValueError("masked_model needs non-empty class groups")
        self.model = model
        width = max(len(g) for g in groups)
        table = [list(g) + [g[0]] * (width - len(g)) for g in groups]  # pad by repeating: max unchanged
        self.register_buffer("index", torch.tensor(table, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits[:, self.index].amax(dim=-1)


def _as_groups(class_indices: Sequence[int | Sequence[int]]) -> list[list[int]]:
    return [[int(c)] if isinstance(c, (int, np.integer)) else [int(i) for i in c] for c in class_indices]


def masked_model(model: nn.Module, class_indices: Sequence[int | Sequence[int]]) -> nn.Module:
    """``model`` restricted to the given ID classes (ints, or groups of ints for ObjectNet)."""
    return SubsetLogits(model, _as_groups(class_indices)).eval()


def subset_labels(y: torch.Tensor, class_indices: Sequence[int | Sequence[int]]) -> torch.Tensor:
    """ID-space labels -> positions in the subset, to go with :func:`masked_model`."""
    pos: dict[int, int] = {}
    shared: set[int] = set()
    for k, g in enumerate(_as_groups(class_indices)):
        for c in g:
            if c in pos and pos[c] != k:
                shared.add(c)
            pos[c] = k
    present = {int(v) for v in y.tolist()}
    bad = sorted(present - set(pos))
    if bad:
        raise ValueError(f"labels {bad[:10]} are not in the masked class subset")
    if present & shared:
        raise ValueError(f"labels {sorted(present & shared)[:10]} belong to more than one masked class group")
    return torch.tensor([pos[int(v)] for v in y.tolist()], dtype=torch.int64)
