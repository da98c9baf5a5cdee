"""Getting the files of the real suites: downloads checked before use, archives unpacked into place.

``shiftbench fetch`` (planned in ``run/fetch.py``) hands each missing file to this module as a
:class:`Job`: one :class:`Download` (URL, name, size, published checksums) and what to put in
place from it.  The work is done by well-kept libraries, each for what it does well:

* **pooch** (SciPy, scikit-image, MNE fetch their data with it) downloads into a temporary file
  beside the target, retries with a growing wait, checks the sha256/md5 and only then moves the
  file into place (a mismatch deletes it), skips a file that is present and matches, and unpacks
  archives (:class:`pooch.Untar`, :class:`pooch.Unzip`, with ``members``: only what the layout needs).
* **requests**, inside the downloader given to pooch (:class:`ResumingDownloader`), adds what pooch
  lacks: an interrupted download resumes with an HTTP ``Range`` request from ``<name>.part``
  instead of starting again, a stalled server times out, and a tqdm bar shows bytes and rate.
* **gdown**, through robustbench's own ``download_gdrive_new``, fetches RobustBench checkpoints
  from Google Drive exactly as ``robustbench.utils.load_model`` does (see ``models/robustbench.py``).

A file with no published checksum is pinned on its first download (trust on first use): its
sha256 goes into a lock file, with a message, and every later download or copy must match it.
``--mirror URL`` (or ``$SHIFTBENCH_MIRROR``) rewrites ``https://HOST/PATH`` to ``URL/HOST/PATH``;
``--from-dir DIR`` takes files already downloaded (verified like a download, never deleted).
"""
from __future__ import annotations

import os
import shutil
import sys
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

MIRROR_ENV = "SHIFTBENCH_MIRROR"
STAGING = ".shiftbench-fetch"  # under the data root or model dir: downloads and unpacking in progress
RETRIES = 3
TIMEOUT = 60.0  # seconds without a byte before a server counts as stalled
CHUNK = 1 << 16
SPACE_FACTOR = 2  # an archive and what is unpacked from it can be on disk at once


class FetchError(RuntimeError):
    """A download or an unpacking failed; the message names the URL or file and what to do."""


@dataclass(frozen=True)
class Download:
    """One file to download, as published."""

    url: str
    name: str  # the file name as downloaded
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None  # torch.hub convention: the file name holds the start of its sha256
    source: str = ""  # where the checksums were published
    pin: tuple[str, str] | None = None  # (lock file, key): where the sha256 is pinned when none is published
    gdrive_id: str | None = None  # a RobustBench checkpoint on Google Drive (robustbench's download code)

    @property
    def checked(self) -> str:
        """What a download is checked against, in words."""
        if self.sha256:
            return "sha256"
        if self.md5:
            return "md5"
        if self.sha256_prefix:
            return f"sha256 prefix {self.sha256_prefix}"
        return "pinned on first download"


@dataclass(frozen=True)
class Job:
    """A download and what it puts in place: the file itself (``unpack`` empty) at ``targets[0]``,
    or members of the archive (file names, or folders ending in ``/``) under ``root`` + ``into``."""

    what: tuple[str, ...]  # the entries that need it
    download: Download
    targets: tuple[Path, ...]  # what exists once the job is done
    root: Path
    unpack: str = ""  # "" | "tar" | "zip" | a builder's name (:data:`BUILDERS`)
    members: tuple[str, ...] = ()
    into: str = ""  # prefix under root of the unpacked members
    rename: Mapping[str, str] = field(default_factory=dict)  # member -> path under root, where they differ
    pin_targets: str | None = None  # a lock file: what is put in place has no published checksum, pin it there


@dataclass(frozen=True)
class Manual:
    """Something fetch does not download (a licence, a login, no public URL): what to get, where."""

    what: str
    page: str
    file: str
    where: str

    def describe(self) -> str:
        return f"{self.what}: get {self.file} from {self.page} and put it at {self.where}"


# --------------------------------------------------------------------------- mirrors
def mirror_url(url: str, mirror: str | None) -> str:
    """``https://HOST/PATH`` -> ``MIRROR/HOST/PATH`` (a cluster's shared cache, an artifact store)."""
    if not mirror:
        return url
    parts = urlsplit(url)
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    return f"{mirror.rstrip('/')}/{parts.netloc}{rest}"


def mirror_from_env(mirror: str | None) -> str | None:
    return mirror or os.environ.get(MIRROR_ENV) or None


