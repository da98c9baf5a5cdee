"""The lean protocol of the dataset-shift cells (benchmark/run/design.py): which images each
shift attacks, the keys it changes (and those it must not), results that record it, and means
that never mix it with the reference design."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmark import cli
from benchmark.analysis import aggregate
from benchmark.data import datasets
from benchmark.registry import Registry, RegistryError
from benchmark.run import plan as planner
from benchmark.run.design import assign
from benchmark.run.preflight import preflight
from conftest import write_yaml


@pytest.mark.parametrize("per_image", [1, 3])
def test_every_test_image_in_k_groups_stratified_by_class_fixed_by_seed(per_image):
    _, labels = datasets.digits("test")
    groups = 18
    shares = assign(labels, groups, per_image, seed=0)
    counts = np.zeros(len(labels), dtype=int)
    for s in shares:
        assert len(set(s.tolist())) == len(s)  # no image twice in a group
        counts[s] += 1
    assert (counts == per_image).all()  # every image in exactly k distinct groups
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1
    for c in np.unique(labels):  # each class shared out within one image per group
        per_group = [int((labels[s] == c).sum()) for s in shares]
        assert max(per_group) - min(per_group) <= 1, (c, per_group)
    again = assign(labels, groups, per_image, seed=0)
    assert all((a == b).all() for a, b in zip(shares, again))
    other = assign(labels, groups, per_image, seed=1)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(shares, other))


def test_more_shifts_per_image_than_shifts_is_refused():
    with pytest.raises(ValueError, match="shifts_per_image"):
        assign(np.zeros(10, dtype=int), 3, 4, seed=0)


def _two_shift_registry(root: Path, protocol: str | None, **extra) -> Registry:
    """The tiny registry with a second synthetic shift and a generated one (not aligned with the
    test images), its suite under ``protocol`` (no key: the default)."""
    write_yaml(root / "shifts" / "digits" / "contrast.yaml", {
        "id": "contrast", "dataset": "digits", "source": "synthetic:contrast", "family": "digital",
        "severities": [1, 3]})
    suite = yaml.safe_load((root / "suites" / "tiny.yaml").read_text())
    suite["dataset_shifts"] = ["gaussian_noise", "contrast"]
    if protocol:
        suite["protocol"] = protocol
    suite.update(extra)
    write_yaml(root / "suites" / "tiny.yaml", suite)
    return Registry(root)


def test_too_few_images_for_the_lean_design_is_refused_with_the_way_out(tiny_registry):
    """Two aligned shifts need two images under lean: one is refused (a shift would attack none,
    and its cell would have nothing to average), naming --n and --protocol reference."""
    r = _two_shift_registry(tiny_registry, "lean")
    with pytest.raises(ValueError, match=r"use --n 2 or more, or --protocol reference"):
        planner.plan_suite(r, "tiny", n_examples=1)
    assert planner.plan_suite(r, "tiny", n_examples=1, protocol="reference")
    assert planner.plan_suite(r, "tiny", n_examples=2)


def test_lean_changes_only_the_keys_of_the_shared_out_shifts(tiny_registry):
    default = {c.key for c in planner.plan_suite(_two_shift_registry(tiny_registry, None), "tiny")}
    r = _two_shift_registry(tiny_registry, "lean")
    lean = planner.plan_suite(r, "tiny")
    reference = planner.plan_suite(r, "tiny", protocol="reference")
    assert {c.key for c in reference} == default  # a suite's reference cells keep the keys they had
    by = {(c.data_name, c.threat.id): c for c in reference}
    for c in lean:
        same = by[(c.data_name, c.threat.id)].key == c.key
        assert same == (c.role != "dataset"), c.describe()  # ID and threat cells shared; shifts differ
        if c.role == "dataset":
            assert c.design.groups == ("gaussian_noise", "contrast")


def test_suite_protocol_keys_are_validated(tiny_registry, tmp_path):
    for key, value, match in (("protocol", "lite", "unknown protocol 'lite'"),
                              ("shifts_per_image", 0, "expected a whole number >= 1")):
        root = Path(shutil.copytree(tiny_registry, tmp_path / key))
        write_yaml(root / "suites" / "tiny.yaml", {**yaml.safe_load((root / "suites" / "tiny.yaml").read_text()),
                                                   key: value})
        with pytest.raises(RegistryError, match=match) as exc:
            Registry(root)
        assert exc.value.key == key and exc.value.path.name == "tiny.yaml"
    r = _two_shift_registry(tiny_registry, "lean", shifts_per_image=3)
    with pytest.raises(RegistryError, match="only 2 of the suite's dataset shifts") as exc:
        planner.plan_suite(r, "tiny")
    assert exc.value.key == "shifts_per_image"


def _results(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in folder.rglob("*.json")}


def test_lean_results_record_their_images_and_never_mix_with_reference(tiny_registry, tmp_path):
    r = _two_shift_registry(tiny_registry, "lean")
    out = tmp_path / "results"
    base = ["run", "--suite", "tiny", "--registry", str(tiny_registry), "--results", str(out), "--no-progress"]
    assert cli.main(base) == 0
    lean = _results(out / "tiny")
    assert cli.main(base + ["--protocol", "reference"]) == 0
    both = _results(out / "tiny")
    reference = {k: v for k, v in both.items() if k not in lean}
    # the lean dataset cells: each shift's images at every severity, disjoint, covering the test subset
    images: dict[str, set] = {}
    _, labels = datasets.digits("test")
    for res in lean.values():
        if res["role"] != "dataset":
            assert "design" not in res
            continue
        got = res["design"]["images"]
        assert len(got) == res["n"] == len(res["robust_correct"]) or res["n"] == len(got)
        assert images.setdefault(res["shift"], set(got)) == set(got)  # the same images at every severity
    pool = set(datasets.subset(120, len(labels), 0).tolist())
    assert images["gaussian_noise"].isdisjoint(images["contrast"])
    assert images["gaussian_noise"] | images["contrast"] == pool
    assert {len(v) for v in images.values()} == {60}
    # the reference run added only its own dataset cells (ID and threat cells are shared)
    assert all(v["role"] == "dataset" and "design" not in v and v["n"] == 120 for v in reference.values())
    for protocol, own, other in (("lean", lean, reference), ("reference", {**reference, **{
            k: v for k, v in lean.items() if v["role"] != "dataset"}}, {k: v for k, v in lean.items()
                                                                      if v["role"] == "dataset"})):
        res = aggregate.load(r, "tiny", out, protocol)
        assert res.protocol == protocol and res.n_stale == 0 and res.n_missing == 0
        assert {Path(p).name for p in res.cells["path"]} == set(own)
        assert {p.name for p in res.other_protocol} == set(other)
        summ = aggregate.summarize(r, res).models.loc["tiny"]
        d = [v for v in own.values() if v["role"] == "dataset"]
        want = np.mean([np.mean([v["robust_acc"] for v in d if v["shift"] == s]) for s in ("gaussian_noise", "contrast")])
        assert summ["ood_d_robust"] == pytest.approx(want)  # OOD-D from its own protocol's cells alone


def test_leaderboard_states_the_design(tiny_registry, tmp_path):
    _two_shift_registry(tiny_registry, "lean")
    out, board = tmp_path / "results", tmp_path / "board.md"
    base = ["--suite", "tiny", "--registry", str(tiny_registry), "--results", str(out)]
    assert cli.main(["run", *base, "--no-progress", "--threats", "tiny-linf"]) == 0
    assert cli.main(["leaderboard", *base, "--out", str(board)]) == 0
    text = board.read_text()
    assert "Dataset-shift design: **lean**" in text and "60-60 images each" in text
    assert cli.main(["leaderboard", *base, "--out", str(board), "--protocol", "reference"]) == 0
    text = board.read_text()
    assert "--protocol reference" in text.splitlines()[0]  # the command that made it
    assert "Dataset-shift design: **reference**" in text and "4 result file(s) of the other protocol" in text


def test_preflight_sets_both_designs_side_by_side(tiny_registry):
    r = _two_shift_registry(tiny_registry, "lean")
    lean = planner.plan_suite(r, "tiny")
    designs = planner.both_protocols(r, lean, "tiny", "lean")
    rep = preflight(r, "tiny", lean, measure=False, designs=designs)
    by = {d.protocol: d for d in rep.designs}
    assert by["lean"].this_run and not by["reference"].this_run
    # 2 shifts x 2 severities: 4 cells of 120 images under reference, of 60 under lean
    assert by["reference"].images - by["lean"].images == 4 * 60
    assert by["lean"].passes - by["lean"].dataset_passes == pytest.approx(by["reference"].passes
                                                                          - by["reference"].dataset_passes)
    assert by["lean"].dataset_passes == pytest.approx(by["reference"].dataset_passes / 2, rel=0.05)
    assert "| lean (this run) |" in rep.text() and "| reference |" in rep.text()
    ids = planner.plan_suite(r, "tiny", shifts="id")  # no dataset-shift cell: nothing to compare
    assert planner.both_protocols(r, ids, "tiny", "lean", shifts="id") == {}


def test_lean_interval_is_wider_per_shift_and_follows_the_images():
    """On the same per-example outcomes: a shift's interval from its lean share is wider than from
    every image; OOD-D from disjoint shares matches the stratified-sample formula, and the bootstrap
    agrees with it."""
    from benchmark.analysis.stats import bootstrap_weighted_means, weighted_mean_interval

    rng = np.random.default_rng(0)
    n, groups, sev = 600, 6, 3
    ability = rng.random(n)  # per image: correlated outcomes across shifts and severities
    full = [[(rng.random(n) < ability * (1 - 0.1 * s)).astype(float) for s in range(sev)] for _ in range(groups)]
    shares = assign(rng.integers(0, 10, n), groups, 1, seed=0)
    w = [1 / sev] * sev
    for g in range(groups):
        _, lo_f, hi_f = weighted_mean_interval(full[g], w)
        _, lo_l, hi_l = weighted_mean_interval([o[shares[g]] for o in full[g]], w, images=[shares[g]] * sev)
        assert hi_l - lo_l > 1.8 * (hi_f - lo_f)  # ~sqrt(6) wider: a sixth of the images
    # OOD-D over disjoint shares: sum over shifts of (w_g^2 var(per-image mean) / n_g)
    outs = [o[shares[g]] for g in range(groups) for o in full[g]]
    ims = [shares[g] for g in range(groups) for _ in range(sev)]
    wts = [1 / groups / sev] * (groups * sev)
    mean, lo, hi = weighted_mean_interval(outs, wts, images=ims)
    se = math.sqrt(sum(np.mean([full[g][s][shares[g]] for s in range(sev)], axis=0).var(ddof=1) / len(shares[g])
                       for g in range(groups))) / groups
    assert (hi - lo) / 2 == pytest.approx(1.959963984540054 * se, rel=1e-9)
    boot = bootstrap_weighted_means([(outs, wts, ims)], n_boot=2000, seed=0)[:, 0]
    assert boot.mean() == pytest.approx(mean, abs=0.005)
    assert boot.std() == pytest.approx(se, rel=0.1)
    # reference cells given their indices pair exactly as they do by index
    assert weighted_mean_interval(full[0], w, images=[np.arange(n)] * sev) == weighted_mean_interval(full[0], w)
