"""Model metadata: the ``meta:`` block of every model entry, generated, never typed by hand.

    python -m benchmark.models.metadata digits                      # from each entry's train: recipe
    python -m benchmark.models.metadata robustbench --repo DIR      # from RobustBench's model_info/*.json

* **digits zoo**: derived from the entry's ``train:`` recipe (the one ``shiftbench zoo train``
  follows, :mod:`benchmark.models.zoo`): ``method`` gives the training family, ``eps`` the Linf
  budget trained for; ``source: builtin:<arch>`` the architecture family; the parameter count is
  that of the architecture built with the entry's ``arch_args``.  No extra data, no venue, no
  published numbers.
* **RobustBench entries**: from ``model_info/<dataset>/<threat>/<Name>.json`` of a clone of
  github.com/RobustBench/robustbench (``DIR`` may be a checkout or a bare clone; the files are
  read at its ``HEAD`` commit with ``git show``, and repo, commit and path are recorded as
  provenance).  ``clean_acc`` and ``autoattack_acc`` (percent strings there) become fractions;
  ``venue`` splits into venue and year; ``architecture`` maps to a family (:data:`ARCH_RULES`);
  ``additional_data`` and the footnote give the extra data (:func:`extra_data`).  model_info has
  no training-method field: the family is ``standard`` for RobustBench's ``Standard*`` models,
  ``trades`` where the paper is TRADES itself, ``certified`` for a verifiably trained model, and
  ``pgd-at`` for the papers whose method is PGD-AT itself, and ``adversarial-training`` (a robust
  training method model_info does not name) otherwise.  The
  entry's ``training:`` text is written from the same record: the paper's title, first author, venue
  and year, the family and extra data in words, and RobustBench's footnote.  The
  parameter count is the one the generated ``architecture`` field states (robustbench 1.1.1's
  model built on the meta device by ``python -m benchmark.models.robustbench generate``), to 0.1M.

Only the ``meta:`` block at the end of an entry is (re)written; everything above it is kept.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..registry import DEFAULT_REGISTRY, ModelSpec, Registry, RegistryError, check_meta, parse_eps

RB_REPO = "RobustBench/robustbench"
DIGITS_FAMILY = {"standard": "standard", "pgd": "pgd-at", "trades": "trades", "noise": "noise-augmentation"}
DIGITS_ARCH = {"mlp": "mlp", "cnn": "cnn", "lenet": "lenet"}
RECIPE = "benchmark/models/zoo.py"
# RobustBench ``architecture`` text -> family; first match wins (pre-activation and wide ResNets
# before plain ResNets; "ConvNeXt-B + ConvStem" is one network, an ensemble is named in the footnote)
ARCH_RULES = (
    (r"wide\s*-?resnet|\bwrn\b", "wide-resnet"),
    (r"preact", "preact-resnet"),
    (r"resnet", "resnet"),
    (r"densenet", "densenet"),
    (r"xcit", "xcit"),
    (r"swin", "swin"),
    (r"convnext", "convnext"),
    (r"\bvit\b|vit-", "vit"),
    (r"cnn", "cnn"),
)
_PARAMS = re.compile(r"\(([0-9.]+)M params\)")


def arch_family(text: str, footnote: str = "") -> str:
    if "ensemble" in footnote.lower():
        return "ensemble"
    t = text.lower()
    return next((fam for pat, fam in ARCH_RULES if re.search(pat, t)), "other")


def extra_data(info: Mapping[str, Any]) -> str:
    """``none`` | ``unlabeled`` | ``synthetic`` | ``pre-training`` | ``external`` from model_info.

    A footnote naming synthetic images wins (RobustBench marks 1M-300M generated images as no
    additional data, but they are extra data); then pre-training named in the footnote or, with
    ``additional_data``, in the title; then unlabeled data named in the title; then
    ``additional_data: true`` of an unstated kind (``external``; on CIFAR mostly the 500K
    TinyImages of Carmon et al.); else none."""
    foot = str(info.get("footnote") or "").lower()
    title = str(info.get("name") or "").lower()
    additional = bool(info.get("additional_data"))
    if "synthetic" in foot:
        return "synthetic"
    if re.search(r"pre-?train", foot) or (additional and re.search(r"pre-?train", title)):
        return "pre-training"
    if additional and re.search(r"unlabel|labels required", title):
        return "unlabeled"
    return "external" if additional else "none"


# Papers whose method is PGD adversarial training as Madry et al. define it: the paper itself and
# Rice et al.'s early-stopped PGD-AT.
PGD_AT_TITLES = ("towards deep learning models resistant to adversarial attacks",
                 "overfitting in adversarially robust deep learning")


def training_family(name: str, info: Mapping[str, Any]) -> str:
    """The training family where model_info names the method: ``standard``, ``certified``,
    ``trades``, ``pgd-at`` (:data:`PGD_AT_TITLES`); otherwise ``adversarial-training``, which the
    source does support (RobustBench lists a model under a threat model only as robust to it) and
    which the registry defines as a robust-training method the source does not name."""
    title = " ".join(str(info.get("name") or "").lower().split())
    foot = str(info.get("footnote") or "").lower()
    if name.startswith("Standard"):
        return "standard"
    if "verifiably robust" in foot:
        return "certified"
    if "trade-off between robustness and accuracy" in title:  # TRADES (Zhang et al. 2019) itself
        return "trades"
    if title in PGD_AT_TITLES:
        return "pgd-at"
    return "adversarial-training"


FAMILY_WORDS = {"standard": "standard training (no robust training)", "certified": "verifiably robust (certified) training",
                "trades": "TRADES", "pgd-at": "PGD adversarial training",
                "adversarial-training": "robust training (RobustBench's model_info names no method)"}


def robustbench_training(info: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """An entry's ``training:`` text from its model_info record: the paper (title, first author,
    venue and year), the training family and extra data as ``meta`` has them, the footnote."""
    title = " ".join(str(info.get("name") or "").split()) or "untitled"
    authors = [a.strip() for a in str(info.get("authors") or "").split(",") if a.strip()]
    who = f"{authors[0]}{' et al.' if len(authors) > 1 else ''}, " if authors else ""
    when = " ".join(str(v) for v in (meta.get("venue"), meta.get("year")) if v is not None) or "venue not stated"
    text = f'{title} ({who}{when}): {FAMILY_WORDS[meta["training_family"]]}'
    if meta.get("extra_data") not in (None, "none"):
        text += f"; extra data: {meta['extra_data']}"
    foot = re.sub(r"\\\(\s*\\ell_\{?\\infty\}?\s*\\\)", "Linf", str(info.get("footnote") or ""))  # MathJax \(\ell_{\infty} \)
    foot = " ".join(re.sub(r"<br\s*/?>", " ", foot).split())
    return text + (f". RobustBench's note: {foot}" if foot else "")


def venue_year(text: str) -> tuple[str | None, int | None]:
    """``NeurIPS 2019`` -> (NeurIPS, 2019); ``arXiv, Sep 2022`` -> (arXiv, 2022); ``N/A`` -> (None, None)."""
    t = re.sub(r"<br\s*/?>", " ", str(text or "")).strip()
    if not t or t.upper() == "N/A":
        return None, None
    m = re.search(r"\b(19|20)\d\d\b", t)
    year = int(m.group(0)) if m else None
    venue = re.split(r",|\b(?:19|20)\d\d\b", t)[0].strip()
    return (venue or None), year


def _fraction(v: Any) -> float | None:
    if v is None or str(v).strip() == "":
        return None
    return round(float(v) / 100.0, 6)


def robustbench_meta(name: str, dataset: str, threat: str, info: Mapping[str, Any], *, commit: str,
                     params: int | None = None) -> dict[str, Any]:
    """The ``meta`` of a RobustBench entry from its model_info record."""
    venue, year = venue_year(info.get("venue", ""))
    meta: dict[str, Any] = {
        "training_family": training_family(name, info),
        "extra_data": extra_data(info),
        "arch": arch_family(str(info.get("architecture", "")), str(info.get("footnote") or "")),
    }
    if params is not None:
        meta["params"] = params
    meta["threat"] = threat
    if threat in ("Linf", "L2", "L1") and info.get("eps") not in (None, ""):
        meta["eps"] = str(info["eps"])
    if venue is not None:
        meta["venue"] = venue
    if year is not None:
        meta["year"] = year
    published = {k: _fraction(info.get(k)) for k in ("clean_acc", "autoattack_acc")}
    published = {k: v for k, v in published.items() if v is not None}
    if published:
        meta["published"] = {**published, "source": f"RobustBench model_info ({dataset}/{threat}/{name}.json)"}
    meta["provenance"] = {"repo": RB_REPO, "commit": commit, "path": f"model_info/{dataset}/{threat}/{name}.json",
                          "generator": "python -m benchmark.models.metadata robustbench"}
    return meta


def count_params(arch: str, arch_args: Mapping[str, Any]) -> int:
    """Parameters of a built-in architecture with the entry's ``arch_args`` (buffers not counted)."""
    from . import architectures

    net = architectures.build(arch, **dict(arch_args))
    return int(sum(p.numel() for p in net.parameters()))


