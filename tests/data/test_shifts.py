"""Digits dataset shifts: every registered entry is deterministic, shape/range preserving, and
more severity does more damage; the fonts shift is balanced; show-shifts writes a PNG.

These use the real registry entries (``registry/shifts/digits``) through the real loading path
(:func:`benchmark.data.shifts.load_shift`)."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmark.data import corruptions, datasets, shifts
from benchmark.data import picture as showshifts
from benchmark.registry import Registry

REG = Registry(check_files=False)  # shifts need no model weights (the zoo may be untrained)
DIGITS_SHIFTS = sorted((s for s in REG.entries["shifts"].values() if s.dataset == "digits"), key=lambda s: s.id)
SYNTHETIC = [s for s in DIGITS_SHIFTS if s.source.startswith("synthetic:")]
GENERATED = [s for s in DIGITS_SHIFTS if s.source.startswith("generated:")]
CLEAN, LABELS = datasets.digits("test")


def load(spec, severity, seed=0):
    x, y = shifts.load_shift(spec, severity, seed=seed)
    return x.numpy(), y.numpy()


def test_enough_shifts_of_each_kind():
    assert len(DIGITS_SHIFTS) >= 15
    assert {s.family for s in DIGITS_SHIFTS} >= {"noise", "blur", "digital", "geometric", "natural"}
    assert GENERATED, "at least one naturalistic shift not made by corrupting the ID images"
    for spec in SYNTHETIC:
        assert spec.severities == (1, 2, 3, 4, 5), spec.path


@pytest.mark.parametrize("spec", SYNTHETIC, ids=lambda s: s.id)
def test_corruption_contract_and_monotone_damage(spec):
    damage = []
    previous = None
    for sev in spec.severities:
        x, y = load(spec, sev)
        assert x.shape == (len(CLEAN), 1, 16, 16) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        np.testing.assert_array_equal(y, LABELS)  # labels untouched, order kept
        # same seed: the same bytes, straight from the generator (not just the cache)
        fn = corruptions.CORRUPTIONS[spec.source.split(":", 1)[1]]
        a = fn(CLEAN, sev, np.random.default_rng(7), **dict(spec.params))
        b = fn(CLEAN, sev, np.random.default_rng(7), **dict(spec.params))
        assert a.tobytes() == b.tobytes()
        assert not np.array_equal(x[:, 0], CLEAN), f"{spec.id} severity {sev} changes nothing"
        if previous is not None:
            assert not np.array_equal(x, previous), f"{spec.id}: severities {sev - 1} and {sev} are identical"
        previous = x
        damage.append(float(np.abs(x[:, 0] - CLEAN).mean()))
    assert all(d2 > d1 for d1, d2 in zip(damage, damage[1:])), f"{spec.id}: damage not increasing {damage}"


@pytest.mark.parametrize("name", ["shot_noise", "motion_blur", "elastic_transform", "occlusion"])
def test_seed_changes_random_draws(name):
    """Random shifts draw from the per-(shift, severity, seed) stream: a new seed, new draws."""
    spec = REG.shift(name)
    a, _ = load(spec, 3, seed=0)
    b, _ = load(spec, 3, seed=1)
    c, _ = load(spec, 3, seed=0)
    assert a.tobytes() == c.tobytes()
    assert not np.array_equal(a, b)


def test_corruptions_keep_channel_layout():
    """(N, C, H, W) input is corrupted plane by plane and keeps its shape."""
    x = np.stack([CLEAN[:8]] * 3, axis=1)
    for name in ("gaussian_blur", "rotation", "jpeg_compression", "pixelate"):
        out = corruptions.CORRUPTIONS[name](x, 2, np.random.default_rng(0))
        assert out.shape == x.shape and out.dtype == np.float32


def test_jpeg_mosaic_equals_per_image_coding():
    """The one-call mosaic codes each 16x16 tile exactly as coding it alone would."""
    x = CLEAN[:70]
    mosaic = corruptions._jpeg_roundtrip(x, 4)
    alone = np.concatenate([corruptions._jpeg_roundtrip(x[i:i + 1], 4) for i in range(len(x))])
    np.testing.assert_array_equal(mosaic, alone)


def test_bad_severity_names_the_corruption():
    with pytest.raises(ValueError, match="rotation"):
        corruptions.CORRUPTIONS["rotation"](CLEAN[:2], 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="direction"):
        corruptions.CORRUPTIONS["stroke_width"](CLEAN[:2], 1, np.random.default_rng(0), direction="sideways")


@pytest.mark.parametrize("spec", GENERATED, ids=lambda s: s.id)
def test_generated_shift_is_balanced_and_deterministic(spec):
    x, y = load(spec, None)
    assert x.shape[1:] == (1, 16, 16) and x.dtype == np.float32 and len(x) == len(y) >= 500
    assert 0.0 <= x.min() and x.max() <= 1.0
    counts = np.bincount(y, minlength=10)
    assert len(counts) == 10 and counts.min() == counts.max()
    fn = corruptions.GENERATED[spec.source.split(":", 1)[1]]
    a = fn(None, np.random.default_rng(3), **dict(spec.params))
    b = fn(None, np.random.default_rng(3), **dict(spec.params))
    assert a[0].tobytes() == b[0].tobytes() and np.array_equal(a[1], b[1])
    # ink like the ID digits (not blank, not saturated), and digits differ from each other
    assert 0.15 < x.mean() < 0.45
    means = np.stack([x[y == d].mean(0) for d in range(10)])
    assert np.abs(means[:, None] - means[None]).mean(axis=(2, 3, 4)).max() > 0.05


def test_fonts_rejects_missing_font():
    with pytest.raises(FileNotFoundError, match="NoSuchFont.ttf"):
        corruptions.GENERATED["fonts"](None, np.random.default_rng(0), n_per_class=1, fonts=["NoSuchFont.ttf"])


def _registry_with_suite(tmp_path: Path, shift_ids: list[str]) -> Path:
    root = tmp_path / "registry"
    shutil.copytree(REG.root, root)
    path = root / "suites" / "digits.yaml"
    data = yaml.safe_load(path.read_text())
    data["dataset_shifts"] = shift_ids
    path.write_text(yaml.safe_dump(data))
    return root


def test_show_shifts_writes_png(tmp_path):
    root = _registry_with_suite(tmp_path, ["gaussian_noise", "rotation", "fonts"])
    out = tmp_path / "pic" / "shifts.png"
    args = argparse.Namespace(suite="digits", out=str(out), registry=str(root), data_dir=None)
    assert showshifts.main(args) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = out.read_bytes()
    assert showshifts.main(args) == 0
    assert out.read_bytes() == first  # regenerating gives the same bytes


def test_show_shifts_draws_colour_images(tmp_path):
    """RGB suites (CIFAR, ImageNet) go through the same grid: strips keep 3 channels."""
    rng = np.random.default_rng(0)
    img = rng.random((3, 3, 8, 8)).astype(np.float32)
    s = showshifts.strip(img)
    assert s.shape == (8, 3 * 8 + 2, 3)
    np.testing.assert_array_equal(s[:, :8], img[0].transpose(1, 2, 0))
    spec = REG.shift("gaussian_noise")
    out = showshifts.draw([{"spec": spec, "cells": {0: s, 1: s}}], tmp_path / "rgb.png", "rgb")
    assert out.stat().st_size > 0


def test_show_shifts_clear_error_when_data_missing(tmp_path, capsys):
    root = _registry_with_suite(tmp_path, ["gaussian_noise"])
    suite = yaml.safe_load((root / "suites" / "digits.yaml").read_text())
    suite.update(id="cifar10-missing", dataset="cifar10")
    (root / "suites" / "cifar10-missing.yaml").write_text(yaml.safe_dump(suite))
    shift = yaml.safe_load((root / "shifts" / "digits" / "gaussian_noise.yaml").read_text())
    shift.update(id="cifar10_noise", dataset="cifar10")
    (root / "shifts" / "cifar10_noise.yaml").write_text(yaml.safe_dump(shift))
    suite["dataset_shifts"] = ["cifar10_noise"]
    (root / "suites" / "cifar10-missing.yaml").write_text(yaml.safe_dump(suite))
    out = tmp_path / "x.png"
    args = argparse.Namespace(suite="cifar10-missing", out=str(out), registry=str(root),
                              data_dir=str(tmp_path / "no-data"))
    assert showshifts.main(args) == 2
    assert "error" in capsys.readouterr().err and not out.exists()
