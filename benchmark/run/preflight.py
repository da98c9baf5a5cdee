"""Preflight: what a run of a suite needs, what is missing or wrong, and what it will cost.

``shiftbench preflight --suite S`` (and ``shiftbench run`` on a real suite, before any cell) checks,
without loading a model or reading a dataset:

* every dataset file the planned cells read, with its published checksum (md5/sha256 in its entry)
  or its pin in the data root's lock file (``shiftbench-data.lock``, recorded on first read);
* every weights file of the planned models (RobustBench checkpoints, ensembles part by part,
  torchvision's file for ``Standard_R50``) with the entry's sha256 or its pin in ``weights.lock``;
* the LPIPS feature network of each perceptual threat, with its sha256 (or sha256 prefix): a
  network without one stops the run, so it is reported as a problem;
* free disk space for the results;

and plans the cost: cells, attacked images (at most: only clean-correct images are attacked) and
forward+backward passes of the model, from each attack's settings (:func:`attack_cost`, an upper
bound: every image survives every stage), plus the trust checks' re-attacks.  Hours come from a
rate in passes per second: ``--rate``, else measured here on one planned model's architecture
with random weights (:func:`measure_rate`; nothing is read from the weights file).
"""
from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..registry import ModelSpec, Registry, ShiftSpec, ThreatSpec

OK, PINNED, UNPINNED, NOTE = "ok", "pinned", "unpinned", "note"  # fine
MISSING, MISMATCH, REFUSED, NO_SPACE = "missing", "MISMATCH", "refused", "no space"  # a run would fail
PROBLEMS = (MISSING, MISMATCH, REFUSED, NO_SPACE)
FORWARD_COST = 1 / 3  # a forward pass without backward, in forward+backward passes
RESULT_BYTES = 6_000  # a result file without its per-example strings (measured on digits: 3-5 KB)


@dataclass(frozen=True)
class Need:
    """One file (or folder) a run needs, and what preflight found."""

    kind: str  # data | weights | network | disk
    owner: str  # the entry that needs it (a shift, ID data, a model, a threat)
    path: str
    status: str  # one of OK, PINNED, UNPINNED, NOTE, MISSING, MISMATCH, REFUSED
    detail: str = ""
    fetch: str = ""  # for a missing item: whether `shiftbench fetch` can get it, and from where

    @property
    def fetchable(self) -> bool:
        return self.fetch.startswith("fetch gets it")

    @property
    def problem(self) -> bool:
        return self.status in PROBLEMS

    def describe(self) -> str:
        return (f"{self.status:<8} {self.kind:<7} {self.owner}: {self.path}" + (f" ({self.detail})" if self.detail else "")
                + (f" [{self.fetch}]" if self.fetch else ""))


@dataclass(frozen=True)
class Cost:
    """Per attacked image, at most: forward+backward passes and forward-only passes of the model."""

    passes: float
    forwards: float = 0.0

    @property
    def total(self) -> float:
        """In forward+backward passes (a forward alone counts :data:`FORWARD_COST`)."""
        return self.passes + FORWARD_COST * self.forwards


@dataclass
class ThreatLine:
    threat: str
    attack: str
    cells: int = 0
    images: int = 0
    per_image: float | None = None  # passes per attacked image (upper bound); None: unknown attack
    passes: float = 0.0  # the attack's and the trust checks' passes for these cells