# --------------------------------------------------------------------------- the downloader pooch calls
class ResumingDownloader:
    """A pooch downloader over requests: bytes go to ``part`` (kept across retries and runs), a
    ``Range`` request resumes them, a stall of ``timeout`` seconds raises, a tqdm bar shows bytes
    and rate.  The finished file is moved onto pooch's temporary file, which pooch then checks."""

    def __init__(self, part: Path, *, size: int | None, timeout: float, progress: bool, label: str):
        self.part, self.size, self.timeout, self.progress, self.label = part, size, timeout, progress, label

    def __call__(self, url: str, output_file: str, pooch_obj: Any, check_only: bool = False) -> None:
        import requests
        from tqdm import tqdm

        have = self.part.stat().st_size if self.part.is_file() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, stream=True, timeout=(self.timeout, self.timeout), headers=headers) as r:
            if have and r.status_code == 416 and self.size == have:  # the part is already whole
                pass
            else:
                r.raise_for_status()
                if r.status_code != 206:  # the server ignored the range: start again
                    have = 0
                length = r.headers.get("Content-Length")
                total = have + int(length) if length is not None else self.size
                with tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=self.label, disable=not self.progress, file=sys.stderr, leave=False) as bar:
                    out = None
                    try:
                        for chunk in r.iter_content(CHUNK):
                            if out is None:  # the part file appears with the first byte, not before
                                out = open(self.part, "ab" if have else "wb")
                            out.write(chunk)
                            bar.update(len(chunk))
                    finally:
                        if out is not None:
                            out.close()
        if not self.part.is_file():
            self.part.write_bytes(b"")  # an empty file, as served
        got = self.part.stat().st_size
        if self.size is not None and got != self.size:
            self.part.unlink()
            raise ValueError(f"size {got} bytes, published {self.size}; the download was deleted")
        os.replace(self.part, output_file)


_GDOWN_LOCK = threading.Lock()


class GdriveDownloader:
    """A pooch downloader that runs robustbench's own ``download_gdrive_new`` (gdown, Google Drive's
    confirmation pages handled); with a mirror, gdown is handed the mirrored URL instead of the one
    it builds from the id."""

    def __init__(self, gdrive_id: str, mirror: str | None):
        self.gdrive_id, self.mirror = gdrive_id, mirror

    def __call__(self, url: str, output_file: str, pooch_obj: Any, check_only: bool = False) -> None:
        import gdown

        from .._compat import install_autoattack_alias

        install_autoattack_alias()  # robustbench imports only with it
        from robustbench import utils as rb_utils

        tmp = Path(output_file)
        with _GDOWN_LOCK:  # the module attribute robustbench calls is swapped for the mirror
            real = rb_utils.gdown
            if self.mirror:
                rb_utils.gdown = _MirroredGdown(gdown, self.mirror)
            try:
                rb_utils.download_gdrive_new(self.gdrive_id, tmp)
            finally:
                rb_utils.gdown = real
                for left in tmp.parent.glob(tmp.name + "?*"):  # gdown's own temporary file, on failure
                    left.unlink(missing_ok=True)
        head = tmp.read_bytes()[:4] if tmp.is_file() else b""
        if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch.save: a zip, or a legacy pickle
            tmp.unlink(missing_ok=True)
            raise ValueError(f"not a checkpoint (the server sent {head!r}...; a page, not the file)")


class _MirroredGdown:
    def __init__(self, gdown: Any, mirror: str):
        self._gdown, self._mirror = gdown, mirror

    def download(self, url: str | None = None, output: str | None = None, id: str | None = None, **kw: Any):
        url = url or f"https://drive.google.com/uc?id={id}"
        return self._gdown.download(url=mirror_url(url, self._mirror), output=output, **kw)


# --------------------------------------------------------------------------- one download
def _known_hash(d: Download) -> str | None:
    if d.sha256:
        return d.sha256
    return f"md5:{d.md5}" if d.md5 else None