def digits_meta(spec: ModelSpec) -> dict[str, Any]:
    """The ``meta`` of a digits zoo entry, from its ``train:`` recipe and its architecture."""
    from .zoo import check_recipe

    recipe = check_recipe(spec.train, spec.path)
    arch = spec.source_target if spec.source_kind == "builtin" else str(spec.arch_args.get("arch", ""))
    if arch not in DIGITS_ARCH:
        raise RegistryError(spec.path, "source", f"no architecture family for builtin '{arch}'")
    method = recipe["method"]
    meta: dict[str, Any] = {
        "training_family": DIGITS_FAMILY[method],
        "extra_data": "none",  # the zoo trains on the suite's 1,197 training images only
        "arch": DIGITS_ARCH[arch],
        "params": count_params(arch, spec.arch_args),
        "threat": "Linf" if method in ("pgd", "trades") else "none",
    }
    if method in ("pgd", "trades"):
        meta["eps"] = float(recipe["eps"])
    meta["provenance"] = {"recipe": f"{RECIPE} (train: method={method})",
                          "generator": "python -m benchmark.models.metadata digits"}
    return meta


# --------------------------------------------------------------------------- writing
META_HEADER = "# meta: generated by `{cmd}`; do not edit by hand"
_BLOCK = re.compile(r"(?ms)^# meta: generated by .*?\n(?=meta:)|^meta:.*?(?=^\S|\Z)")


