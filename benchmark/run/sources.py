"""Where each file a run needs comes from: preflight's missing items mapped to public downloads.

For every missing :class:`~benchmark.run.preflight.Need`, :func:`source_of` gives a
:class:`~benchmark.data.fetch.Job` (a download and what to put in place from it) or a
:class:`~benchmark.data.fetch.Manual` (gated data, or no public file: what to get, from where, and
where to put it).  ``preflight`` uses it to say whether ``fetch`` can get an item; ``fetch`` to get it.

The sources: the registry's ``archives`` (shift entries) and ``data.archives.ID_ARCHIVES`` (ID test
sets), with their published size and checksums; the few files published without an archive
(:data:`DIRECT_FILES`); CIFAR-10-R, built from ImageNet-R's archive; RobustBench's checkpoints
(``models.robustbench.checkpoint_sources``); the LPIPS networks (:data:`NETWORK_SOURCES`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..data.fetch import Download, Job, Manual
from ..registry import Registry, RegistryError

# Where an archive's members go under the data root, when not as they are named in it: ImageNet-C's
# four tars hold <corruption>/<severity>/<wnid>/*.JPEG (Zenodo record 2235448), laid out under ImageNet-C/.
ARCHIVE_INTO = {"noise.tar": "ImageNet-C/", "blur.tar": "ImageNet-C/", "weather.tar": "ImageNet-C/",
                "digital.tar": "ImageNet-C/"}

# Files published as they are (no archive), by their path under the data root: URL and size as
# TensorFlow Datasets records them (tensorflow_datasets/url_checksums/cifar10_1.txt); the sha256 is
# the shift entry's own (``files``), checked on every read as well.
DIRECT_FILES: dict[str, dict[str, Any]] = {
    "CIFAR-10.1/cifar10.1_v6_data.npy": {
        "url": "https://github.com/modestyachts/CIFAR-10.1/blob/master/datasets/cifar10.1_v6_data.npy?raw=true",
        "size": 6144128},
    "CIFAR-10.1/cifar10.1_v6_labels.npy": {
        "url": "https://github.com/modestyachts/CIFAR-10.1/blob/master/datasets/cifar10.1_v6_labels.npy?raw=true",
        "size": 8128},
}

# The LPIPS feature networks, by their path under the model dir (the threat entries' ``weights``).
NETWORK_SOURCES: dict[str, dict[str, Any]] = {
    # torchvision's AlexNet: torch.hub's naming convention puts the start of its sha256 in the name
    "lpips/alexnet-owt-7be5be79.pth": {"url": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"},
    # perceptual-advex's CIFAR AlexNet, inside its checkpoints zip (linked from its README); no
    # checksum is published: the zip and the network are pinned on first download
    "lpips/alexnet_cifar.pt": {
        "url": "https://perceptual-advex.s3.us-east-2.amazonaws.com/perceptual-advex-checkpoints.zip",
        "member": "**/alexnet_cifar.pt"},
}


def _rel(path: str, root: Path) -> str:
    p = Path(path)
    rel = p.relative_to(root).as_posix() if p.is_absolute() or str(p).startswith(str(root)) else p.as_posix()
    return rel + "/" if path.endswith("/") else rel


def _archive_download(a: Mapping[str, Any]) -> Download:
    return Download(url=str(a["url"]), name=str(a["name"]), size=a.get("size"), md5=a.get("md5"),
                    sha256=a.get("sha256"), source=str(a.get("source", "")))


def _public(archive: Mapping[str, Any]) -> bool:
    """A plain public URL (gated sources name a page and what it takes, e.g. "(account needed)")."""
    url = str(archive["url"])
    return url.startswith(("https://", "http://")) and not any(c.isspace() for c in url)


def _unpack_kind(name: str) -> str:
    return "zip" if name.endswith(".zip") else "tar"


def data_source(registry: Registry, owner: str, path: str, root: Path) -> Job | Manual:
    """The download that provides one missing data file or folder (``path`` under ``root``)."""
    from ..data import archives, loaders

    rel = _rel(path, root)
    where = str(root / rel)
    if owner.endswith(" test set"):  # the ID data
        dataset = owner.split()[0]
        found = archives.ID_ARCHIVES.get(dataset, ())
        for a in found:
            if _public(a):
                return Job((owner,), _archive_download(a), (root / rel,), root, "tar", (rel,))
        src = loaders.ID_SOURCES.get(dataset, {})
        what = f"{found[0]['name']} (then {rel} laid out from it, docs/real-suites.md)" if found else rel
        return Manual(owner, str(src.get("url", "docs/real-suites.md")), what, where)
    try:
        spec = registry.shift(owner)
    except (KeyError, RegistryError):
        spec = registry.shift(owner.rsplit("-", 1)[0])  # an ImageNet-C severity: <shift>-<severity>
    if rel in DIRECT_FILES:
        src = DIRECT_FILES[rel]
        item = next((f for f in spec.files if f["path"] == rel), {})
        return Job((spec.id,), Download(src["url"], Path(rel).name, src["size"], md5=item.get("md5"),
                                        sha256=item.get("sha256"), source="the shift entry's files"),
                   (root / rel,), root)
    if spec.id == "cifar10-r":  # built from ImageNet-R with the reference's list
        try:
            source = registry.shift("imagenet-r").archives[0]
        except (KeyError, RegistryError, IndexError):
            return Manual(spec.id, str(spec.url), "imagenet-r.tar (to build CIFAR-10-R from)", where)
        lines = tuple(loaders.fixed_image_list(spec) or ())
        target = root / dict(spec.params)["root"]
        return Job((spec.id,), _archive_download(source), (target,), root, "cifar10-r", lines)
    public = [a for a in spec.archives if _public(a)]
    if public:
        a = public[0]
        into = ARCHIVE_INTO.get(str(a["name"]), "")
        member = rel[len(into):] if rel.startswith(into) else rel
        return Job((owner,), _archive_download(a), (root / rel,), root, _unpack_kind(str(a["name"])), (member,),
                   into=into)
    return Manual(spec.id, str(spec.url or "docs/real-suites.md"), rel + (" (the layout in its entry)" if rel.endswith("/") else ""),
                  where)


def weights_source(registry: Registry, owner: str, path: str, model_dir: str | Path | None) -> list[Job] | Manual:
    """The download(s) that provide a missing checkpoint of model ``owner``."""
    from ..models import robustbench

    spec = registry.model(owner)
    if spec.source_kind != "robustbench":
        return Manual(owner, spec.reference or str(spec.path), f"its weights ({spec.weights})", path)
    found = robustbench.checkpoint_sources(spec, registry, model_dir)
    if isinstance(found, str):
        return Manual(owner, spec.reference or "https://github.com/RobustBench/robustbench", found, path)
    wanted = {p.strip() for p in path.split(" or ")}
    root = robustbench.model_dir_root(model_dir)
    jobs = []
    for i, (target, how) in enumerate(found):
        if str(target) not in wanted:
            continue
        name = f"{spec.dataset}-{spec.threat_model}-{target.name}"
        # no sha256 in the entry: the weights lock pins it once every part is in place (run/fetch.py)
        d = Download(how["url"], name, sha256=spec.sha256 if i == 0 else None,
                     sha256_prefix=how.get("sha256_prefix"), gdrive_id=how.get("gdrive_id"))
        jobs.append(Job((owner,), d, (target,), root))
    return jobs or Manual(owner, spec.reference or "", "its checkpoint", path)


def network_source(registry: Registry, owner: str, path: str, model_dir: str | Path | None) -> Job | Manual:
    """The download that provides a missing LPIPS network of threat ``owner``."""
    threat = registry.threat(owner)
    net = dict(dict(threat.params)["network"])
    target = Path(path.split(" or ")[-1].strip())
    src = NETWORK_SOURCES.get(str(net["weights"]))
    if src is None:
        return Manual(owner, " ".join(str(net.get("source", "")).split()), Path(str(net["weights"])).name, str(target))
    from ..attacks.lpips import NETWORK_LOCK

    lock = str(target.parent / NETWORK_LOCK)
    name = src["url"].rsplit("/", 1)[-1]
    if "member" in src:  # a file inside a zip
        d = Download(src["url"], name, pin=(lock, name))
        return Job((owner,), d, (target,), target.parent, "zip", (src["member"],),
                   rename={src["member"]: target.name})
    return Job((owner,), Download(src["url"], name, sha256=net.get("sha256"), sha256_prefix=net.get("sha256_prefix"),
                                  pin=(lock, name)), (target,), target.parent)


def source_of(registry: Registry, need: Any, root: Path, model_dir: str | Path | None) -> list[Job] | Manual:
    """Where a missing :class:`~benchmark.run.preflight.Need` comes from."""
    if need.kind == "data":
        got = data_source(registry, need.owner, need.path, root)
    elif need.kind == "weights":
        got = weights_source(registry, need.owner, need.path, model_dir)
    elif need.kind == "network":
        got = network_source(registry, need.owner, need.path, model_dir)
    else:
        return Manual(need.owner, "", need.path, need.path)
    return [got] if isinstance(got, Job) else got


def fetch_note(found: list[Job] | Manual) -> str:
    """What preflight prints beside a missing item."""
    if isinstance(found, Manual):
        return f"fetch cannot get it: {found.file}; from {found.page}"
    return "fetch gets it: " + ", ".join(sorted({j.download.url for j in found}))
