"""``shiftbench fetch``: from an empty disk to a suite that passes preflight.

:func:`plan` asks preflight what the planned cells need and is missing (presence only), and maps
each missing item to its source (``run/sources.py``): downloads, merged per archive (the fifteen
CIFAR-10-C entries share one tar), and instructions for gated data.  :func:`execute` checks the
free disk, then downloads (``--jobs`` at a time, ``data/fetch.py``: pooch, with resume, retries,
timeouts and checksums) and puts each file in place.  The first failed download stops the
others from starting; nothing partial is left in place (a partly downloaded ``.part`` file is kept
under the staging folder only when bytes arrived, so that the next run resumes it).
"""
from __future__ import annotations

import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data.fetch import STAGING, FetchError, Job, Manual, check_space, get, human, put_in_place
from ..registry import Registry


@dataclass
class Plan:
    jobs: list[Job]
    manual: list[Manual]
    present: int  # items already there (skipped)

    @property
    def size(self) -> int:
        return sum(j.download.size or 0 for j in self.jobs)

    def total(self) -> str:
        unknown = sum(1 for j in self.jobs if j.download.size is None)
        return (f"{len(self.jobs)} download(s), {human(self.size)}" + (f" and {unknown} of unknown size" if unknown else "")
                + f"; {self.present} item(s) already present")

    def text(self, mirror: str | None = None) -> str:
        from ..data.fetch import mirror_url

        out = []
        for j in self.jobs:
            dest = ", ".join(str(t) for t in j.targets[:2]) + (f" and {len(j.targets) - 2} more" if len(j.targets) > 2 else "")
            out.append(f"{human(j.download.size):>12}  {mirror_url(j.download.url, mirror)}  -> {dest}  "
                       f"({j.download.checked}; for {', '.join(j.what[:3])}{' ...' if len(j.what) > 3 else ''})")
        out.append("total: " + self.total())
        for m in self.manual:
            out.append(f"not downloaded: {m.describe()}")
        return "\n".join(out)


def _merge(jobs: Sequence[Job]) -> list[Job]:
    """One job per download: the members and targets of every item it provides, together."""
    out: dict[tuple, Job] = {}
    for j in jobs:
        key = (j.download.url, j.root, j.unpack, j.into)
        if key not in out:
            out[key] = j
            continue
        k = out[key]
        out[key] = replace(k, what=tuple(dict.fromkeys(k.what + j.what)), targets=tuple(dict.fromkeys(k.targets + j.targets)),
                           members=tuple(dict.fromkeys(k.members + j.members)), rename={**k.rename, **j.rename})
    return list(out.values())


def plan(registry: Registry, suite_id: str, cells: Sequence[Any], *, data_dir: str | Path | None = None,
         model_dir: str | Path | None = None) -> Plan:
    """What is missing for ``cells`` and where each missing item comes from (nothing is read but
    file names; no network)."""
    from ..data import datasets
    from . import preflight, sources

    suite = registry.suite(suite_id)
    root = datasets.data_root(data_dir)
    needs = []
    if suite.dataset != "digits":
        needs += preflight.data_needs(cells, root, checksums=False)
    models = {c.model.id: c.model for c in cells}
    needs += preflight.weights_needs(models.values(), registry, model_dir, checksums=False)
    needs += preflight.network_needs({c.threat.id: c.threat for c in cells}.values(), model_dir, checksums=False)
    jobs: list[Job] = []
    manual: list[Manual] = []
    present = 0
    for n in needs:
        if n.status != preflight.MISSING:
            present += n.status in (preflight.OK, preflight.PINNED, preflight.UNPINNED)
            continue
        found = sources.source_of(registry, n, root, model_dir)
        if isinstance(found, Manual):
            manual.append(found)
        else:
            jobs += found
    for j in jobs:  # a network published without a checksum is pinned once in place
        if j.download.pin and j.unpack == "zip":
            j2 = replace(j, pin_targets=j.download.pin[0])
            jobs[jobs.index(j)] = j2
    return Plan(_merge(jobs), manual, present)