def _check_extra(d: Download, path: Path, url: str) -> None:
    """What pooch does not check: a sha256 prefix, the size of a file found on disk, the pin."""
    from ..registry import sha256_file
    from .pins import pin

    if d.size is not None and path.stat().st_size != d.size:
        raise FetchError(f"{path}: size {path.stat().st_size} bytes, published {d.size} ({url})")
    if d.sha256_prefix and not d.sha256:
        got = sha256_file(path)
        if not got.startswith(d.sha256_prefix):
            raise FetchError(f"{url}: sha256 {got} does not start with {d.sha256_prefix}, as its name says")
    if d.pin and not (d.sha256 or d.md5 or d.sha256_prefix):
        lock, key = d.pin
        got = sha256_file(path)
        pinned, now = pin(Path(lock), key, {path.name: got})
        if now:
            print(f"note: {d.name} has no published checksum; pinned its sha256 {got} in {lock} (trust on first "
                  "use): later downloads and copies must match it", file=sys.stderr)
        elif pinned.get(path.name, got) != got:
            raise FetchError(f"{url}: sha256 {got}, but {lock} pins {pinned.get(path.name)} (from the first "
                             f"download); delete '{key}' from the lock file to trust the new file")


def get(d: Download, folder: Path, *, mirror: str | None = None, from_dir: Path | None = None,
        retries: int = RETRIES, timeout: float = TIMEOUT, progress: bool = True) -> tuple[Path, bool]:
    """The verified file: ``from_dir/<name>`` when there (never deleted), else downloaded into
    ``folder``.  Returns ``(path, downloaded)``; raises :class:`FetchError` naming the URL."""
    import pooch
    import requests

    pooch.get_logger().setLevel("WARNING")  # what is downloaded, and where, is said by fetch itself
    url = mirror_url(d.url, mirror)
    if from_dir is not None and (Path(from_dir) / d.name).is_file():
        path = Path(from_dir) / d.name
        if _known_hash(d) and not pooch.hashes.hash_matches(str(path), _known_hash(d)):
            raise FetchError(f"{path} (from --from-dir): its {d.checked} does not match the one published for "
                             f"{d.url}; download it again")
        _check_extra(d, path, str(path))
        return path, False
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f"{d.name}.part"
    if d.gdrive_id:
        downloader: Callable = GdriveDownloader(d.gdrive_id, mirror)
    else:
        downloader = ResumingDownloader(part, size=d.size, timeout=timeout, progress=progress, label=d.name)
    fetcher = pooch.create(path=folder, base_url="", registry={d.name: _known_hash(d)}, urls={d.name: url},
                           retry_if_failed=retries)
    try:
        path = Path(fetcher.fetch(d.name, downloader=downloader))
    except requests.exceptions.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.response.status_code} {exc.response.reason} after {retries + 1} "
                         "attempts") from None
    except requests.exceptions.Timeout:
        raise FetchError(f"{url}: no data for {timeout:g} s (stalled server) after {retries + 1} attempts") from None
    except requests.exceptions.RequestException as exc:
        raise FetchError(f"{url}: unreachable after {retries + 1} attempts ({type(exc).__name__}: "
                         f"{_short(exc)})") from None
    except ValueError as exc:  # pooch's checksum mismatch (the download is deleted), a wrong size
        raise FetchError(f"{url}: {exc}") from None
    except Exception as exc:  # gdown's own errors
        raise FetchError(f"{url}: {type(exc).__name__}: {_short(exc)}") from None
    try:
        _check_extra(d, path, url)
    except FetchError:
        path.unlink(missing_ok=True)
        raise
    return path, True


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) < 200 else text[:200] + "..."


# --------------------------------------------------------------------------- putting files in place
def _safe_members(names: Sequence[str], archive: Path) -> None:
    for n in names:
        p = PurePosixPath(n)
        if p.is_absolute() or ".." in p.parts:
            raise FetchError(f"{archive}: member {n!r} would land outside the data root; not unpacked")


def _matches(name: str, wanted: str) -> bool:
    """A member is wanted by its name, a folder (``dir/``) holding it, or ``**/<file>`` (any folder)."""
    if wanted.startswith("**/"):
        return name == wanted[3:] or name.endswith("/" + wanted[3:])
    return name == wanted or (wanted.endswith("/") and name.startswith(wanted))


def _selected(all_names: Sequence[str], wanted: Sequence[str]) -> list[str]:
    return [n for n in all_names if any(_matches(n, w) for w in wanted)]


def _dest(job: Job, name: str) -> str:
    for w, to in job.rename.items():
        if _matches(name, w):
            return to
    return job.into + name


