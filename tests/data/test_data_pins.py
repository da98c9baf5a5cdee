"""Dataset files without a published checksum are pinned in the data root's lock file the first
time they are read successfully and verified on every later read, so a replaced file cannot serve
stale results (files made by the test, in the real format)."""
from __future__ import annotations

import numpy as np
import pytest

from benchmark.data import loaders
from benchmark.data.shifts import load_shift
from benchmark.registry import Registry

REAL = Registry(check_files=False)


def _write(root, value: int) -> None:
    (root / "CIFAR-10.2").mkdir(exist_ok=True)
    np.savez(root / "CIFAR-10.2" / "cifar102_test.npz", images=np.full((4, 32, 32, 3), value, np.uint8),
             labels=np.array([0, 1, 2, 3]))


def test_unpublished_checksum_is_pinned_then_verified(tmp_path, capsys, monkeypatch):
    from benchmark.data import shifts

    monkeypatch.setattr(shifts, "_CACHE", shifts._ByteLRU(0))  # every load reads the files (as a new process)
    spec = REAL.shift("cifar10.2")
    assert all(not (f.get("sha256") or f.get("md5")) for f in spec.files)  # none published
    _write(tmp_path, 10)
    x, _ = load_shift(spec, None, data_dir=tmp_path)
    assert "trust on first use" in capsys.readouterr().err
    assert (tmp_path / loaders.DATA_LOCK).is_file()
    x2, _ = load_shift(spec, None, data_dir=tmp_path)  # verified: same file
    assert np.array_equal(x.numpy(), x2.numpy())
    _write(tmp_path, 20)  # replaced
    with pytest.raises(loaders.DataChecksumError, match="pinned .* when it was first read"):
        load_shift(spec, None, data_dir=tmp_path)
