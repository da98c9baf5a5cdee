"""Fingerprints: numbers may change only with a version bump.

``HARNESS_VERSION`` (benchmark/attacks/__init__.py) and each shift entry's ``version`` are part
of every cell key, and they are bumped by hand.  This test pins, in tests/golden/fingerprints.json,
(1) what each attack of the digits threats does to a fixed model and input (the shipped
``mlp-standard`` weights, the first 32 digits test images, seed 0): per-example outcomes and the
total perturbation, and (2) a digest of each generated digits shift at each severity (its images
quantised to 8 bits).  A code change that changes any of these numbers fails the test until the
version is bumped, so stale results can never be served under an unchanged cell key.

The documented way to update the golden values after a change that is meant to change numbers:

1. bump ``HARNESS_VERSION`` (attacks) or the shift's ``version`` in its registry entry (shifts);
2. run ``python tests/test_fingerprints.py --update``: it records the values for the new versions
   and refuses to overwrite a value recorded for an unchanged version (bump first).

A new digits shift or threat is recorded by the same command.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

import benchmark  # noqa: F401
from benchmark.attacks import HARNESS_VERSION, run_attack
from benchmark.attacks.batching import fixed_batch
from benchmark.data import datasets
from benchmark.data.shifts import load_shift
from benchmark.models.load import load_model
from benchmark.registry import DEFAULT_REGISTRY, Registry

GOLDEN = Path(__file__).parent / "golden" / "fingerprints.json"
N, SEED, MODEL = 32, 0, "mlp-standard"
EXTRA = {"pgd": "digits-linf", "apgd-ce": "digits-l2", "apgd-mm": "digits-l1"}  # attacks not used by a digits threat, on a digits budget
# float noise across CPUs (digits-pixel-flow's total moved by 3.5e-4, its outcomes not, under the avx2
# profile on an Intel Xeon); a real change moves the total perturbation far more
REL_TOL = 1e-3


def _registry() -> Registry:
    return Registry(DEFAULT_REGISTRY, check_files=False)


def attack_fingerprints() -> dict[str, dict]:
    torch.set_num_threads(1)
    reg = _registry()
    model = fixed_batch(load_model(reg.model(MODEL), reg))  # as the evaluator calls it
    x, y = datasets.load_id("digits", "test")
    x, y = x[:N], y[:N]
    suite = reg.suite("digits")
    runs = [(tid, None) for tid in [suite.id_threat, *suite.threat_shifts]]
    runs += [(tid, attack) for attack, tid in EXTRA.items()]
    out = {}
    for tid, attack in runs:
        threat = reg.threat(tid)
        x_adv = run_attack(model, x, y, threat, seed=SEED, attack=attack)
        with torch.no_grad():
            ok = (model(x_adv).argmax(1) == y).tolist()
        out[f"{tid}/{attack or threat.attack}"] = {
            "robust": "".join("1" if o else "0" for o in ok),
            "total_perturbation": round(float((x_adv - x).abs().sum()), 6),
        }
    return out


def shift_fingerprints() -> dict[str, dict]:
    reg = _registry()
    out = {}
    for sid in reg.suite("digits").dataset_shifts:
        spec = reg.shift(sid)
        digests = {}
        for sev in spec.severities or (None,):
            xs, ys = load_shift(spec, sev, seed=SEED)
            q = (xs.clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes() + ys.numpy().tobytes()
            digests[str(sev)] = hashlib.sha256(q).hexdigest()[:32]
        out[sid] = {"version": spec.version, "severities": digests}
    return out


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


HOW = "then run `python tests/test_fingerprints.py --update` (see this file's docstring)"


def test_attack_numbers_change_only_with_a_harness_bump():
    golden = _golden()["attacks"]
    assert golden["harness"] == HARNESS_VERSION, (
        f"HARNESS_VERSION is {HARNESS_VERSION} but the attack fingerprints were recorded for "
        f"{golden['harness']}: record them for the new version: {HOW}")
    now = attack_fingerprints()
    assert set(now) == set(golden["values"]), f"attacks or digits threats changed; {HOW}"
    for name, want in golden["values"].items():
        got = now[name]
        same = got["robust"] == want["robust"] and abs(got["total_perturbation"] - want["total_perturbation"]) <= \
            REL_TOL * max(1.0, abs(want["total_perturbation"]))
        assert same, (f"{name}: the attack's numbers changed ({got} != {want}) under HARNESS_VERSION "
                      f"{HARNESS_VERSION}: bump HARNESS_VERSION in benchmark/attacks/__init__.py, {HOW}")


def test_shift_images_change_only_with_a_version_bump():
    golden = _golden()["shifts"]
    now = shift_fingerprints()
    assert set(now) == set(golden), f"digits shifts added or removed; {HOW}"
    for sid, got in now.items():
        want = golden[sid]
        assert got["version"] == want["version"], (
            f"shift {sid} is version {got['version']} but its fingerprint was recorded for {want['version']}; {HOW}")
        assert got["severities"] == want["severities"], (
            f"shift {sid}: generated images changed under version {got['version']}: bump `version` in "
            f"registry/shifts/digits/{sid}.yaml, {HOW}")


@pytest.mark.parametrize("kind", ["attacks", "shifts"])
def test_update_refuses_to_overwrite_an_unchanged_version(kind):
    golden = _golden()
    if kind == "attacks":
        fake = {"harness": golden["attacks"]["harness"], "values": {"x": {"robust": "1", "total_perturbation": 0.0}}}
        with pytest.raises(SystemExit, match="bump"):
            merge(golden, attacks=fake)
    else:
        sid, entry = next(iter(golden["shifts"].items()))
        fake = {sid: {"version": entry["version"], "severities": {"1": "0" * 32}}}
        with pytest.raises(SystemExit, match="bump"):
            merge(golden, shifts=fake)


def merge(golden: dict, *, attacks: dict | None = None, shifts: dict | None = None) -> dict:
    """New golden values; an entry whose version did not change must keep its values."""
    out = json.loads(json.dumps(golden))
    if attacks is not None:
        old = golden.get("attacks")
        if old and old["harness"] == attacks["harness"] and old["values"] != attacks["values"]:
            raise SystemExit(f"attack fingerprints differ under the same HARNESS_VERSION {attacks['harness']}: "
                             "bump it first")
        out["attacks"] = attacks
    if shifts is not None:
        for sid, entry in shifts.items():
            old = golden.get("shifts", {}).get(sid)
            if old and old["version"] == entry["version"] and old["severities"] != entry["severities"]:
                raise SystemExit(f"shift {sid}: images differ under the same version {entry['version']}: "
                                 "bump its version first")
        out["shifts"] = dict(sorted(shifts.items()))
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        raise SystemExit("usage: python tests/test_fingerprints.py --update")
    golden = _golden() if GOLDEN.is_file() else {}
    new = merge(golden, attacks={"harness": HARNESS_VERSION, "values": attack_fingerprints()},
                shifts=shift_fingerprints())
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(new, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
