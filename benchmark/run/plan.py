"""Plan: expand a suite into evaluation cells, each named by a content hash.

A cell is (model x data x threat x n x seed).  Dataset shifts are evaluated under the ID threat;
threat shifts on the ID data.  The hash covers everything that changes the number: the model
entry and its weights sha256, the shift entry and severity, the threat entry (attack and its
settings), n, seed and the harness version of the attack code.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .. import registry as reg
from ..attacks import HARNESS_VERSION
from .design import Design, aligned

ID_SHIFT = "id"  # the name of the in-distribution "shift" in cells and results


@dataclass(frozen=True)
class Cell:
    suite: str
    model: reg.ModelSpec
    shift: reg.ShiftSpec | None  # None: in-distribution data
    severity: int | None
    threat: reg.ThreatSpec
    role: str  # "id" | "dataset" | "threat"
    n: int
    seed: int
    # checksums of the model's checkpoints from the registry's lock file, for entries that do not
    # pin them with their own sha256 (the RobustBench zoo): ((file name, sha256), ...)
    weights: tuple[tuple[str, str], ...] | None = None
    # the lean protocol's share of the test images (benchmark/run/design.py); None: the cell
    # attacks the seeded subset of n, as under the reference protocol (and as before protocols)
    design: Design | None = None

    @property
    def shift_id(self) -> str:
        return ID_SHIFT if self.shift is None else self.shift.id

    @property
    def data_name(self) -> str:
        """The data this cell runs on, e.g. ``id`` or ``gaussian_noise-3``."""
        if self.shift is None:
            return ID_SHIFT
        return self.shift.id if self.severity is None else f"{self.shift.id}-{self.severity}"

    @functools.cached_property
    def key(self) -> str:
        what = {
            "suite": self.suite,
            "model": self.model,
            "shift": self.shift,
            "severity": self.severity,
            "threat": self.threat,
            "n": self.n,
            "seed": self.seed,
            "harness": HARNESS_VERSION,
        }
        if self.weights is not None:
            what["weights"] = [list(w) for w in self.weights]
        if self.design is not None:  # only where it changes the images: reference cells keep their keys
            what["design"] = self.design
        return reg.content_hash(what)

    @property
    def filename(self) -> str:
        return f"{self.model.id}/{self.data_name}__{self.threat.id}__{self.key}.json"

    def describe(self) -> str:
        return f"{self.model.id} | {self.data_name} | {self.threat.id}"

    @property
    def batch(self) -> tuple["Cell", ...]:
        """The cells attacked in one batch with this one: every severity of its dataset shift,
        else the cell alone.  Fixed by the cell itself, never by what else is pending, so that a
        cell's numbers do not depend on how a run was filtered, split or resumed (a batch of
        a few hundred images also attacks about 1.7x faster on a CPU than five small ones)."""
        if self.role != "dataset" or self.severity is None or self.shift is None or not self.shift.severities:
            return (self,)
        return tuple(dataclasses.replace(self, severity=s) for s in self.shift.severities)


def batches(cells: Iterable[Cell]) -> list[tuple[Cell, ...]]:
    """The batches that cover ``cells``, each once, in order of first appearance.  A batch may
    hold cells that are not in ``cells`` (the other severities of a shift)."""
    out: dict[tuple[str, ...], tuple[Cell, ...]] = {}
    for c in cells:
        b = c.batch
        out.setdefault(tuple(x.key for x in b), b)
    return list(out.values())


def plan_suite(
    registry: reg.Registry,
    suite_id: str,
    *,
    models: str | None = None,
    shifts: str | None = None,
    threats: str | None = None,
    n_examples: int | None = None,
    seed: int | None = None,
    model_dir: str | None = None,
    record_pins: bool = True,
    protocol: str | None = None,
) -> list[Cell]:
    """All cells of a suite, filtered by comma-separated glob patterns.

    ``shifts`` filters the data by shift id or by ``<shift>-<severity>`` (``id`` names the ID
    data); ``threats`` filters the threats
    (the ID threat's id included).  A RobustBench model whose entry has no sha256 gets its
    checkpoints' checksums from the registry's lock file in its cells' keys (recorded on first
    use from the files under ``model_dir``; not with ``record_pins=False``, which only reads the
    lock), so a replaced checkpoint never serves stale results.  ``protocol`` (default: the
    suite's): ``lean`` shares the test images out among the shifts that corrupt them
    (:mod:`benchmark.run.design`), ``reference`` attacks every image under every shift.
    """
    suite = registry.suite(suite_id)
    n = n_examples or suite.n_examples
    n_shift = n_examples or suite.n_shift_examples or suite.n_examples
    sd = suite.seed if seed is None else seed
    model_specs = registry.suite_models(suite, models)
    id_threat = registry.threat(suite.id_threat)
    designs = lean_designs(registry, suite, n, protocol or suite.protocol)

    def keep(name: str, pats: str | None) -> bool:
        if not pats:
            return True
        return any(fnmatch.fnmatchcase(name, p.strip()) for p in pats.split(",") if p.strip())

    cells: list[Cell] = []
    for m in model_specs:
        w = _pinned_weights(registry, m, model_dir, record_pins)
        if keep(ID_SHIFT, shifts) and keep(id_threat.id, threats):
            cells.append(Cell(suite.id, m, None, None, id_threat, "id", n, sd, w))
        if keep(id_threat.id, threats):
            for sid in suite.dataset_shifts:
                s = registry.shift(sid)
                d = designs.get(sid)
                for sev in s.severities or (None,):
                    if keep(s.id, shifts) or (sev is not None and keep(f"{s.id}-{sev}", shifts)):
                        if d is not None:
                            _check_lean_share(suite, d)
                        cells.append(Cell(suite.id, m, s, sev, id_threat, "dataset", n if d else n_shift, sd, w, d))
        if keep(ID_SHIFT, shifts):
            for tid in suite.threat_shifts:
                t = registry.threat(tid)
                if keep(t.id, threats):
                    cells.append(Cell(suite.id, m, None, None, t, "threat", n, sd, w))
    return cells


def both_protocols(registry: reg.Registry, cells: list[Cell], suite_id: str, protocol: str,
                   **filters) -> dict[str, list[Cell]]:
    """protocol -> the grid's cells under it (``cells``: under ``protocol``; the other planned with
    the same ``filters``), for setting their costs side by side; empty where the suite has no
    shift the protocols treat differently, or where the other cannot be planned (too few images
    for the lean design)."""
    try:
        other = plan_suite(registry, suite_id, protocol=OTHER_PROTOCOL[protocol], **filters)
    except TooFewImages:
        return {}
    if [c.key for c in other] == [c.key for c in cells]:
        return {}
    return {protocol: cells, OTHER_PROTOCOL[protocol]: other}


OTHER_PROTOCOL = {"lean": "reference", "reference": "lean"}


def lean_designs(registry: reg.Registry, suite: reg.SuiteSpec, n: int, protocol: str) -> dict[str, Design]:
    """shift id -> its :class:`Design` under ``protocol`` (none under ``reference``): the suite's
    aligned shifts share out the seeded subset of ``n`` test images."""
    if protocol not in reg.PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(reg.PROTOCOLS)}")
    if protocol == "reference":
        return {}
    groups = tuple(s for s in suite.dataset_shifts if aligned(registry.shift(s)))
    if groups and suite.shifts_per_image > len(groups):
        raise reg.RegistryError(Path(suite.path or suite.id), "shifts_per_image",
                                f"{suite.shifts_per_image} shifts per image, but only {len(groups)} of the suite's "
                                "dataset shifts corrupt the test images one by one; lower it")
    return {s: Design(groups, g, suite.shifts_per_image, n) for g, s in enumerate(groups)}


class TooFewImages(ValueError):
    """A lean grid with fewer test images than its shifts need (one at least each)."""


def _check_lean_share(suite: reg.SuiteSpec, design: Design) -> None:
    """A planned lean cell needs images: with fewer than one image per shift, some shifts would
    attack none (and have no mean), so such a grid is refused with the way out."""
    if design.pool * design.per_image < len(design.groups):
        need = -(-len(design.groups) // design.per_image)
        raise TooFewImages(f"suite {suite.id}: the lean design shares {design.pool} test image(s) among "
                         f"{len(design.groups)} dataset shifts ({design.per_image} per image), so some shifts would "
                         f"attack none; use --n {need} or more, or --protocol reference")


def _pinned_weights(registry: reg.Registry, model: reg.ModelSpec, model_dir: str | None, record: bool = True):
    if model.source_kind != "robustbench":
        return None
    from ..models.robustbench import cell_weights

    return cell_weights(model, registry, model_dir, record=record)


def shard(cells: list[Cell], spec: str | None) -> list[Cell]:
    """``--shard i/N``: the i-th of N interleaved slices (1-based), stable across runs.  Slices
    are cut between batches (:attr:`Cell.batch`), so no batch is attacked by two shards."""
    if not spec:
        return cells
    try:
        i, total = (int(p) for p in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects i/N such as 2/8, got {spec!r}") from None
    if not 1 <= i <= total:
        raise ValueError(f"--shard {spec}: i must be in 1..{total}")
    first = {c.key: b[0].key for b in batches(cells) for c in b}  # each cell -> its batch's first key
    keys = sorted(set(first.values()))
    mine = {k for j, k in enumerate(keys) if j % total == i - 1}
    return [c for c in cells if first[c.key] in mine]