def strip_meta(text: str) -> str:
    """An entry's text without its ``meta:`` block (and the comment line above it)."""
    return _BLOCK.sub("", text)


def meta_block(text: str) -> str:
    """The ``meta:`` block of an entry's text with its comment line ("" if none), so that
    regenerating the rest of an entry keeps it."""
    return "".join(m.group(0) for m in _BLOCK.finditer(text))


def meta_text(meta: Mapping[str, Any], command: str) -> str:
    return META_HEADER.format(cmd=command) + "\n" + yaml.safe_dump({"meta": dict(meta)}, sort_keys=False,
                                                                     width=1000, allow_unicode=False)


def write_meta(entry: Path, meta: Mapping[str, Any], command: str) -> bool:
    """Replace the ``meta:`` block of an entry (appended at the end); True when the file changed.
    The result is validated like any entry before it is written."""
    check_meta(meta, entry)
    old = entry.read_text(encoding="utf-8")
    body = strip_meta(old).rstrip("\n") + "\n"
    new = body + meta_text(meta, command)
    if yaml.safe_load(new).get("meta") != json.loads(json.dumps(dict(meta))):
        raise RegistryError(entry, "meta", "the written block does not read back as generated")
    if new == old:
        return False
    entry.write_text(new, encoding="utf-8")
    return True


