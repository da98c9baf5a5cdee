"""Submit a model entry: validate it, check its claimed clean accuracy, run the suite for it,
regenerate the leaderboard and print a Markdown summary for the pull request.

    shiftbench submit ENTRY.yaml [--weights PATH] [--suite S] [--workers N] [--summary-out FILE]
                      [--replace] [--allow-code]

All or nothing: the entry, its weights, its results and the regenerated leaderboard are only in
place when every step succeeded.  Results are computed into a staging folder; files written into
the registry, ``results/`` and the leaderboard are recorded, and any error or Ctrl-C restores
what was there before (no half-added entry, no orphan weights file).
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from ..attacks import load_code_attacks
from ..registry import (PACKAGED_REGISTRY, ModelSpec, Registry, RegistryError, allowed_code, build_spec, load_yaml,
                        sha256_file)
from ..report import leaderboard
from ..run import plan as planner
from ..models.load import code_opt_in
from ..run.evaluate import prepare, predict, run_grid
from . import entries
from .rules import CLEAN_TOLERANCE_RULE, clean_tolerance  # noqa: F401  (the rule: API)

USUAL_CAUSES = (
    "usual causes: input normalisation applied twice or not at all (shiftbench feeds images in [0, 1]; "
    "normalisation belongs inside the model), inputs expected in [0, 255] instead of [0, 1], a different "
    "label order than the dataset's, the model left in training mode (dropout, batch-norm statistics), or "
    "the wrong weights file")


class SubmitError(ValueError):
    """A submission that cannot go in; the message says why and what to do."""


class Transaction:
    """Files written by a submission: created ones are deleted and overwritten ones restored on
    rollback, so a failed submission leaves everything as it was."""

    def __init__(self) -> None:
        self.created: list[Path] = []
        self.backups: list[tuple[Path, Path]] = []
        self._dir = Path(tempfile.mkdtemp(prefix="shiftbench-submit-backup-"))

    def _touch(self, path: Path) -> None:
        path = Path(path)
        if path.exists():
            backup = self._dir / f"{len(self.backups)}-{path.name}"
            shutil.copy2(path, backup)
            self.backups.append((path, backup))
        else:
            missing = []
            for parent in path.parents:  # folders we create go too
                if parent.exists():
                    break
                missing.append(parent)
            self.created += [path] + missing

    def write_bytes(self, path: Path, data: bytes) -> None:
        self._touch(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def move(self, src: Path, dst: Path) -> None:
        self._touch(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst) if _same_device(src, dst.parent) else shutil.move(str(src), str(dst))

    def remove(self, path: Path) -> None:
        self._touch(path)
        path.unlink()

    def guard(self, path: Path) -> None:
        """Record a file that something else (re)writes, e.g. the leaderboard."""
        self._touch(path)

    def rollback(self) -> None:
        for path in self.created:
            if path.is_file():
                path.unlink()
        for path in sorted(self.created, key=lambda p: len(p.parts), reverse=True):  # folders, deepest first
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        for path, backup in reversed(self.backups):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(backup, path)
        self.close()

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def _same_device(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


@dataclass
class SubmitResult:
    """What a submission produced: its place on the leaderboard and the numbers behind it."""

    model: str
    suite: str
    rank: int
    n_models: int
    metrics: dict[str, float]  # id_clean, id_robust, ood_d_*, ood_t_robust, ood_robust (+ _lo/_hi)
    aer: tuple[float, float, float]  # AER against the OOD trend, with its bootstrap interval
    flags: tuple[str, ...]
    attacks: tuple[str, ...]
    per_shift: pd.DataFrame  # kind, shift, clean, robust (+ intervals)
    clean_measured: float
    clean_claimed: float
    entry: Path
    weights: Path | None
    leaderboard: Path
    cells: int
    replaced: str | None = None
    command: str = ""
    markdown: str = field(default="", repr=False)
    # the ID cell against the entry's claimed (or published) accuracies (analysis.published.Check)
    reference_checks: tuple = ()


def _claimed_clean(spec: ModelSpec) -> float:
    if "clean_acc" not in spec.claimed:
        raise RegistryError(spec.path, "claimed", "a submission needs its claimed ID clean accuracy, e.g. "
                            "`claimed: {clean_acc: 0.953}` (a fraction, measured on the suite's ID test data)")
    return float(spec.claimed["clean_acc"])


def _target_root(registry: Registry) -> Path:
    root = registry.root
    if root.resolve() == PACKAGED_REGISTRY.resolve():
        raise SubmitError("the built-in registry of an installed shiftbench is read-only: pass --registry DIR "
                          "(your registry folder, layered over the built-in one) or set $SHIFTBENCH_REGISTRY")
    return root


def _entry_weights(spec: ModelSpec, root: Path) -> tuple[Path | None, str | None]:
    """The entry's weights file, found and checked against its sha256 (None, None: no weights).
    A relative path is looked up in the registry folder, then next to the entry and above it."""
    if spec.weights is None:
        return None, None
    if spec.weights.startswith("pkg:"):
        return None, spec.sha256
    cands = [Path(spec.weights)] if Path(spec.weights).is_absolute() else \
        [root / spec.weights] + [d / spec.weights for d in (Path(spec.path).resolve().parent,
                                                              *Path(spec.path).resolve().parents)]
    src = next((c for c in cands if c.is_file()), None)
    if src is None:
        raise RegistryError(spec.path, "weights", f"weights file {spec.weights!r} not found (looked in {root} and next "
                            "to the entry); pass --weights FILE")
    actual = sha256_file(src)
    if spec.sha256 is None:
        raise RegistryError(spec.path, "sha256", f"the entry needs the sha256 of its weights ({src} has {actual}), "
                            "or pass --weights FILE to have it written")
    if actual != spec.sha256:
        raise RegistryError(spec.path, "sha256", f"{src} has sha256 {actual}, the entry says {spec.sha256}: the file "
                            "is not the one the entry describes (pass --weights FILE to submit this file)")
    return src, actual


def submit(entry: str | Path, *, registry: Registry, suite: str = "digits", weights: str | Path | None = None,
           results: str | Path = "results", leaderboard_out: str | Path | None = None, workers: int = 1,
           replace: bool = False, allow_code: bool = False, progress: bool = False,
           data_dir: str | Path | None = None, model_dir: str | Path | None = None,
           command: str | None = None) -> SubmitResult:
    """Add ``entry`` (a model entry YAML with ``claimed: {clean_acc: ...}``) to the top layer of
    ``registry``, run ``suite`` for it into ``results``, regenerate the leaderboard and return the
    summary.  Raises (and leaves everything as it was) on any failure."""
    entry = Path(entry)
    if not entry.is_file():
        raise FileNotFoundError(f"{entry}: entry file not found")
    raw = load_yaml(entry)
    upload = None
    if weights is not None and isinstance(raw, dict):  # --weights: this file, and its checksum
        if not Path(weights).is_file():
            raise FileNotFoundError(f"--weights {weights}: file not found")
        upload = Path(weights).resolve()  # validated below under its bare name, as a registry path
        raw.update(weights=upload.name, sha256=sha256_file(upload))
    spec = build_spec("models", raw, entry)  # errors name the file and the key
    claimed = _claimed_clean(spec)
    s = registry.suite(suite)
    if spec.dataset != s.dataset:
        raise RegistryError(entry, "dataset", f"the model is for '{spec.dataset}', suite '{suite}' is on '{s.dataset}'")
    entries.check_code_allowed(spec, allow_code, str(entry))
    # the suite's threats may name a user's python: attack: refused without the opt-in, before anything is written
    load_code_attacks([registry.threat(t) for t in (s.id_threat, *s.threat_shifts)],
                      allow=True if allow_code else allowed_code(s.allow_code))
    root = _target_root(registry)
    replaced = None
    old = registry.entries["models"].get(spec.id)
    if old is not None:
        if not replace:
            raise SubmitError(f"{entry}: key 'id': model '{spec.id}' already exists ({old.path}); choose another id, "
                              "or pass --replace to replace it")
        replaced = f"{old.path} (source {old.source}, weights sha256 {old.sha256 or '-'})"
    src, sha = (upload, spec.sha256) if upload is not None else _entry_weights(spec, root)
    dest_w = None
    if src is not None and not src.resolve().is_relative_to(root.resolve()):
        dest_w = root / "weights" / spec.dataset / f"{spec.id}{src.suffix or '.pt'}"
        raw["weights"] = dest_w.relative_to(root).as_posix()
    elif src is not None:
        raw["weights"] = src.resolve().relative_to(root.resolve()).as_posix()
    if sha is not None:
        raw["sha256"] = sha
    dest_entry = root / "models" / spec.dataset / f"{spec.id}.yaml"
    results_root = Path(results)
    out_md = Path(leaderboard_out) if leaderboard_out is not None else leaderboard.default_out(suite)
    tx = Transaction()
    staging = None
    try:
        if dest_w is not None and src is not None:
            tx.write_bytes(dest_w, src.read_bytes())
        if old is not None and registry.layer_of(old) == len(registry.roots) - 1 and Path(old.path) != dest_entry:
            tx.remove(Path(old.path))  # replaced in the same folder under another file name
        tx.write_bytes(dest_entry, yaml.safe_dump(raw, sort_keys=False).encode("utf-8"))
        reg = Registry(registry.location)  # validates the installed entry like any other
        new = reg.model(spec.id)
        if not any(m.id == new.id for m in reg.suite_models(s)):
            raise SubmitError(f"{entry}: model '{new.id}' is not covered by suite '{suite}' (its `models` patterns: "
                              f"{', '.join(s.models)})")
        # the claimed clean accuracy, on the ID cell's own images
        cells = [c for c in planner.plan_suite(reg, suite, models=new.id) if c.model.id == new.id]
        id_cell = next(c for c in cells if c.role == "id")
        net = entries.load(new, reg, model_dir=model_dir, allow_code=allow_code)
        net_c, x, y = prepare(id_cell, net, data_dir)
        measured = float((predict(net_c, x) == y).float().mean())
        tol = clean_tolerance(claimed, len(y))
        if abs(measured - claimed) > tol:
            raise SubmitError(f"{entry}: key 'claimed.clean_acc': the entry claims {claimed:.4f}, shiftbench measures "
                              f"{measured:.4f} on the {len(y)} ID test images of suite '{suite}' (tolerance "
                              f"±{tol:.4f}); {USUAL_CAUSES}")
        if not results_root.is_dir():
            tx.guard(results_root)  # created here: removed again on rollback
            results_root.mkdir(parents=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-submit-", dir=results_root))
        with code_opt_in(allow_code):
            counts = run_grid(cells, reg, staging / suite, data_dir=data_dir, model_dir=model_dir, workers=workers,
                              progress=progress)
        if counts.get("failed"):  # the sweep reported each failed cell with its error
            raise RuntimeError(f"{counts['failed']} of {len(cells)} cells of model '{new.id}' failed (errors above)")
        for c in cells:
            tx.move(staging / suite / c.filename, results_root / suite / c.filename)
        for path in _board_files(out_md, suite):
            tx.guard(path)
        leaderboard.write(reg, suite, results_root, out_md)
        result = summarize(reg, suite, results_root, new.id, command=command or _reproduce_command(reg, suite, new.id))
        result = dataclasses.replace(result, clean_measured=measured, clean_claimed=claimed, entry=dest_entry,
                                     weights=reg.weights_path(new), leaderboard=out_md, cells=len(cells),
                                     replaced=replaced)
        result.markdown = render_summary(result)
    except BaseException:
        tx.rollback()
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    tx.close()
    return result


def _board_files(out_md: Path, suite: str) -> list[Path]:
    """The leaderboard page and every plot it may (re)write: ``docs/<suite>-*.png`` beside it."""
    docs = out_md.parent / "docs"
    plots = {leaderboard.plot_path(out_md, suite)} | {docs / f"{suite}-{k}.png" for k in ("shifts", "severity")}
    plots |= set(docs.glob(f"{suite}-*.png")) if docs.is_dir() else set()
    return [out_md, *sorted(plots)]


def _reproduce_command(registry: Registry, suite: str, model: str) -> str:
    layer = f" --registry {registry.root}" if len(registry.roots) > 1 else ""
    return f"shiftbench reproduce --suite {suite} --models {model}{layer}"


def summarize(registry: Registry, suite: str, results: str | Path, model: str, *, command: str = "") -> SubmitResult:
    """A model's place on a suite's leaderboard, from the stored results."""
    board = leaderboard.build_board(registry, suite, Path(results))
    summ, order = board.summ, board.ranked  # complete models only, as on the page
    if model not in summ.models.index:
        raise FileNotFoundError(f"no current result of model '{model}' for suite '{suite}' under {results}")
    if model not in order:
        raise FileNotFoundError(f"model '{model}' has missing cells in suite '{suite}' under {results}, so it is not "
                                f"ranked: {', '.join(board.missing.get(model, [])[:3])}")
    row = summ.models.loc[model]
    metrics = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ps = summ.per_shift[summ.per_shift["model"] == model].drop(columns="model").reset_index(drop=True)
    return SubmitResult(model=model, suite=suite, rank=order.index(model) + 1, n_models=len(order), metrics=metrics,
                        aer=board.fits["OOD"].aer_of(model), flags=tuple(row["flags"]), attacks=tuple(row["attacks"]),
                        per_shift=ps, clean_measured=float("nan"), clean_claimed=float("nan"), entry=Path(),
                        weights=None, leaderboard=Path(), cells=int(row["cells"]), command=command,
                        reference_checks=tuple(row.get("reference_checks", ()) or ()))


def render_summary(r: SubmitResult) -> str:
    """The Markdown summary to paste into the pull request."""
    m = r.metrics

    def acc(k: str) -> str:
        return leaderboard.pct(m.get(k, float("nan")), m.get(f"{k}_lo"), m.get(f"{k}_hi"))

    ref = "ood_t_ref_robust" in m  # the suite marks the reference benchmark's threat shifts
    lines = [f"## shiftbench submission: `{r.model}` ({r.suite})", "",
             f"**Rank {r.rank} of {r.n_models}** on the `{r.suite}` leaderboard (by OOD robust accuracy).", "",
             "| ID clean | ID robust | OOD-D clean | OOD-D robust | OOD-T robust | "
             + ("OOD-T (reference set) | " if ref else "") + "OOD robust | AER (pp) |",
             "| ---: | ---: | ---: | ---: | ---: | " + ("---: | " if ref else "") + "---: | ---: |",
             f"| {acc('id_clean')} | {acc('id_robust')} | {acc('ood_d_clean')} | {acc('ood_d_robust')} | "
             f"{acc('ood_t_robust')} | " + (f"{acc('ood_t_ref_robust')} | " if ref else "")
             + f"{acc('ood_robust')} | {leaderboard.signed_pp(*r.aer)} |", "",
             "Accuracies in %, `±` the half-width of a 95% interval; AER: OOD robust minus the suite's ID-vs-OOD "
             "trend, [95% bootstrap interval].", ""]
    if not math.isnan(r.clean_claimed):
        lines += [f"- Claimed ID clean accuracy {100 * r.clean_claimed:.2f}%, measured {100 * r.clean_measured:.2f}%.",]
    for c in r.reference_checks:  # the stored ID cell against claimed robust (and clean) accuracy
        lines.append(f"- {'**Flag**: ' if c.flagged else ''}{c.text()}.")
    lines += [f"- Attack(s): {', '.join(r.attacks)}; {r.cells} cells.",
              "- Trust checks: " + ("; ".join(r.flags) if r.flags else "all passed") + "."]
    if r.replaced:
        lines.append(f"- Replaces {r.replaced}.")
    lines += ["", "Robust accuracy per shift (%): (D) dataset shift under the ID threat, mean over severities; "
              "(T) threat shift on the ID data.", "", "| Shift | Robust | Clean |", "| :--- | ---: | ---: |"]
    for p in r.per_shift.itertuples():
        tag = "D" if p.kind == "dataset" else "T"
        lines.append(f"| {p.shift} ({tag}) | {leaderboard.pct(p.robust, p.robust_lo, p.robust_hi)} | "
                     f"{leaderboard.pct(p.clean, p.clean_lo, p.clean_hi)} |")
    lines += ["", "Reproduce:", "", "```bash", r.command, "```"]
    return "\n".join(lines) + "\n"
