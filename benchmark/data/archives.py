"""Downloaded archives and the checksums their sources publish (``shiftbench verify-archives``).

Nothing is downloaded at run time, and most sources publish checksums only for the archives
people download, not for the files inside them.  A shift entry's ``archives`` list those archives
(file name, URL, size, md5 and/or sha256, and ``source``: where each checksum was published); the
ID test sets' archives are in :data:`ID_ARCHIVES`.  :func:`verify` hashes an archive found in a
folder and compares, so a user checks a download once, before extracting it.
"""
from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..registry import Registry, SuiteSpec

# The ID test sets' archives.  Sources: torchvision (installed) publishes the md5 it checks each
# download against (torchvision/datasets/cifar.py CIFAR10/CIFAR100.tgz_md5, torchvision/datasets/
# imagenet.py ARCHIVE_META["val"]); TensorFlow Datasets records size and sha256 of the ImageNet
# validation tar in tensorflow_datasets/url_checksums/imagenet2012_corrupted.txt.
ID_ARCHIVES: dict[str, tuple[Mapping[str, Any], ...]] = {
    "cifar10": ({
        "name": "cifar-10-python.tar.gz", "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "size": 170498071, "md5": "c58f30108f718f92721af3b95e74349a",
        "source": "md5: torchvision.datasets.CIFAR10.tgz_md5; size: the byte count its downloaders report "
                  "('Successfully downloaded cifar-10-python.tar.gz 170498071 bytes', TensorFlow models' "
                  "download_and_convert_cifar10)",
    },),
    "cifar100": ({
        "name": "cifar-100-python.tar.gz", "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85", "source": "md5: torchvision.datasets.CIFAR100.tgz_md5",
    },),
    "imagenet": ({
        "name": "ILSVRC2012_img_val.tar", "url": "https://image-net.org/download-images.php (account needed)",
        "size": 6744924160, "md5": "29b22e2961454d5413ddabcf34fc5622",
        "sha256": "c7e06a6c0baccf06d8dbeb6577d71efff84673a5dbdd50633ab44f8ea0456ae0",
        "source": "md5: torchvision.datasets.imagenet ARCHIVE_META['val']; size and sha256: "
                  "tensorflow_datasets url_checksums/imagenet2012_corrupted.txt",
    },),
}


@dataclass
class ArchiveCheck:
    """One archive's verdict: ``ok``, ``missing`` or ``mismatch`` (with what differs)."""

    archive: Mapping[str, Any]
    path: Path
    status: str
    problems: list[str] = field(default_factory=list)
    used_by: list[str] = field(default_factory=list)

    def describe(self) -> str:
        a = self.archive
        checked = ", ".join(k for k in ("size", "md5", "sha256") if a.get(k) is not None)
        users = f"{len(self.used_by)} entries" if len(self.used_by) > 3 else ", ".join(self.used_by)
        if self.status == "ok":
            return f"ok        {self.path} ({checked} match; for {users})"
        if self.status == "missing":
            return f"missing   {self.path} (get it from {a['url']}; for {users})"
        return (f"MISMATCH  {self.path}: " + "; ".join(self.problems)
                + f". Published by: {a['source']}. Re-download it from {a['url']}.")


def suite_archives(registry: Registry, suite: SuiteSpec, shifts: str | None = None,
                   include_id: bool = True) -> list[tuple[Mapping[str, Any], list[str]]]:
    """The distinct archives a suite's data comes from, each with the ids of the entries using it.

    ``shifts``: comma-separated glob patterns over shift ids (``id`` names the ID test set)."""
    pats = [p.strip() for p in shifts.split(",") if p.strip()] if shifts else None

    def keep(name: str) -> bool:
        return pats is None or any(fnmatch.fnmatchcase(name, p) for p in pats)

    found: dict[tuple, tuple[Mapping[str, Any], list[str]]] = {}

    def add(archive: Mapping[str, Any], user: str) -> None:
        key = (archive["name"], archive.get("md5"), archive.get("sha256"))
        found.setdefault(key, (archive, []))[1].append(user)

    if include_id and keep("id"):
        for a in ID_ARCHIVES.get(suite.dataset, ()):
            add(a, "id")
    for sid in suite.dataset_shifts:
        if keep(sid):
            for a in registry.shift(sid).archives:
                add(a, sid)
    return list(found.values())


def _hashes(path: Path, algos: Sequence[str]) -> dict[str, str]:
    hs = {a: hashlib.new(a) for a in algos}
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            for h in hs.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hs.items()}


def verify(archive: Mapping[str, Any], folder: Path, used_by: Sequence[str] = ()) -> ArchiveCheck:
    """Compare ``folder/<name>`` with the archive's published size and checksums."""
    path = Path(folder) / str(archive["name"])
    check = ArchiveCheck(archive, path, "ok", used_by=list(used_by))
    if not path.is_file():
        check.status = "missing"
        return check
    size = archive.get("size")
    if size is not None and path.stat().st_size != size:  # cheap: no need to hash a truncated download
        check.problems.append(f"size {path.stat().st_size} bytes, published {size}")
    else:
        algos = [a for a in ("md5", "sha256") if archive.get(a)]
        for algo, got in _hashes(path, algos).items():
            if got != archive[algo]:
                check.problems.append(f"{algo} {got}, published {archive[algo]}")
    if check.problems:
        check.status = "mismatch"
    return check


def verify_suite(registry: Registry, suite: SuiteSpec, folder: Path, shifts: str | None = None,
                 report: Callable[[ArchiveCheck], None] | None = None) -> list[ArchiveCheck]:
    out = []
    for archive, users in suite_archives(registry, suite, shifts):
        c = verify(archive, folder, users)
        if report:
            report(c)
        out.append(c)
    return out