@dataclass
class Report:
    suite: str
    needs: list[Need]
    cells: int
    models: int
    lines: list[ThreatLine]
    rate: float | None
    rate_note: str
    disk_free: int | None
    disk_needed: int
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    designs: list["DesignLine"] = field(default_factory=list)  # the cost under each protocol, where they differ

    @property
    def ok(self) -> bool:
        return not any(n.problem for n in self.needs)

    @property
    def problems(self) -> list[Need]:
        return [n for n in self.needs if n.problem]

    @property
    def images(self) -> int:
        return sum(t.images for t in self.lines)

    @property
    def passes(self) -> float:
        return sum(t.passes for t in self.lines)

    @property
    def hours(self) -> float | None:
        return self.passes / self.rate / 3600 if self.rate else None

    def text(self, verbose: bool = False) -> str:
        out = [f"preflight of suite {self.suite}: {self.cells} cells ({self.models} models), "
               f"{len(self.needs)} files checked in {self.seconds:.1f} s"]
        shown = self.needs if verbose else [n for n in self.needs if n.status not in (OK, PINNED)]
        counts = defaultdict(int)
        for n in self.needs:
            counts[n.status] += 1
        out.append("files: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        out += ["  " + n.describe() for n in shown]
        out.append("")
        out.append("| threat | attack | cells | attacked images (at most) | passes per image (at most) | passes |")
        out.append("|---|---|---:|---:|---:|---:|")
        notes = list(self.notes)
        if any(t.per_image is None for t in self.lines):
            notes.append("threats whose attack has no cost model (per image: unknown) are not counted in passes")
        for t in self.lines:
            per = f"{t.per_image:.0f}" if t.per_image is not None else "unknown"
            out.append(f"| {t.threat} | {t.attack} | {t.cells} | {t.images:,} | {per} | {t.passes:.3g} |")
        out.append(f"total: {self.images:,} attacked images, {self.passes:.3g} forward+backward passes "
                   "(upper bound: every image attacked and surviving every stage; trust checks included)")
        if self.hours is not None:
            out.append(f"at {self.rate:.3g} passes/s ({self.rate_note}): {self.hours:,.1f} hours "
                       f"({self.hours / 24:,.1f} days) on one device")
        else:
            out.append(f"hours: unknown ({self.rate_note}); give --rate PASSES_PER_S")
        if self.designs:
            out += ["", "| protocol (dataset-shift design) | cells | attacked images (at most) | passes: dataset "
                    "shifts | passes: ID and threat shifts | passes (upper bound) | hours |", "|---|---:|---:|---:|---:|---:|---:|"]
            for d in self.designs:
                hours = f"{d.passes / self.rate / 3600:,.1f}" if self.rate else "?"
                out.append(f"| {d.protocol}{' (this run)' if d.this_run else ''} | {d.cells} | {d.images:,} | "
                           f"{d.dataset_passes:.3g} | {d.passes - d.dataset_passes:.3g} | {d.passes:.3g} | {hours} |")
        if self.disk_free is not None:
            out.append(f"results: about {self.disk_needed / 2**20:,.0f} MiB needed, {self.disk_free / 2**30:,.1f} GiB "
                       "free")
        out += [f"note: {n}" for n in notes]
        if self.problems:
            n_fetch = sum(n.fetchable for n in self.problems)
            out.append(f"NOT READY: {len(self.problems)} problem(s) above ({', '.join(sorted({n.status for n in self.problems}))}); "
                       f"`shiftbench fetch --suite {self.suite}` (same --models/--shifts/--threats, --data-dir, "
                       f"--model-dir) gets {n_fetch} of them; for the others see the note on each and "
                       "docs/real-suites.md (nothing is downloaded at run time)")
        else:
            out.append("ready: every file the planned cells need is present and matches its checksum or pin")
        return "\n".join(out)


# --------------------------------------------------------------------------- data
def _file_need(owner: str, root: Path, item: Mapping[str, Any], lock: Mapping[str, Any], checksums: bool) -> Need:
    from ..data import loaders

    rel = str(item["path"])
    p = root / rel
    if rel.endswith("/"):
        if not p.is_dir():
            return Need("data", owner, str(p), MISSING, "folder")
        if not any(p.iterdir()):
            return Need("data", owner, str(p), MISSING, "folder is empty")
        return Need("data", owner, str(p), OK, "folder present")
    if not p.is_file():
        return Need("data", owner, str(p), MISSING)
    for algo in ("sha256", "md5"):
        want = item.get(algo)
        if want:
            if not checksums:
                return Need("data", owner, str(p), OK, f"present; {algo} not checked (--no-checksums)")
            got = loaders.file_digest(p, algo)
            if got != want:
                return Need("data", owner, str(p), MISMATCH, f"{algo} {got}, the entry says {want}")
            return Need("data", owner, str(p), OK, f"{algo} verified")
    known = lock.get(rel)
    if known is None:
        return Need("data", owner, str(p), UNPINNED, f"no published checksum; its sha256 is recorded in "
                                                      f"{loaders.DATA_LOCK} on first read")
    if checksums and loaders.file_digest(p, "sha256") != known.get("sha256"):
        return Need("data", owner, str(p), MISMATCH, f"sha256 differs from the pin in {root / loaders.DATA_LOCK}: "
                                                     "the file was replaced")
    return Need("data", owner, str(p), PINNED, "sha256 matches its pin" if checksums else "pinned")


def _listed(owner: str, folder: Path, names: Sequence[str]) -> list[Need]:
    """ImageNet-style lists (the 5,000 validation images, ImageNet-C severities): one line per folder."""
    if not folder.is_dir():
        return [Need("data", owner, str(folder) + "/", MISSING, f"folder of {len(names):,} listed images")]
    absent = [n for n in names if not (folder / n).is_file()]
    if absent:
        return [Need("data", owner, str(folder) + "/", MISSING, f"{len(absent):,} of {len(names):,} listed images "
                     f"absent, e.g. {absent[0]}")]
    return [Need("data", owner, str(folder) + "/", OK, f"{len(names):,} listed images present")]


def data_needs(cells: Sequence[Any], root: Path, *, checksums: bool = True) -> list[Need]:
    """Every dataset file the cells read (each once)."""
    from ..data import loaders
    from ..data.pins import PinError, read_pins

    try:
        lock = read_pins(root / loaders.DATA_LOCK)
    except PinError as exc:
        return [Need("data", "data lock", str(root / loaders.DATA_LOCK), MISMATCH, str(exc))]
    needs: list[Need] = []
    seen: set[Any] = set()
    for c in cells:
        if c.model.dataset == "digits":
            continue  # embedded data
        if c.shift is None or c.shift.source.startswith("synthetic:"):
            key: tuple = ("id", c.model.dataset)
        elif c.shift.source.startswith("loader:"):
            key = ("shift", c.shift.id, c.severity if c.shift.source == "loader:imagenet-c" else None)
        else:
            continue  # generated without files
        if key in seen:
            continue
        seen.add(key)
        if key[0] == "id":
            src = loaders.ID_SOURCES.get(c.model.dataset)
            if src is None:
                continue
            owner = f"{c.model.dataset} test set"
            if src["format"] == "imagenet-list":
                needs += _listed(owner, root / src["root"], loaders.robustbench_imagenet_list())
            else:
                needs += [_file_need(owner, root, f, lock, checksums) for f in src["files"]]
            continue
        spec: ShiftSpec = c.shift
        if spec.source == "loader:imagenet-c":
            params = dict(spec.params)
            folder = root / params["dir"] / params["corruption"] / str(c.severity)
            names = loaders.robustbench_imagenet_list()
            if params.get("image_list"):
                lst = root / params["image_list"]
                if not lst.is_file():
                    needs.append(Need("data", spec.id, str(lst), MISSING, "image list"))
                    continue
                names = [ln.strip() for ln in lst.read_text(encoding="utf-8").splitlines() if ln.strip()]
            needs += _listed(f"{spec.id}-{c.severity}", folder, names)
            continue
        files = [_file_need(spec.id, root, f, lock, checksums) for f in spec.files]
        needs += files
        names = loaders.fixed_image_list(spec) if spec.source == "loader:image-folder" else None
        if names is not None and not any(n.problem for n in files):  # a reference's images: each must be there
            needs += _listed(spec.id, root / dict(spec.params)["root"], names)
    return needs


def _images(c: Any, root: Path) -> int:
    """Images a cell evaluates, at most: its n, capped by what its data holds where that is
    known without reading it (``.npy`` headers, ``limit``, the 5,000-image lists); a lean cell's
    share of them (:mod:`benchmark.run.design`)."""
    n = _available(c, root)
    return n if c.design is None else c.design.images_at_most(n)


def _available(c: Any, root: Path) -> int:
    import numpy as np

    from ..data import loaders

    n = c.n
    spec = c.shift
    try:
        if spec is None or spec.source.startswith("synthetic:"):
            if c.model.dataset == "imagenet":
                return min(n, 5000)
            return min(n, 10_000) if c.model.dataset in ("cifar10", "cifar100") else n
        params = dict(spec.params)
        if spec.source == "loader:npy-pair" and (root / params["labels"]).is_file():
            return min(n, len(np.load(root / params["labels"], mmap_mode="r")))
        if spec.source == "loader:cifar-c":
            labels = root / params["dir"] / "labels.npy"
            return min(n, len(np.load(labels, mmap_mode="r")) // 5) if labels.is_file() else min(n, 10_000)
        if spec.source == "loader:imagenet-c":
            return min(n, 5000)
        if params.get("image_ids"):  # the first `limit` images of a reference's list
            return min(n, len(loaders.fixed_image_list(spec)))
        if params.get("limit"):  # a seeded subset
            return min(n, int(params["limit"]))
    except (OSError, ValueError, RuntimeError):  # unreadable: the run will say so; n is the bound
        pass
    return n


# --------------------------------------------------------------------------- weights and networks
def weights_needs(models: Iterable[ModelSpec], registry: Registry, model_dir: str | Path | None = None, *,
                  checksums: bool = True) -> list[Need]:
    """The weights file(s) of each model, with the entry's sha256 or the lock file's pins."""
    from ..models.weights import WeightsError, lock_path, read_lock
    from ..registry import sha256_file

    try:
        lock = read_lock(lock_path(registry.root))
    except WeightsError as exc:
        return [Need("weights", "weights lock", str(lock_path(registry.root)), MISMATCH, str(exc))]
    needs = []
    for m in models:
        if m.source_kind == "robustbench":
            from ..models import robustbench

            groups, why = robustbench.needed_files(m, registry, model_dir)
            if why:
                needs.append(Need("weights", m.id, m.source, REFUSED, why))
            pins = lock.get(m.id, {})
            for i, alternatives in enumerate(groups):
                found = next((p for p in alternatives if p.is_file()), None)
                if found is None:
                    needs.append(Need("weights", m.id, " or ".join(str(p) for p in alternatives), MISSING,
                                      "see the entry's notes and docs/real-suites.md for how to get it"))
                    continue
                want = m.sha256 if i == 0 and m.sha256 else pins.get(found.name)
                if want is None:
                    needs.append(Need("weights", m.id, str(found), UNPINNED,
                                      f"no sha256 in the entry; recorded in {lock_path(registry.root)} on first load"))
                elif checksums and sha256_file(found) != want:
                    needs.append(Need("weights", m.id, str(found), MISMATCH,
                                      f"sha256 differs from {'the entry' if want == m.sha256 else 'its pin'}"))
                else:
                    needs.append(Need("weights", m.id, str(found), OK if want == m.sha256 else PINNED,
                                      "sha256 verified" if checksums else "present"))
            continue
        wp = registry.weights_path(m)
        if wp is None:
            needs.append(Need("weights", m.id, m.source, NOTE, "no weights file (built by its code)"))
        elif not wp.is_file():
            needs.append(Need("weights", m.id, str(wp), MISSING))
        elif m.sha256 is None:
            needs.append(Need("weights", m.id, str(wp), NOTE, "the entry pins no sha256"))
        elif checksums and sha256_file(wp) != m.sha256:
            needs.append(Need("weights", m.id, str(wp), MISMATCH, "sha256 differs from the entry's"))
        else:
            needs.append(Need("weights", m.id, str(wp), OK, "sha256 verified" if checksums else "present"))
    return needs


def network_needs(threats: Iterable[ThreatSpec], model_dir: str | Path | None = None, *,
                  checksums: bool = True) -> list[Need]:
    """The LPIPS feature network of each perceptual threat, with its sha256 or sha256 prefix."""
    from ..attacks.lpips import NETWORK_LOCK, check_network, pinned_sha256, weights_candidates
    from ..registry import sha256_file

    needs = []
    for t in threats:
        spec = dict(t.params).get("network")
        if spec is None:
            continue
        net = check_network(spec, t.path or t.id)
        cands = weights_candidates(net["weights"], t.path)
        if model_dir is not None and not Path(net["weights"]).is_absolute():
            cands[-1] = Path(model_dir).expanduser() / net["weights"]
        found = next((p for p in cands if p.is_file()), None)
        if found is None:
            needs.append(Need("network", t.id, " or ".join(str(p) for p in cands), MISSING,
                              f"the {net['arch']} LPIPS network: {' '.join(str(net.get('source', '')).split())}"))
            continue
        sha, prefix = net.get("sha256"), net.get("sha256_prefix")
        pin = pinned_sha256(found) if sha is None and prefix is None else None
        if sha is None and prefix is None and pin is None:
            needs.append(Need("network", t.id, str(found), REFUSED,
                              f"no checksum pinned: check the file, then write its sha256 into params.network.sha256 "
                              f"of {t.path or t.id} (the run stops otherwise); `shiftbench fetch` pins the file it "
                              f"downloads in {found.parent / NETWORK_LOCK}"))
            continue
        got = sha256_file(found) if checksums else None
        want = sha or pin
        if got is not None and ((want and got != want) or (prefix and not got.startswith(prefix))):
            needs.append(Need("network", t.id, str(found), MISMATCH, f"sha256 {got} does not match "
                              f"{'the entry' if sha else 'its pin in ' + NETWORK_LOCK if pin else 'the prefix ' + str(prefix)}"))
        else:
            needs.append(Need("network", t.id, str(found), PINNED if pin else OK,
                              ("sha256 verified" if got else "present") + (f" (pinned in {NETWORK_LOCK})" if pin else "")))
    return needs


# --------------------------------------------------------------------------- cost
def attack_cost(attack: str, args: Mapping[str, Any], n_classes: int) -> Cost | None:
    """Forward+backward and forward-only passes of the model per attacked image, at most (every
    image surviving every stage), from an attack's settings; None for an attack not modelled.
    ``tests/run/test_preflight.py`` counts the real attacks' calls against these figures."""
    a = dict(args)
    if attack == "apgd-mm":
        from ..attacks.apgd import _schedule

        steps, targets = int(a.get("steps", 50)), int(a.get("targets", 9))
        sched = _schedule(a.get("target_steps", 20), max(0, min(targets, n_classes - 1)))
        polish = int(a.get("polish_steps", 40))
        return Cost(1 + steps + sum(1 + s for s in sched) + (1 + polish if polish > 0 else 0), 2 + len(sched))
    if attack == "apgd-l1":
        from ..attacks.apgd import _schedule
        from ..attacks.apgd_l1 import PRE_STEPS, RESTARTS, SCHEDULE, STEPS, TARGET_STEPS, TARGETS

        pre = int(a.get("pre_steps", PRE_STEPS))  # one phase; the other runs restart at each phase of SCHEDULE
        sched = _schedule(a.get("target_steps", TARGET_STEPS), max(0, min(int(a.get("targets", TARGETS)), n_classes - 1)))
        runs = int(a.get("restarts", RESTARTS)) * (len(SCHEDULE) + int(a.get("steps", STEPS)))
        return Cost((1 + pre if pre > 0 else 0) + runs + sum(len(SCHEDULE) + s for s in sched), 1)
    if attack == "apgd-ce":
        return Cost(int(a.get("restarts", 1)) * (1 + int(a.get("steps", 100))))
    if attack == "mm5":
        targets = max(0, min(int(a.get("targets", 5)), n_classes - 1))
        return Cost(int(a.get("restarts", 1)) * targets * (1 + int(a.get("steps", 20))), 1)
    if attack in ("jpeg", "pixel-flow"):
        return Cost(int(a.get("restarts", 1)) * (1 + int(a.get("steps", 20))))
    runs = max(1, int(a.get("restarts", 1)))
    checks = runs if runs > 1 else 0  # attacks._restarts.with_restarts: each of several runs ends with a check
    if attack in ("stadv", "recolor"):  # a run: its steps, then a forward pass of its last images
        return Cost(runs * int(a.get("steps", 100)), runs + checks)
    if attack == "brightness-contrast":
        grid, steps = int(a.get("grid", 5)), int(a.get("steps", 10))
        return Cost(steps, 1 + grid * grid + steps)
    if attack == "rotation-translation":
        if a.get("search", "grid") == "random":
            return Cost(0, 1 + int(a.get("k", 100)))
        rot, tr = int(a.get("rotations", 5)), int(a.get("translations", 3))
        has_zero = rot % 2 == 1 and rot > 1 and tr % 2 == 1 and tr > 1  # an evenly spaced odd grid holds 0
        return Cost(0, rot * tr * tr + (0 if has_zero else 1))  # the identity, where the grid lacks it
    if attack == "ppgd":
        steps = int(a.get("steps", 40))
        return Cost(runs * steps, runs * (1 + steps) + checks)
    if attack == "lpa":
        return Cost(runs * int(a.get("steps", 40)) * max(1, int(a.get("binary_steps", 5))), checks)
    if attack == "square":
        return Cost(0, int(a.get("queries", 5000)))
    return None


class PassCounter:
    """Wraps a model and counts the images that go through it forward, and back through it
    (a hook on its output), so that an attack's real passes can be set beside :func:`attack_cost`
    (tests/run/test_preflight.py, perf/real_suite_cost.py)."""

    def __init__(self, model):
        import torch

        class _Counted(torch.nn.Module):
            def __init__(inner, m):
                super().__init__()
                inner.model = m

            def forward(inner, x):
                out = inner.model(x)
                self.forwards += len(x)
                if out.requires_grad:
                    out.register_hook(lambda g: setattr(self, "backwards", self.backwards + len(g)))
                return out

        self.forwards = self.backwards = 0
        self.module = _Counted(model).eval()

    def reset(self) -> None:
        self.forwards = self.backwards = 0

    def cost(self, images: int) -> Cost:
        """Per image: forward+backward passes, and forward passes without a backward."""
        return Cost(self.backwards / images, (self.forwards - self.backwards) / images)


def _check_cost(threat: ThreatSpec, cost: Cost | None, role: str, batch_len: int, n_classes: int = 10) -> float:
    """The deep trust checks' passes per cell: a sample of still-robust images is re-attacked at
    half the budget and by Square (Lp threats), or by the stronger run of the cell's attack (the
    others: ``convergence``; trust.py).  Escalations, which run only where a check fails, are not
    counted (the Square escalation of an Lp cell, the stronger run on every still-robust image of
    a non-Lp one)."""
    from . import trust

    if cost is None:
        return 0.0
    if threat.kind != "lp":
        name, args = trust.stronger(threat)
        stronger = attack_cost(name, args, n_classes) if args is not None else None
        if stronger is None:
            return 0.0
        share = trust.SHIFT_SAMPLE / batch_len if role == "dataset" else trust.DEEP_SAMPLE
        return share * stronger.total
    if role == "dataset":
        return trust.SHIFT_SAMPLE / batch_len * (cost.total + FORWARD_COST * trust.SHIFT_SQUARE_QUERIES)
    queries = trust.SQUARE_QUERIES if role == "id" else trust.SHIFT_SQUARE_QUERIES
    return trust.DEEP_SAMPLE * (cost.total + FORWARD_COST * queries)


def cost_lines(cells: Sequence[Any], root: Path, clean_acc: float = 1.0) -> list[ThreatLine]:
    """Cells, attacked images and passes per threat (dataset-shift cells count under the ID threat)."""
    from ..data.datasets import NUM_CLASSES

    lines: dict[str, ThreatLine] = {}
    for c in cells:
        t = c.threat
        line = lines.setdefault(t.id, ThreatLine(t.id, t.attack))
        cost = attack_cost(t.attack, t.attack_args, NUM_CLASSES.get(c.model.dataset, 10))
        images = int(round(_images(c, root) * clean_acc))
        line.cells += 1
        line.images += images
        if cost is None:
            line.per_image = None
            continue
        line.per_image = cost.total
        line.passes += images * cost.total + _check_cost(t, cost, c.role, len(c.batch),
                                                         NUM_CLASSES.get(c.model.dataset, 10))
    return list(lines.values())


@dataclass(frozen=True)
class DesignLine:
    """One protocol's cost for the same models and filters (preflight prints both)."""

    protocol: str
    this_run: bool
    cells: int
    images: int
    passes: float
    dataset_passes: float


def design_line(protocol: str, this_run: bool, cells: Sequence[Any], root: Path, clean_acc: float = 1.0) -> DesignLine:
    lines = cost_lines(cells, root, clean_acc)
    dataset = cost_lines([c for c in cells if c.role == "dataset"], root, clean_acc)
    return DesignLine(protocol, this_run, len(cells), sum(t.images for t in lines), sum(t.passes for t in lines),
                      sum(t.passes for t in dataset))


# --------------------------------------------------------------------------- rate
INPUT_SIZE = {"Crop288": 288}


def measure_rate(spec: ModelSpec, registry: Registry, *, device: str = "cpu", batch: int | None = None,
                 budget_s: float = 1.0) -> tuple[float, str]:
    """Forward+backward passes per second (images) of the model's architecture with random
    weights, on ``device``, timed for about ``budget_s`` seconds after one warm-up batch."""
    import torch

    from ..models.load import INPUT_SHAPES

    if spec.source_kind == "robustbench":
        from ..models.robustbench import build_architecture

        model = build_architecture(spec)
    elif spec.source_kind in ("builtin", "file"):
        from ..models import architectures

        model = architectures.build(spec.source_target, **dict(spec.arch_args))
    else:
        raise ValueError(f"model '{spec.id}' is built by its own code; give --rate")
    shape = INPUT_SHAPES.get(spec.dataset, (3, 32, 32))
    if spec.dataset == "imagenet":
        side = INPUT_SIZE.get(spec.preprocessing or "", 224)
        shape = (3, side, side)
    if batch is None:  # small on a CPU (a second's budget), larger on a GPU (small batches underuse it)
        batch = (16 if spec.dataset == "imagenet" else 128) if device.startswith("cuda") else \
            (2 if spec.dataset == "imagenet" else 4)
    model = model.to(device).eval()
    x = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device)

    def one() -> None:
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xg).sum(), xg)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    one()
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < budget_s:
        one()
        n += batch
    rate = n / (time.perf_counter() - t0)
    threads = torch.get_num_threads()
    return rate, (f"measured here on {spec.id}'s architecture with random weights, batch {batch}, {device}"
                  + (f", {threads} threads" if device == "cpu" else ""))


