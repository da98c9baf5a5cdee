"""Dress rehearsal of the real suites: every planned cell of one model per suite, through
`shiftbench run` and `shiftbench verify-results`, on format-faithful fake data (tests/rehearsal.py).

The fast form (default `make test`) runs, per suite, a smaller architecture of the same zoo on the
ID data, every threat shift and one dataset shift of each loader format, with a step or two per
attack.  The full form (`-m slow`) runs a WideResNet-28-10 (CIFAR-10 Linf, CIFAR-100),
a PreAct-ResNet-18 (CIFAR-10 L2) and a ResNet-50 (ImageNet) on every planned cell at the suite's
own attack settings (hours on a CPU, minutes on a GPU: perf/gpu_check.sh runs it there).
"""
from __future__ import annotations

import json
import time

import pytest

import rehearsal
from benchmark import cli
from benchmark.attacks.batching import micro_batch_size
from benchmark.run import store, trust
from benchmark.run.plan import plan_suite

SUITES = list(rehearsal.MODELS)
pytestmark = pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning")


def rehearse(world: rehearsal.World, capsys, *, shifts: str | None = None, threats: str | None = None) -> dict:
    """`shiftbench preflight`, `run` and `verify-results` on the world; fails naming every cell
    without a verified result, with the errors `run` printed."""
    # every planned cell on 2 images: the reference design (the lean one shares 2 images out among
    # the corruptions, so most would attack none, which plan_suite refuses)
    common = ["--suite", world.suite, "--registry", str(world.registry), "--models", world.model, "--n", "2",
              "--protocol", "reference",
              "--data-dir", str(world.data), "--model-dir", str(world.models), "--results", str(world.results)]
    common += (["--shifts", shifts] if shifts else []) + (["--threats", threats] if threats else [])
    rc = cli.main(["preflight", *common, "--no-measure"])
    pre = capsys.readouterr()
    assert rc == 0, f"preflight of {world.suite} found problems:\n{pre.out}"
    t0 = time.perf_counter()
    rc = cli.main(["run", *common, "--no-progress"])
    run = capsys.readouterr()
    seconds = time.perf_counter() - t0
    cells = plan_suite(world.registry_obj, world.suite, models=world.model, shifts=shifts, threats=threats,
                       n_examples=2, protocol="reference")
    folder = world.results / world.suite
    bad = [c.describe() for c in cells if not store.is_done(folder / c.filename, c.key)]
    errors = [line for line in run.err.splitlines() if line.startswith("error")]
    assert not bad and rc == 0, (f"{world.suite}: {len(bad)} of {len(cells)} cells failed: {bad}\n"
                                 + "\n".join(errors))
    assert cli.main(["verify-results", "--suite", world.suite, "--results", str(world.results)]) == 0
    verify = capsys.readouterr().err
    n_files = len(list(store.result_files(folder)))  # a corruption's cell brings its five severities
    assert n_files >= len(cells) and f"{n_files} verified" in verify and "0 corrupt" in verify, verify
    results = [json.loads((folder / c.filename).read_text()) for c in cells]
    for r, c in zip(results, cells):  # every image clean-correct, so each cell attacked both
        assert r["n"] == 2 and r["clean_acc"] == 1.0 and r["attack"] == c.threat.attack, c.describe()
        assert r["checks"]["in_range"]["ok"], c.describe()
        if "in_budget" in r["checks"]:
            assert r["checks"]["in_budget"]["ok"], c.describe()
    lock = json.loads(world.lock.read_text())["models"]  # the checkpoint was pinned on first use
    assert set(lock) == {world.model}
    escalated = [c.describe() for r, c in zip(results, cells) if r.get("escalation")]
    return {"cells": len(cells), "seconds": seconds, "results": results, "escalated": escalated}


@pytest.fixture()
def world_env(tmp_path, monkeypatch):
    def make(suite: str, fast: bool) -> rehearsal.World:
        w = rehearsal.build(suite, tmp_path / suite, fast=fast)
        monkeypatch.setenv("SHIFTBENCH_WEIGHTS_LOCK", str(w.lock))
        rehearsal.patch_sources(monkeypatch)
        return w
    return make


@pytest.mark.parametrize("suite", SUITES)
def test_rehearsal_fast(suite, world_env, capsys, monkeypatch):
    """Every threat and every loader format of the suite, at 32x32 or 224x224 colour, through
    the real attacks, trust checks and LPIPS networks (fewer steps and Square queries)."""
    for name in ("SQUARE_QUERIES", "SHIFT_SQUARE_QUERIES"):
        monkeypatch.setattr(trust, name, 4)
    monkeypatch.setattr(trust, "DEEP_SAMPLE", 2)
    w = world_env(suite, fast=True)
    shifts, threats = rehearsal.fast_cells(suite)
    # cells of 2 images: micro-batches of 2 rows instead of the harness's 32 run the same code path
    # (a call of one still-robust image is padded) at a sixteenth of the cost (the grid runs in this
    # process)
    with micro_batch_size(2):
        out = rehearse(w, capsys, shifts=shifts, threats=threats)
    assert {r["micro_batch"] for r in out["results"]} == {2}
    kinds = {r["threat_kind"] for r in out["results"]}
    assert kinds == {w.registry_obj.threat(t).kind for t in threats.split(",")}
    roles = {r["role"] for r in out["results"]}
    assert roles == {"id", "dataset", "threat"}


@pytest.mark.slow
@pytest.mark.parametrize("suite", SUITES)
def test_rehearsal_full(suite, world_env, capsys):
    """Every planned cell of the suite's real architecture at the suite's own attack settings."""
    w = world_env(suite, fast=False)
    out = rehearse(w, capsys)
    plan = plan_suite(w.registry_obj, suite, models=w.model, protocol="reference")
    assert out["cells"] == len(plan)
    print(f"{suite}: {out['cells']} cells of {w.model} in {out['seconds']:.0f} s; Square escalation in "
          f"{len(out['escalated'])}: {out['escalated']}")
