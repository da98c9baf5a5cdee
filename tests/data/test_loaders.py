"""Real-dataset loaders on tiny files written in each dataset's published on-disk format.

Every real shift entry of the CIFAR/ImageNet suites is read through ``benchmark.data.shifts.load_shift``
(the evaluator's path) from a fake data root holding a few images per dataset.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import benchmark  # noqa: F401
from benchmark.data import loaders
from benchmark.registry import FrozenMap, Registry, ShiftSpec
from benchmark.data.shifts import load_shift

REAL = Registry(check_files=False)  # other suites' weights may not be trained yet
WNIDS = loaders.imagenet_wnid_to_index()
SOME_WNIDS = ["n01440764", "n01443537", "n02119789", "n09468604"]  # indices 0, 1, ..., ...
RNG = np.random.default_rng(0)
CIFAR10_NAMES = list(loaders.CIFAR10_CLASSES)


def _png(path: Path, size: tuple[int, int], value: int | None = None, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.full((size[1], size[0], 3), value, np.uint8) if value is not None
           else RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    Image.fromarray(arr).save(path, format=fmt)


def _cifar_pickle(path: Path, n: int, label_key: str, n_classes: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = (np.arange(n) % n_classes).tolist()
    data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    with open(path, "wb") as fh:
        pickle.dump({"data": data, label_key: labels, "batch_label": b"testing batch 1 of 1"}, fh)
    return data


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A data root with every real format, a handful of images each."""
    r = tmp_path_factory.mktemp("data")
    _cifar_pickle(r / "cifar-10-batches-py" / "test_batch", 12, "labels", 10)
    _cifar_pickle(r / "cifar-100-python" / "test", 12, "fine_labels", 100)
    (r / "CIFAR-10.1").mkdir()
    np.save(r / "CIFAR-10.1" / "cifar10.1_v6_data.npy", RNG.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8))
    np.save(r / "CIFAR-10.1" / "cifar10.1_v6_labels.npy", np.array([0, 1, 2, 3, 4, 9]))
    (r / "CIFAR-10.2").mkdir()  # the published .npz keys (README of modestyachts/cifar-10.2)
    keywords = np.empty(5, dtype=object)  # an object array: loading it would need pickle
    keywords[:] = ["jetliner", "tractor", "tabby", "mare", "sedan"]
    np.savez(r / "CIFAR-10.2" / "cifar102_test.npz", images=RNG.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
             labels=np.array([9, 8, 7, 6, 5], dtype=np.int64), label_names=np.array(CIFAR10_NAMES),
             ti_indices=np.arange(5, dtype=np.int64), keywords=keywords)
    for cls in ("airplane", "truck"):  # two ImageNet-origin images and one CIFAR-origin per class
        for name in ("n0000_1.png", "n0000_2.png", "cifar10-train-1.png"):
            _png(r / "CINIC-10" / "test" / cls / name, (32, 32))
    for cls in ("bird", "ship"):  # one not yet downsampled, one as make_cifar-r.py leaves it (32x32 PNG)
        _png(r / "CIFAR-10-R" / cls / "a.png", (40, 40) if cls == "bird" else (32, 32))
    for d, n_cls in (("CIFAR-10-C", 10), ("CIFAR-100-C", 100)):
        (r / d).mkdir()
        per = 4  # 5 severities x 4 images; severity s is filled with the value 10 * s
        imgs = np.concatenate([np.full((per, 32, 32, 3), 10 * s, np.uint8) for s in range(1, 6)])
        np.save(r / d / "labels.npy", np.tile(np.arange(per) % n_cls, 5).astype(np.int64))
        for c in loaders_corruptions():
            np.save(r / d / f"{c}.npy", imgs)
    # ImageNet family
    for i, w in enumerate(SOME_WNIDS[:3]):
        _png(r / "imagenetv2-matched-frequency-format-val" / str(WNIDS[w]) / f"{i}.jpeg", (300, 260), fmt="JPEG")
        _png(r / "imagenet-a" / w / f"{i}.jpg", (260, 300), fmt="JPEG")
        _png(r / "imagenet-r" / w / f"{i}.jpg", (256, 256), fmt="JPEG")
        _png(r / "sketch" / w / f"{i}.JPEG", (400, 300), fmt="JPEG")
    names = [f"{w}/ILSVRC2012_val_0000000{i}.JPEG" for i, w in enumerate(SOME_WNIDS)]
    (r / "imagenet_list.txt").write_text("\n".join(names) + "\n")
    for c in loaders_corruptions():
        for sev in (1, 5):
            for n in names:
                _png(r / "ImageNet-C" / c / str(sev) / n, (224, 224), value=40 * sev, fmt="JPEG")
    on = r / "objectnet-1.0"
    (on / "mappings").mkdir(parents=True)
    (on / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(
        {"chair": "Chair", "tench_folder": "Tench", "spatula": "Spatula"}))
    (on / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Chair": "barber chair; folding chair", "Tench": "tench"}))  # Spatula: not in ImageNet
    # ObjectNet lists ImageNet names in its own line order; pytorch_to_imagenet_2012_id.json maps
    # each PyTorch index (sorted wnids) to its line.  A non-identity order, as in the real files.
    line_of = {i: (7 * i + 3) % 1000 for i in range(1000)}
    labels_2012 = [""] * 1000
    for i, line in line_of.items():
        labels_2012[line] = {0: "tench", 423: "barber chair", 559: "folding chair"}.get(i, f"class{i}")
    (on / "mappings" / "imagenet_to_label_2012_v2").write_text("\n".join(labels_2012) + "\n")
    (on / "mappings" / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps(
        {str(i): line for i, line in line_of.items()}))
    for folder in ("chair", "tench_folder", "spatula"):
        _png(on / "images" / folder / "x.png", (240, 240))
    return r


def loaders_corruptions() -> list[str]:
    return [REAL.shift(s).params["corruption"] for s in REAL.suite("cifar10-linf").dataset_shifts
            if s.startswith("cifar10-c-")]


def _ok(x: torch.Tensor, y: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert tuple(x.shape[1:]) == shape and len(x) == len(y)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


# --------------------------------------------------------------------------- ID data
def test_cifar_id_pickles(root, monkeypatch):
    with pytest.raises(loaders.DataChecksumError, match="md5"):  # the real md5 is enforced
        loaders.load_id("cifar10", "test", root)
    for ds in ("cifar10", "cifar100"):  # fake files cannot match the published md5: drop it here only
        src = dict(loaders.ID_SOURCES[ds], files=({"path": loaders.ID_SOURCES[ds]["files"][0]["path"]},))
        monkeypatch.setitem(loaders.ID_SOURCES, ds, src)
    x, y = loaders.load_id("cifar10", "test", root)
    _ok(x, y, (3, 32, 32))
    raw = pickle.load(open(root / "cifar-10-batches-py" / "test_batch", "rb"))
    np.testing.assert_allclose(x[3].numpy(), raw["data"][3].reshape(3, 32, 32) / 255.0, atol=1e-6)
    assert y.tolist() == raw["labels"]
    x, y = loaders.load_id("cifar100", "test", root)
    _ok(x, y, (3, 32, 32))
    assert y.max() == 11


def test_missing_dataset_lists_files_and_url(tmp_path):
    with pytest.raises(loaders.DataMissingError) as e:
        loaders.load_id("cifar10", "test", tmp_path)
    msg = str(e.value)
    assert "cifar-10-batches-py/test_batch" in msg and "cifar-10-python.tar.gz" in msg and str(tmp_path) in msg
    with pytest.raises(loaders.DataMissingError) as e:
        load_shift(REAL.shift("cifar10.1"), None, data_dir=tmp_path / "x")
    msg = str(e.value)
    assert "cifar10.1_v6_data.npy" in msg and "cifar10.1_v6_labels.npy" in msg and "modestyachts" in msg
    with pytest.raises(loaders.DataMissingError, match="CIFAR-10-C.tar.*verify-archives .* --shifts cifar10-c-fog"):
        load_shift(REAL.shift("cifar10-c-fog"), 1, data_dir=tmp_path / "x")


def test_imagenet_id_uses_robustbench_list(tmp_path):
    names = loaders.robustbench_imagenet_list()
    assert len(names) == 5000 and len(set(names)) == 5000 and len(WNIDS) == 1000
    assert sorted(WNIDS, key=WNIDS.get) == sorted(WNIDS)  # index order = sorted wnids
    (tmp_path / "val").mkdir()
    with pytest.raises(loaders.DataMissingError, match="and 4990 more"):
        loaders.load_id("imagenet", "test", tmp_path)


def _rb_preprocessings() -> dict:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from robustbench.data import PREPROCESSINGS
    return PREPROCESSINGS


def _imagenet_val(root: Path, names: list[str]) -> None:
    """ILSVRC2012 validation files in the layout RobustBench reads: val/<wnid>/ILSVRC2012_val_*.JPEG."""
    sizes = [(500, 375), (375, 500), (300, 260), (260, 300), (640, 480), (250, 200)]  # some below 288
    for name, size in zip(names, sizes * len(names)):
        _png(root / "val" / name, size, fmt="JPEG")


def test_imagenet_id_val_folder_with_model_preprocessing(tmp_path, monkeypatch):
    """The ID set read from a val/ folder in the real layout, with each model's preprocessing,
    pixel for pixel as robustbench 1.1.1 builds it.  The real list has 5,000 files; the test writes
    the first six of them and reads the list's first six."""
    names = loaders.robustbench_imagenet_list()[:6]
    _imagenet_val(tmp_path, names)
    monkeypatch.setattr(loaders, "robustbench_imagenet_list", lambda: list(names))
    rb = _rb_preprocessings()
    x, y = loaders.load_id("imagenet", "test", tmp_path)  # no preprocessing given: Res256Crop224
    _ok(x, y, (3, 224, 224))
    assert y.tolist() == [WNIDS[n.split("/")[0]] for n in names]
    for prep in ("Res256Crop224", "BicubicRes256Crop224", "Crop288", "Res224"):
        xp, yp = loaders.load_id("imagenet", "test", tmp_path, prep)
        assert torch.equal(yp, y)
        for i in (0, 5):  # a large image and one smaller than 288 (Crop288 pads it, as robustbench does)
            with Image.open(tmp_path / "val" / names[i]) as im:
                want = rb[prep](im.convert("RGB"))
            torch.testing.assert_close(xp[i], want, rtol=0, atol=0)
        if prep == "Res256Crop224":
            assert torch.equal(xp, x)
    assert loaders.load_id("imagenet", "test", tmp_path, "Crop288")[0].shape[-1] == 288
    with pytest.raises(ValueError, match="unknown preprocessing"):
        loaders.load_id("imagenet", "test", tmp_path, "Crop256")
    (tmp_path / "val" / names[2]).unlink()
    with pytest.raises(loaders.DataMissingError, match=names[2]):
        loaders.load_id("imagenet", "test", tmp_path)


def test_timm_derived_preprocessing_matches_robustbench():
    """robustbench derives the XCiT models' preprocessing from timm's config; ours is the same."""
    import warnings

    from benchmark.models import robustbench as zoo_robustbench

    model_dicts, BD, TM, _ = zoo_robustbench._robustbench()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from robustbench.data import get_preprocessing
    name = "Debenedetti2022Light_XCiT-S12"
    entry = model_dicts[BD("imagenet")][TM("Linf")][name]
    assert zoo_robustbench.robustbench_preprocessing(entry, name, "imagenet", "Linf") == "BicubicRes224Crop224"
    img = Image.fromarray(RNG.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    want = get_preprocessing(BD("imagenet"), TM("Linf"), name, None)(img)
    torch.testing.assert_close(loaders.image_transform("BicubicRes224Crop224")(img), want, rtol=0, atol=0)


# --------------------------------------------------------------------------- shifts (real entries)
def without_checksums(spec: ShiftSpec) -> ShiftSpec:
    """The entry with its files' published checksums dropped: fake files cannot match them."""
    return dataclasses.replace(spec, files=tuple(FrozenMap(path=f["path"]) for f in spec.files))


def without_list(spec: ShiftSpec) -> ShiftSpec:
    """The entry with OODRobustBench's image list dropped (a seeded subset of what is there): the
    fake folders hold other files than the list names."""
    params = {k: v for k, v in spec.params.items() if not k.startswith("image_ids")}
    return dataclasses.replace(spec, params=FrozenMap(params))


def test_cifar10_natural_shifts(root):
    with pytest.raises(loaders.DataChecksumError, match="cifar10.1_v6_data.npy has sha256"):
        load_shift(REAL.shift("cifar10.1"), None, data_dir=root)  # the published sha256 is enforced
    x, y = load_shift(without_checksums(REAL.shift("cifar10.1")), None, data_dir=root)
    _ok(x, y, (3, 32, 32))
    assert y.tolist() == [0, 1, 2, 3, 4, 9]
    x, y = load_shift(REAL.shift("cifar10.2"), None, data_dir=root)  # never touches the pickled keywords
    _ok(x, y, (3, 32, 32))
    assert y.tolist() == [9, 8, 7, 6, 5]
    with np.load(root / "CIFAR-10.2" / "cifar102_test.npz") as d:
        assert "keywords" in d.files
        np.testing.assert_allclose(x.numpy(), d["images"].transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
    x, y = load_shift(without_list(REAL.shift("cinic10")), None, data_dir=root)
    _ok(x, y, (3, 32, 32))
    assert y.tolist() == [0, 0, 9, 9]  # the cifar10-* files are left out
    x, y = load_shift(without_list(REAL.shift("cifar10-r")), None, data_dir=root)
    _ok(x, y, (3, 32, 32))
    assert y.tolist() == [2, 8]
    for i, cls in enumerate(("bird", "ship")):  # the authors' downsampling: PIL box filter to 32x32
        with Image.open(root / "CIFAR-10-R" / cls / "a.png") as im:
            want = np.asarray(im.convert("RGB").resize((32, 32), Image.BOX), dtype=np.float32) / 255
        np.testing.assert_allclose(x[i].permute(1, 2, 0).numpy(), want, atol=1e-6)


def test_cifar102_refuses_pickled_arrays_and_says_how_to_convert(tmp_path):
    spec = REAL.shift("cifar10.2")
    (tmp_path / "CIFAR-10.2").mkdir()
    images = np.empty(2, dtype=object)  # images stored as objects would need pickle: refused
    images[:] = [np.zeros((32, 32, 3), np.uint8)] * 2
    np.savez(tmp_path / "CIFAR-10.2" / "cifar102_test.npz", images=images, labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="does not unpickle downloaded files"):
        load_shift(spec, None, data_dir=tmp_path)
    np.savez(tmp_path / "CIFAR-10.2" / "cifar102_test.npz", data=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="no array.s. images, labels"):
        load_shift(spec, None, data_dir=tmp_path)
    (tmp_path / "CIFAR-10.2" / "cifar102_test.npz").unlink()
    with pytest.raises(loaders.DataMissingError) as e:  # an old .npy copy: the message has the one-line conversion
        load_shift(spec, None, data_dir=tmp_path)
    assert "np.savez('cifar102_test.npz', images=d['images'], labels=d['labels'])" in str(e.value)


@pytest.mark.parametrize("sid", ["cifar10-c-fog", "cifar100-c-jpeg_compression"])
def test_cifar_c_severity_slices(root, sid):
    spec = REAL.shift(sid)
    for sev in (1, 3, 5):
        x, y = load_shift(spec, sev, data_dir=root)
        _ok(x, y, (3, 32, 32))
        assert len(x) == 4 and torch.allclose(x, torch.full_like(x, 10 * sev / 255))
    with pytest.raises(ValueError, match="severities"):
        load_shift(spec, 6, data_dir=root)


def test_imagenet_folders_and_class_maps(root):
    idx = [WNIDS[w] for w in SOME_WNIDS[:3]]
    for sid in ("imagenet-v2", "imagenet-a", "imagenet-r", "imagenet-sketch"):
        spec = without_list(REAL.shift(sid))
        x, y = load_shift(spec, None, data_dir=root)
        _ok(x, y, (3, 224, 224))
        assert sorted(y.tolist()) == sorted(idx), sid
        subset = loaders.logit_subset(spec, root)
        assert spec.mask_logits == (sid in ("imagenet-a", "imagenet-r"))
        if spec.mask_logits:
            assert subset == [[i] for i in sorted(idx)]
        else:
            assert subset is None
        assert spec.params["transform"] == "model"  # read with the evaluated model's preprocessing
        x288, y288 = load_shift(spec, None, data_dir=root, preprocessing="Crop288")
        assert x288.shape[-2:] == (288, 288) and torch.equal(y288, y)
        assert torch.equal(load_shift(spec, None, data_dir=root, preprocessing="Res256Crop224")[0], x)


def test_cells_read_imagenet_with_the_models_preprocessing(root, monkeypatch):
    """The evaluator's path: a cell's data depends on its model's preprocessing (ImageNet only),
    ImageNet-C is used as published (224 x 224) for every model, and results record it."""
    from benchmark.run.evaluate import Outcome, cell_data, cell_preprocessing, result_payload
    from benchmark.run.plan import Cell
    from benchmark.registry import ModelSpec

    monkeypatch.setenv("SHIFTBENCH_DATA", str(root))  # cell_data without data_dir reads $SHIFTBENCH_DATA
    threat = REAL.threat("imagenet-linf-4")

    def model(prep):
        return ModelSpec(id=f"m-{prep}", source="python:x:y", dataset="imagenet", architecture="x",
                         training="x", preprocessing=prep)

    sketch = without_list(REAL.shift("imagenet-sketch"))
    cells = {p: Cell("imagenet-linf", model(p), sketch, None, threat, "dataset", 3, 0)
             for p in ("Res224", "Crop288", None)}
    shapes = {p: tuple(cell_data(c)[0].shape[-2:]) for p, c in cells.items()}
    assert shapes == {"Res224": (224, 224), "Crop288": (288, 288), None: (224, 224)}
    assert [cell_preprocessing(c) for c in cells.values()] == ["Res224", "Crop288", "Res256Crop224"]
    assert len({c.key for c in cells.values()}) == 3  # the model entry's preprocessing is in the cell hash
    base = REAL.shift("imagenet-c-fog")
    imc = dataclasses.replace(base, params=FrozenMap({**base.params, "image_list": "imagenet_list.txt"}))
    c288 = Cell("imagenet-linf", model("Crop288"), imc, 1, threat, "dataset", 4, 0)
    assert cell_preprocessing(c288) == "crop224" and cell_data(c288)[0].shape[-1] == 224
    n = 3
    out = Outcome(np.ones(n, bool), np.zeros(n, bool), 0.0, 0.0, {})
    assert result_payload(cells["Crop288"], out, "apgd-mm")["preprocessing"] == "Crop288"
    assert result_payload(c288, out, "apgd-mm")["preprocessing"] == "crop224"
    cifar = Cell("cifar10-linf", REAL.model("autoattack-resnet18"), None, None, REAL.threat("cifar10-linf-8"), "id", 3, 0)
    assert cell_preprocessing(cifar) is None


def test_imagenet_c_list_and_severity(root):
    base = REAL.shift("imagenet-c-fog")
    spec = dataclasses.replace(base, params=FrozenMap({**base.params, "image_list": "imagenet_list.txt"}))
    x1, y = load_shift(spec, 1, data_dir=root)
    x5, _ = load_shift(spec, 5, data_dir=root)
    _ok(x1, y, (3, 224, 224))
    assert y.tolist() == [WNIDS[w] for w in SOME_WNIDS]
    assert abs(float(x1.mean()) - 40 / 255) < 0.02 and abs(float(x5.mean()) - 200 / 255) < 0.02
    with pytest.raises(loaders.DataMissingError):  # the real entry wants all 5,000 listed images
        load_shift(base, 1, data_dir=root)


def test_objectnet_groups_and_mask(root):
    spec = REAL.shift("objectnet")
    x, y = load_shift(spec, None, data_dir=root)
    _ok(x, y, (3, 224, 224))
    assert sorted(y.tolist()) == [0, 423]  # spatula has no ImageNet class: left out
    groups = loaders.logit_subset(spec, root)
    assert groups == [[423, 559], [0]]  # sorted by folder: chair, tench_folder
    assert loaders.subset_labels(y, groups).tolist() == [0, 1]


def test_objectnet_mapping_checks(root, tmp_path):
    import shutil

    base = tmp_path / "objectnet-1.0"
    shutil.copytree(root / "objectnet-1.0" / "mappings", base / "mappings")
    (base / "mappings" / "pytorch_to_imagenet_2012_id.json").unlink()
    with pytest.raises(loaders.DataMissingError, match="pytorch_to_imagenet_2012_id.json"):
        loaders.objectnet_groups(tmp_path)
    with pytest.raises(loaders.DataMissingError, match="mappings/pytorch_to_imagenet_2012_id.json"):
        load_shift(REAL.shift("objectnet"), None, data_dir=tmp_path)  # the entry lists the file
    shutil.copy(root / "objectnet-1.0" / "mappings" / "pytorch_to_imagenet_2012_id.json", base / "mappings")
    (base / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps({"Chair": "barber chair; stool"}))
    with pytest.raises(ValueError, match="'stool' .* is not a line of"):
        loaders.objectnet_groups(tmp_path)


def test_objectnet_shared_imagenet_class_is_scored_for_both():
    """The published mappings share no ImageNet class, but a shared one must not mislabel images."""
    groups = {"chair": [423, 559], "stool": [559, 700]}
    labels = loaders.objectnet_labels(groups)
    assert labels == {"chair": 423, "stool": 700}
    order = [groups[f] for f in sorted(groups)]
    assert loaders.subset_labels(torch.tensor([423, 700]), order).tolist() == [0, 1]
    with pytest.raises(ValueError, match="more than one"):
        loaders.subset_labels(torch.tensor([559]), order)
    with pytest.raises(ValueError, match="folder 'stool'"):
        loaders.objectnet_labels({"chair": [423, 559], "stool": [559]})


# --------------------------------------------------------------------------- masking
def test_masked_model_selects_and_pools_logits():
    base = torch.nn.Linear(4, 6)
    x = torch.randn(5, 4, requires_grad=True)
    full = base(x)
    m = loaders.masked_model(base, [3, [1, 5], 0])
    out = m(x)
    assert out.shape == (5, 3)
    torch.testing.assert_close(out[:, 0], full[:, 3])
    torch.testing.assert_close(out[:, 1], torch.maximum(full[:, 1], full[:, 5]))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert loaders.subset_labels(torch.tensor([5, 0, 3, 1]), [3, [1, 5], 0]).tolist() == [1, 2, 0, 1]
    with pytest.raises(ValueError, match="not in the masked"):
        loaders.subset_labels(torch.tensor([2]), [3, [1, 5], 0])


def test_checksum_mismatch_names_file(root, tmp_path):
    spec = ShiftSpec(id="c101", dataset="cifar10", source="loader:npy-pair", family="natural",
                     params=FrozenMap(images="CIFAR-10.1/cifar10.1_v6_data.npy",
                                      labels="CIFAR-10.1/cifar10.1_v6_labels.npy"),
                     files=({"path": "CIFAR-10.1/cifar10.1_v6_data.npy", "sha256": "0" * 64},), url="https://x")
    with pytest.raises(loaders.DataChecksumError, match="cifar10.1_v6_data.npy has sha256"):
        loaders.load_shift(spec, None, root)


@pytest.mark.parametrize("sid", ["imagenet-v2", "imagenet-a", "imagenet-r", "imagenet-sketch", "cinic10", "cifar10-r"])
def test_natural_sets_use_the_reference_image_lists(tmp_path, sid):
    """ImageNet-V2/-A/-R/-Sketch, CINIC-10 and CIFAR-10-R are OODRobustBench's first 5,000 (10,000;
    all 6,837) listed images, in its order, with labels from their folders; the shipped list is
    checked against its sha256, every listed file must be there."""
    spec = REAL.shift(sid)
    names = loaders.fixed_image_list(spec)
    size = {"cinic10": 10_000, "cifar10-r": 6837}.get(sid, 5000)
    assert len(names) == size == len(set(names)) and spec.params.get("limit", size) == size
    assert spec.version == 2 and "1be449c3904b6c48653dd6b98380c514ca984ecd" in spec.params["image_ids_source"]
    base = tmp_path / spec.params["root"]
    for n in names[:3] + names[-1:] + names[100:102]:  # a few of the listed files, and one that is not listed
        _png(base / n, (300, 260), fmt="JPEG")
    _png(base / names[0].split("/")[0] / "not-listed.jpg", (300, 260), fmt="JPEG")
    with pytest.raises(loaders.DataMissingError, match=f"and {size - 16} more"):
        load_shift(spec, None, data_dir=tmp_path)
    three = dataclasses.replace(spec, params=FrozenMap({**spec.params, "limit": 3}))
    x, y = load_shift(three, None, data_dir=tmp_path)
    cifar = sid in ("cinic10", "cifar10-r")
    _ok(x, y, (3, 32, 32) if cifar else (3, 224, 224))
    folder = [n.split("/")[0] for n in names[:3]]
    want = [int(f) if sid == "imagenet-v2" else CIFAR10_NAMES.index(f) if cifar else WNIDS[f] for f in folder]
    assert y.tolist() == want  # the list's order, its folders' labels
    transform = {"cinic10": "res32", "cifar10-r": "box32"}.get(sid, "Res256Crop224")  # else the model's (default)
    with Image.open(base / names[1]) as im:
        torch.testing.assert_close(x[1], loaders.image_transform(transform)(im.convert("RGB")), rtol=0, atol=0)
    bad = dataclasses.replace(three, params=FrozenMap({**three.params, "image_ids_sha256": "0" * 64}))
    with pytest.raises(loaders.DataChecksumError, match="image_ids_sha256"):
        load_shift(bad, None, data_dir=tmp_path)