def unpack(job: Job, archive: Path) -> list[Path]:
    """The members the layout needs, unpacked by pooch into a staging folder under the root, then
    moved into place one by one; a failure leaves nothing of this job in place."""
    import pooch

    pooch.get_logger().setLevel("WARNING")
    staging = job.root / STAGING / f"{job.download.name}.unpack"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if job.unpack == "tar":
            with tarfile.open(archive) as tar:
                infos = [i for i in tar.getmembers() if not i.isdir()]
            names = _selected([i.name for i in infos], job.members)
            chosen = set(names)
            bad = [i.name for i in infos if i.name in chosen and not i.isreg()]
            processor: Any = pooch.Untar(members=list(job.members), extract_dir=str(staging))
        else:
            with zipfile.ZipFile(archive) as zf:
                names = _selected([n for n in zf.namelist() if not n.endswith("/")], job.members)
            bad = []
            processor = pooch.Unzip(members=names, extract_dir=str(staging))
        _safe_members(names, archive)
        if bad:
            raise FetchError(f"{archive}: {bad[0]} is a link or device, not a file; not unpacked")
        missing = [m for m in job.members if not any(_matches(n, m) for n in names)]
        if missing or not names:
            raise FetchError(f"{archive} ({job.download.url}) holds no {missing[0] if missing else job.members[0]}; "
                             "it is not the archive the layout expects")
        processor(str(archive), "download", None)
        placed = []
        for n in names:
            dest = job.root / _dest(job, n)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / n, dest)
            placed.append(dest)
        return placed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_cifar10_r(job: Job, archive: Path) -> list[Path]:
    """CIFAR-10-R from ImageNet-R: each listed ``<class>/<wnid>_<stem>.png`` is the ImageNet-R image
    ``imagenet-r/<wnid>/<stem>.jpg`` resized to 32x32 with PIL's box filter (the reference's
    ``make_cifar-r.py``).  Read from the tar one member at a time; written to a staging folder,
    then moved into place whole."""
    from PIL import Image

    lines = list(job.members)
    wanted = {}
    for line in lines:
        cls, name = line.split("/")
        wnid, stem = name[: -len(".png")].split("_", 1)
        wanted[f"imagenet-r/{wnid}/{stem}.jpg"] = line
    staging = job.root / STAGING / "CIFAR-10-R.build"
    shutil.rmtree(staging, ignore_errors=True)
    target = job.targets[0]
    try:
        with tarfile.open(archive) as tar:
            for info in tar:
                line = wanted.pop(info.name, None)
                if line is None or not info.isreg():
                    continue
                out = staging / line
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(info) as fh, Image.open(fh) as im:
                    im.convert("RGB").resize((32, 32), Image.BOX).save(out)
        if wanted:
            raise FetchError(f"{archive} lacks {len(wanted)} of the {len(lines)} ImageNet-R images CIFAR-10-R is made "
                             f"of, e.g. {next(iter(wanted))}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.replace(staging, target)
            return [target]
        placed = []  # a folder with some images already: the built ones join it
        for f in sorted(staging.rglob("*.png")):
            dest = target / f.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
            placed.append(dest)
        return placed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


BUILDERS: dict[str, Callable[[Job, Path], list[Path]]] = {"cifar10-r": build_cifar10_r}


def put_in_place(job: Job, path: Path) -> list[Path]:
    if job.unpack in ("tar", "zip"):
        return unpack(job, path)
    if job.unpack:
        return BUILDERS[job.unpack](job, path)
    dest = job.targets[0]
    dest.parent.mkdir(parents=True, exist_ok=True)
    if path.parent.name == STAGING:  # downloaded by us: move it
        os.replace(path, dest)
    else:  # a copy from --from-dir stays where it is
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    return [dest]


# --------------------------------------------------------------------------- free space
def space_needed(jobs: Sequence[Job]) -> dict[Path, int]:
    """Bytes each file system needs, at most (an archive and its unpacked members side by side)."""
    out: dict[Path, int] = {}
    for j in jobs:
        if j.download.size:
            where = _existing(j.root)
            out[where] = out.get(where, 0) + SPACE_FACTOR * j.download.size
    return out


def _existing(p: Path) -> Path:
    p = Path(p).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_space(jobs: Sequence[Job]) -> None:
    for where, need in space_needed(jobs).items():
        free = shutil.disk_usage(where).free
        if free < need:
            raise FetchError(f"not enough free disk under {where}: the downloads need about {need / 2**30:,.2f} GiB "
                             f"(archives and what is unpacked from them), {free / 2**30:,.2f} GiB free; free some space "
                             "or give --data-dir/--model-dir on a larger disk")


def human(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def staging_of(job: Job) -> Path:
    return job.root / STAGING


__all__ = ["Download", "Job", "Manual", "FetchError", "get", "put_in_place", "check_space", "mirror_url",
           "mirror_from_env", "human", "MIRROR_ENV", "STAGING"]
