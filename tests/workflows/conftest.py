"""A real digits baseline made once: an adversarially trained zoo model (shipped weights) run on a
small slice of the built-in digits suite (the ID cell, one dataset shift at every severity, one Lp
threat shift, n=60), then exported with `shiftbench export-baseline`."""
from __future__ import annotations

import pytest

from benchmark import cli

BASELINE_MODEL, WEAKER_MODEL = "mlp-pgd-0.10", "mlp-standard"
N = "60"
SLICE = ["--shifts", "id,gaussian_noise", "--threats", "digits-linf,digits-l2"]


@pytest.fixture(scope="session")
def digits_baseline(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits-baseline")
    results = root / "results"
    assert cli.main(["run", "--suite", "digits", "--models", BASELINE_MODEL, *SLICE, "--n", N, "--results",
                     str(results), "--no-progress"]) == 0
    out = root / "baseline.json"
    assert cli.main(["export-baseline", "--suite", "digits", "--model", BASELINE_MODEL, "--n", N, "--results",
                     str(results), "--out", str(out)]) == 0
    return {"results": results, "baseline": out}