@dataclass
class Outcome:
    placed: list[Path] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)  # not started after a failure

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def _pin_placed(job: Job, placed: Sequence[Path]) -> None:
    from ..data.pins import pin
    from ..registry import sha256_file

    for p in placed:
        got = sha256_file(p)
        pinned, now = pin(Path(job.pin_targets), p.name, {p.name: got})
        if now:
            print(f"note: {p} has no published checksum; pinned its sha256 {got} in {job.pin_targets} (trust on "
                  "first use)", file=sys.stderr)
        elif pinned.get(p.name) != got:
            p.unlink()
            raise FetchError(f"{p}: sha256 {got}, but {job.pin_targets} pins {pinned.get(p.name)}; the file was "
                             "removed (delete its line in the lock file to trust the new one)")


def _one(job: Job, *, mirror, from_dir, retries, timeout, progress) -> list[Path]:
    path, downloaded = get(job.download, job.root / STAGING, mirror=mirror, from_dir=from_dir, retries=retries,
                           timeout=timeout, progress=progress)
    try:
        placed = put_in_place(job, path)
    finally:
        if downloaded and job.unpack and path.is_file():  # an archive we downloaded: unpacked, not kept
            path.unlink()
    if job.pin_targets:
        _pin_placed(job, placed)
    return placed


def execute(the_plan: Plan, *, jobs: int = 1, mirror: str | None = None, from_dir: str | Path | None = None,
            retries: int = 3, timeout: float = 60.0, progress: bool = True,
            report: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Outcome:
    """Download and put in place every job of the plan; the first failure stops new downloads."""
    check_space(the_plan.jobs)  # before any byte is downloaded
    roots = {j.root for j in the_plan.jobs}
    existed = {r: r.exists() for r in roots}
    out = Outcome()
    stop = False

    def work(job: Job) -> None:
        nonlocal stop
        if stop:
            out.skipped.append(job)
            return
        try:
            placed = _one(job, mirror=mirror, from_dir=Path(from_dir) if from_dir else None, retries=retries,
                          timeout=timeout, progress=progress)
        except FetchError as exc:
            stop = True
            out.failed.append((job, str(exc)))
            report(f"error: {exc}")
            return
        out.placed += placed
        report(f"fetched {job.download.name} -> " + ", ".join(str(p) for p in job.targets[:3])
               + (f" and {len(job.targets) - 3} more" if len(job.targets) > 3 else ""))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(work, the_plan.jobs))
    for r in roots:  # nothing partial: the staging folders go unless a resumable part is in them
        staging = r / STAGING
        if staging.is_dir() and not any(staging.rglob("*.part")):
            shutil.rmtree(staging, ignore_errors=True)
        elif staging.is_dir():
            report(f"note: partly downloaded file(s) kept in {staging} to resume next time")
        if not existed[r]:
            _remove_empty(r)
    return out


def _remove_empty(folder: Path) -> None:
    """``folder`` and its parents, up to the first that holds something, when fetch made them and
    put nothing in them."""
    folder = Path(folder)
    while folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def pin_models(registry: Registry, models: Sequence[Any], model_dir: str | Path | None,
               placed: Sequence[Path] = ()) -> None:
    """Checkpoints without an entry sha256: pinned in the weights lock now (trust on first use, with
    the lock's message), or verified against their pin; a file placed by this fetch that does not
    match its pin is removed, and the error names it."""
    from ..models import robustbench
    from ..models.weights import WeightsError, pinned

    for m in models:
        if m.source_kind != "robustbench" or m.sha256:
            continue
        files = robustbench.weight_files(m, registry, model_dir)
        if not files:
            continue
        try:
            pinned(registry.root, m.id, files, m.path)
        except WeightsError as exc:
            for f in files:
                if f in set(placed):
                    f.unlink()
            raise FetchError(f"{exc} (the downloaded file was removed)") from None