def write_training(entry: Path, text: str) -> bool:
    """Replace an entry's one-line ``training:`` with ``text`` (words only: not part of a RobustBench
    entry's cell key, see ``registry.DESCRIPTIVE_FIELDS``); True when the file changed."""
    old = entry.read_text(encoding="utf-8")
    line = "training: " + json.dumps(text, ensure_ascii=False)
    new, n = re.subn(r"(?m)^training: .*$", lambda _: line, old, count=1)
    if n != 1:
        raise RegistryError(entry, "training", "no one-line training: key to rewrite")
    if yaml.safe_load(new).get("training") != text:
        raise RegistryError(entry, "training", "the written text does not read back as generated")
    if new == old:
        return False
    entry.write_text(new, encoding="utf-8")
    return True


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def generate_digits(registry: Registry, *, out: Any = None) -> int:
    """Write ``meta`` into every digits entry with a ``train:`` recipe; return how many changed."""
    changed = 0
    specs = sorted(registry.entries["models"].values(), key=lambda s: s.id)
    for spec in specs:
        if spec.dataset != "digits" or not registry.holds(spec):
            continue
        if spec.train:
            meta = digits_meta(spec)
        else:  # a declared defense on a zoo network: its twin's recipe (same weights)
            twin = next((t for t in specs if t.train and t.sha256 == spec.sha256 and t.source == spec.source
                         and not (t.randomized or t.input_transform)), None)
            if twin is None or not (spec.randomized or spec.input_transform):
                continue
            meta = digits_meta(twin)
            meta["provenance"] = {**meta["provenance"],
                                  "recipe": f"{meta['provenance']['recipe']}; the weights of {twin.id}"}
        changed += write_meta(Path(spec.path), meta, "python -m benchmark.models.metadata digits")
    print(f"digits: {changed} entries changed", file=out or sys.stdout)
    return changed


def generate_robustbench(registry: Registry, repo: Path, *, out: Any = None) -> int:
    """Write ``meta`` into every ``robustbench:`` entry from the model_info records of ``repo`` at HEAD."""
    commit = _git(repo, "rev-parse", "HEAD").strip()
    changed = 0
    for spec in sorted(registry.entries["models"].values(), key=lambda s: s.id):
        if spec.source_kind != "robustbench" or not registry.holds(spec):
            continue
        rel = f"model_info/{spec.dataset}/{spec.threat_model}/{spec.source_target}.json"
        try:
            info = json.loads(_git(repo, "show", f"{commit}:{rel}"))
        except subprocess.CalledProcessError:
            raise RegistryError(spec.path, "source", f"{RB_REPO} has no {rel} at {commit}") from None
        m = _PARAMS.search(spec.architecture)
        params = int(round(float(m.group(1)) * 1e6)) if m else None
        meta = robustbench_meta(spec.source_target, spec.dataset, spec.threat_model or "", info, commit=commit,
                                params=params)
        text_changed = write_training(Path(spec.path), robustbench_training(info, meta))
        changed += write_meta(Path(spec.path), meta, "python -m benchmark.models.metadata robustbench") or text_changed
    print(f"robustbench: {changed} entries changed (model_info at {RB_REPO}@{commit})", file=out or sys.stdout)
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.models.metadata", description=__doc__.split("\n")[0])
    p.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY, help="the registry folder to update")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("digits", help="the digits zoo, from each entry's train: recipe")
    rb = sub.add_parser("robustbench", help="robustbench: entries, from RobustBench's model_info/*.json")
    rb.add_argument("--repo", type=Path, required=True, help="a git clone (or bare clone) of RobustBench/robustbench")
    args = p.parse_args(argv)
    reg = Registry(args.registry, check_files=False)
    if args.cmd == "digits":
        generate_digits(reg)
    else:
        generate_robustbench(reg, args.repo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