# --------------------------------------------------------------------------- all together
def preflight(registry: Registry, suite_id: str, cells: Sequence[Any], *, data_dir: str | Path | None = None,
              model_dir: str | Path | None = None, results_dir: str | Path = "results", rate: float | None = None,
              measure: bool = True, checksums: bool = True, clean_acc: float = 1.0, device: str = "cpu",
              designs: Mapping[str, Sequence[Any]] | None = None) -> Report:
    """Check what ``cells`` need and plan their cost (see the module docstring).  ``designs``:
    protocol -> the same grid's cells under it, whose costs are set side by side (the one whose
    cells are ``cells`` marked as this run's)."""
    from ..data import datasets

    t0 = time.perf_counter()
    suite = registry.suite(suite_id)
    root = datasets.data_root(data_dir)
    models = {c.model.id: c.model for c in cells}
    threats = {c.threat.id: c.threat for c in cells}
    needs = []
    if suite.dataset != "digits":
        needs += data_needs(cells, root, checksums=checksums)
    needs += weights_needs(models.values(), registry, model_dir, checksums=checksums)
    from ..models.robustbench import CUDA_ONLY_NOTE

    for m in models.values():  # robustbench builds some models only where CUDA is available
        if CUDA_ONLY_NOTE in (m.notes or "") and not str(device).startswith("cuda"):
            needs.append(Need("weights", m.id, m.source, REFUSED, f"{CUDA_ONLY_NOTE} Run it with --device cuda"))
    needs += network_needs(threats.values(), model_dir, checksums=checksums)
    needs = fetch_notes(registry, needs, root, model_dir)
    lines = cost_lines(cells, root, clean_acc)
    disk_needed = sum(RESULT_BYTES + 2 * _images(c, root) for c in cells)
    where = Path(results_dir).resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free if where.exists() else None
    if free is not None:
        status = OK if free >= 2 * disk_needed else NO_SPACE
        needs.append(Need("disk", "results", str(results_dir), status,
                          f"{free / 2**30:,.1f} GiB free, about {disk_needed / 2**20:,.0f} MiB needed"))
    notes = []
    rate_note = "given with --rate" if rate else "not measured"
    if not rate and measure:
        first = next((m for m in models.values() if m.source_kind in ("robustbench", "builtin", "file")), None)
        if first is None:
            rate_note = "no model whose architecture can be built without its code"
        else:
            try:
                rate, rate_note = measure_rate(first, registry, device=device)
            except Exception as exc:  # a constructor that needs CUDA, say: the plan still stands
                rate_note = f"could not measure on {first.id}: {type(exc).__name__}: {str(exc)[:120]}"
    if rate and len({m.architecture for m in models.values()}) > 1:
        notes.append("models differ in size: hours assume every model runs at the rate of the one measured")
    if any(t.kind == "lpips" for t in threats.values()):
        notes.append("perceptual threats (PPGD, LPA) also run their LPIPS network at every step: not counted in passes")
    compared = [design_line(p, cs is cells, cs, root, clean_acc) for p, cs in (designs or {}).items()]
    return Report(suite_id, needs, len(cells), len(models), lines, rate, rate_note, free, disk_needed,
                  time.perf_counter() - t0, notes, compared)


def fetch_notes(registry: Registry, needs: Sequence[Need], root: Path, model_dir: str | Path | None) -> list[Need]:
    """Each missing item with whether ``shiftbench fetch`` can get it (``run/sources.py``)."""
    import dataclasses

    from .sources import fetch_note, source_of

    out = []
    for n in needs:
        if n.status == MISSING:
            try:
                n = dataclasses.replace(n, fetch=fetch_note(source_of(registry, n, root, model_dir)))
            except Exception as exc:  # an entry fetch cannot map: say so, the report stands
                n = dataclasses.replace(n, fetch=f"fetch cannot get it ({type(exc).__name__}: {exc})")
        out.append(n)
    return out


def environment_model_dir(model_dir: str | None) -> None:
    """``--model-dir`` also names where LPIPS networks are looked up (``$SHIFTBENCH_MODELS``),
    in this process and the workers it starts."""
    if model_dir:
        os.environ["SHIFTBENCH_MODELS"] = str(Path(model_dir).expanduser())


__all__ = ["Need", "Cost", "Report", "DesignLine", "design_line", "PassCounter", "attack_cost", "data_needs", "weights_needs", "network_needs", "measure_rate",
           "preflight", "environment_model_dir"]
