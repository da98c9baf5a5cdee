"""Evaluate: run cells, write one result JSON per cell.

The result of a cell is written atomically to ``results/<suite>/<model>/<data>__<threat>__<key>.json``;
a present file means the cell is done, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import functools
import platform
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..data import datasets
from . import store, trust
from ..attacks import HARNESS_VERSION, is_code_attack, run_attack, suite_code
from ..attacks.batching import current_size, fixed_batch
from .plan import Cell
from ..registry import ModelSpec, Registry, ThreatSpec, canonical

DEFAULT_BATCH = 1000


# every package that can change a number (stored in each result under "versions")
VERSIONED = ("shiftbench", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "pillow", "matplotlib",
             "pyautoattack", "robustbench")
# attacks that run pyautoattack over whole batches: their outcomes can depend on the batch size
BATCH_DEPENDENT = ("autoattack", "square")


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def model_preprocessing(model: ModelSpec) -> str | None:
    """The preprocessing a model's images get: its entry's ``preprocessing``, else ImageNet's
    default ``Res256Crop224``; ``None`` for CIFAR and digits (images used at their own size)."""
    from ..data.loaders import model_preprocessing as for_dataset

    return for_dataset(model.dataset, model.preprocessing)


def cell_preprocessing(cell: Cell) -> str | None:
    """What turned the cell's files into model inputs (stored in each result): the model's
    preprocessing for ImageNet ID data and the shifts that defer to it, else the shift's own
    fixed transform (e.g. ``crop224`` for ImageNet-C, ``res32`` for CINIC-10), or ``None``."""
    if cell.shift is None or cell.shift.source.startswith("synthetic:"):
        return model_preprocessing(cell.model)
    from ..data.loaders import shift_preprocessing

    return shift_preprocessing(cell.shift, cell.model.preprocessing)


def cell_data(cell: Cell, data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (subset of) images and labels a cell evaluates; ImageNet images are read with the
    model's preprocessing, so the data depends on the model entry."""
    from ..data.shifts import load_shift

    prep = model_preprocessing(cell.model)
    if cell.shift is None:  # the data root resolved now, so a changed $SHIFTBENCH_DATA is not served from cache
        root = None if cell.model.dataset == "digits" else str(datasets.data_root(data_dir))
        x, y = _id_data(cell.model.dataset, root, prep)
    else:
        x, y = load_shift(cell.shift, cell.severity, seed=cell.seed, data_dir=data_dir, preprocessing=prep)
    idx = cell_images(cell, y)
    if cell.design is not None:  # kept for its result (result_payload), which records them
        _LEAN_IMAGES[cell.key] = idx
    idx = torch.from_numpy(idx)
    return x[idx], y[idx]


_LEAN_IMAGES: dict[str, np.ndarray] = {}  # lean cell key -> its images, from cell_data to result_payload


def cell_images(cell: Cell, labels: torch.Tensor) -> np.ndarray:
    """Indices of the images a cell attacks in its data of ``len(labels)``: the seeded subset of
    n, and under the lean protocol the share of it that the cell's design gives its shift."""
    idx = datasets.subset(cell.n, len(labels), cell.seed)
    if cell.design is not None:
        from .design import share

        idx = idx[share(cell.design, labels.numpy()[idx], cell.seed)]
    return idx


def prepare(cell: Cell, model: nn.Module, data_dir=None) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Data for a cell, and the model restricted to the shift's classes where the shift says
    ``mask_logits`` (e.g. ImageNet-R's 200 classes); labels then index the subset."""
    x, y = cell_data(cell, data_dir)
    if cell.shift is not None and cell.shift.mask_logits:
        from ..data import loaders

        groups = loaders.logit_subset(cell.shift, datasets.data_root(data_dir))
        model, y = loaders.masked_model(model, groups), loaders.subset_labels(y, groups)
    return fixed_batch(model), x, y


def model_device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The evaluator's one device decision: ``auto`` is CUDA when available, else the CPU."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device here; use --device cpu or auto")
    return torch.device(name)


@functools.lru_cache(maxsize=4)
def _id_data(dataset: str, data_dir: str | None, preprocessing: str | None = None):
    return datasets.load_id(dataset, "test", data_dir, preprocessing)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
    from ..models.defenses import judge  # a randomized model's verdict: the majority of its draws
    from ..models.load import check_logits  # NaN/inf or misshapen outputs fail the cell, not the sweep

    dev = model_device(model)
    model = fixed_batch(model)
    return torch.cat([check_logits(judge(model, x[i:i + batch_size].to(dev)), len(x[i:i + batch_size]), None,
                                   "the model").argmax(1).cpu() for i in range(0, len(x), batch_size)])


@dataclass
class Outcome:
    clean_correct: np.ndarray
    robust_correct: np.ndarray  # the best of all attacks run (the cell's attack, the checks', the escalation)
    clean_s: float
    attack_s: float
    checks: dict[str, Any]
    x_adv: torch.Tensor | None = None  # the cell's attack's images (clean ones where not attacked)
    broken_by: dict[str, list[int]] | None = None  # attack -> examples it broke first
    escalation: dict[str, Any] | None = None  # the Square escalation, when one ran
    checks_s: float = 0.0


def attack_outcome(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatSpec, *, seed: int,
                   attack: str | None = None, attack_args: dict[str, Any] | None = None,
                   batch_size: int = DEFAULT_BATCH, checks: bool = True, deep_checks: bool | None = None) -> Outcome:
    """Clean and robust correctness per example.  Only clean-correct examples are attacked.

    The images go to the model's device once; every call of the model gets tensors there.
    Example ``i`` is attacked with the random draws of ``(seed, i)`` whatever the batch it falls
    in, so the outcomes do not depend on ``batch_size`` (pyautoattack's attacks excepted).
    With ``checks``, the trust checks run and act (:func:`checked`); ``deep_checks`` (default:
    on) adds the checks that re-attack a sample.  The model runs on fixed-size
    micro-batches (:mod:`..attacks.batching`), so no number depends on the batch composition."""
    from ..models.defenses import require_declared

    model = fixed_batch(model)
    dev = model_device(model)
    x, y = x.to(dev), y.to(dev)
    require_declared(model, x)  # a randomized model must say so (never evaluated as deterministic)
    t0 = time.perf_counter()
    clean_pred = predict(model, x, batch_size)
    clean_correct = (clean_pred == y.cpu()).numpy()
    t1 = time.perf_counter()
    robust_correct = clean_correct.copy()
    todo = np.flatnonzero(clean_correct)
    x_adv_all = x.clone()
    torch.manual_seed(seed)
    for start in range(0, len(todo), batch_size):
        part = todo[start:start + batch_size]
        idx = torch.from_numpy(part).to(dev)
        xb, yb = x[idx], y[idx]
        x_adv = run_attack(model, xb, yb, threat, seed=seed, index=part, attack=attack, **(attack_args or {}))
        x_adv_all[idx] = x_adv.detach()
        robust_correct[part] = (predict(model, x_adv, batch_size) == yb.cpu()).numpy()
    t2 = time.perf_counter()
    out = Outcome(clean_correct, robust_correct, t1 - t0, t2 - t1, {}, x_adv_all)
    if checks:
        deep = True if deep_checks is None else deep_checks
        out = checked(model, x, y, threat, out, deep=deep, seed=seed, attack=attack, attack_args=attack_args)
    return out


def checked(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatSpec, out: Outcome, *, deep: bool,
            seed: int, attack: str | None = None, attack_args: dict[str, Any] | None = None,
            deep_found: dict[str, Any] | None = None) -> Outcome:
    """Run the trust checks of one cell and act on them (:func:`trust.settle`): the returned
    outcome's ``robust_correct`` is the best of all attacks run, with ``broken_by`` and the
    escalation recorded.  ``deep_found``: deep checks already run (on the cell's batch).
    ``x``, ``y`` and ``out.x_adv`` must be on the model's device."""
    t0 = time.perf_counter()
    found = trust.cell_checks(model, x, y, out.x_adv, threat, out.clean_correct, out.robust_correct, deep=deep,
                              seed=seed, attack=attack, attack_args=attack_args)
    found.update(deep_found or {})
    robust, broken_by, escalation = trust.settle(model, x, y, threat, out.clean_correct, out.robust_correct, found,
                                                 attack=attack or threat.attack, seed=seed, attack_arg=attack)
    return dataclasses.replace(out, robust_correct=robust, checks=found, broken_by=broken_by, escalation=escalation,
                               checks_s=time.perf_counter() - t0)


def batch_outcomes(batch: Sequence[Cell], model: nn.Module, *, data_dir=None, attack: str | None = None,
                   attack_args: dict[str, Any] | None = None,
                   batch_size: int = DEFAULT_BATCH) -> list[tuple[Cell, Outcome]]:
    """Attack the cells of one :attr:`Cell.batch` (all severities of a dataset shift) in a single
    pass over their concatenated images (moved to the model's device once), then split the
    outcomes and run each cell's trust checks on its own images (the deep ones on every Lp
    cell) and act on them (:func:`check_batch`).  A cell's attack time is its share of the
    batch's, by number of clean-correct examples."""
    prepared = [prepare(c, model, data_dir) for c in batch]
    threat, seed = batch[0].threat, batch[0].seed
    if any((c.threat, c.seed) != (threat, seed) for c in batch):
        raise ValueError(f"cells of one batch must share threat and seed: {[c.describe() for c in batch]}")
    dev = model_device(model)
    x = (torch.cat([p[1] for p in prepared]) if len(batch) > 1 else prepared[0][1]).to(dev)
    y = (torch.cat([p[2] for p in prepared]) if len(batch) > 1 else prepared[0][2]).to(dev)
    out = attack_outcome(prepared[0][0], x, y, threat, seed=seed, attack=attack, attack_args=attack_args,
                         batch_size=batch_size, checks=False)
    return check_batch(batch, prepared, x, y, out, attack=attack, attack_args=attack_args)


def check_batch(batch: Sequence[Cell], prepared: Sequence[tuple[nn.Module, torch.Tensor, torch.Tensor]],
                x: torch.Tensor, y: torch.Tensor, out: Outcome, *, attack: str | None = None,
                attack_args: dict[str, Any] | None = None, deep=None, sample: int | None = None,
                square_queries: int | None = None) -> list[tuple[Cell, Outcome]]:
    """The trust checks of one batch of cells attacked together (``out``, on the batch's ``x``,
    ``y``; ``prepared``: each cell's model and data): the deep checks once on a sample of the
    whole batch (:data:`trust.SHIFT_SAMPLE` examples spread over a dataset shift's severities, else
    :data:`trust.DEEP_SAMPLE`; Square at :data:`trust.SQUARE_QUERIES` on the ID cell, else at
    :data:`trust.SHIFT_SQUARE_QUERIES`; their time shared like the attack's), then each cell's
    own checks, acted on.  ``deep`` (default :func:`trust.deep_checks`), ``sample`` and
    ``square_queries`` (defaults by role) let a benchmark compare settings on the same attack
    outcomes (perf/check_cost.py)."""
    threat, seed = batch[0].threat, batch[0].seed
    ends = np.cumsum([0] + [len(p[2]) for p in prepared]).tolist()
    bounds = list(zip(ends[:-1], ends[1:]))  # each cell's examples in the batch: the sample is spread over them
    if sample is None:
        sample = trust.SHIFT_SAMPLE if batch[0].role == "dataset" else trust.DEEP_SAMPLE
    if square_queries is None:
        square_queries = trust.SQUARE_QUERIES if batch[0].role == "id" else trust.SHIFT_SQUARE_QUERIES
    t0 = time.perf_counter()
    found = (deep or trust.deep_checks)(prepared[0][0], x, y, threat, out.clean_correct, out.robust_correct,
                                        seed=seed, attack=attack, attack_args=attack_args, sample=sample,
                                        square_queries=square_queries, bounds=bounds)
    deep_s = time.perf_counter() - t0
    results = []
    n_attacked = max(1, int(out.clean_correct.sum()))
    for cell, (cell_model, _, _), (start, stop) in zip(batch, prepared, bounds):
        sl = slice(start, stop)
        cc = out.clean_correct[sl]
        share = float(cc.sum()) / n_attacked
        part = Outcome(cc, out.robust_correct[sl], out.clean_s * (stop - start) / len(y), out.attack_s * share, {},
                       out.x_adv[sl])
        cell_deep = trust.part_of(found, start, stop) if len(batch) > 1 else found
        done = checked(cell_model, x[sl], y[sl], threat, part, deep=False, seed=seed, attack=attack,
                       attack_args=attack_args, deep_found=cell_deep)
        results.append((cell, dataclasses.replace(done, checks_s=done.checks_s + deep_s * share)))
    return results


def result_payload(cell: Cell, out: Outcome, attack_name: str, *, device: str = "cpu",
                   batch_size: int = DEFAULT_BATCH, model: nn.Module | None = None) -> dict[str, Any]:
    """The result JSON of one cell.  ``batch_size`` is stored only where it can change the
    number: attacks that run pyautoattack on whole batches (ours draw per example), a user's
    ``python:`` attack (nothing says it draws per example), and every attack on a randomized
    model (a single-draw attack's noise comes from the global generator over its batch).  ``model``: the
    evaluated model, whose declared defenses (EOT, draws, BPDA) are stored under ``defense``."""
    from ..models.defenses import randomization, record
    n = len(out.clean_correct)
    payload = {
        "schema": store.RESULT_SCHEMA,
        "key": cell.key,
        "suite": cell.suite,
        "model": cell.model.id,
        "role": cell.role,
        "data": cell.data_name,
        "shift": cell.shift_id,
        "severity": cell.severity,
        "threat": cell.threat.id,
        "threat_kind": cell.threat.kind,
        "norm": cell.threat.norm,
        "eps": cell.threat.eps,
        "attack": attack_name,
        "attack_args": canonical(cell.threat.attack_args),
        "n": n,
        "seed": cell.seed,
        "clean_acc": float(out.clean_correct.mean()) if n else float("nan"),
        "robust_acc": float(out.robust_correct.mean()) if n else float("nan"),
        "clean_correct": store.bits(out.clean_correct),
        "robust_correct": store.bits(out.robust_correct),
        "checks": out.checks,
        "broken_by": out.broken_by or {},
        "escalation": out.escalation,
        "timing": {"clean_s": round(out.clean_s, 4), "attack_s": round(out.attack_s, 4),
                   "checks_s": round(out.checks_s, 4)},
        "harness": HARNESS_VERSION,
        "versions": package_versions(),
        "device": torch.device(device).type,
        "micro_batch": current_size(device),  # every model call runs on micro-batches of this many rows
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the CPU code path torch took
        "spec": {
            "model": canonical(cell.model),
            "shift": canonical(cell.shift) if cell.shift is not None else None,
            "threat": canonical(cell.threat),
        },
        "weights_pinned": dict(cell.weights) if cell.weights is not None else None,
        "mask_logits": bool(cell.shift.mask_logits) if cell.shift is not None else False,
        "preprocessing": cell_preprocessing(cell),
    }
    if attack_name in BATCH_DEPENDENT or is_code_attack(attack_name) or (model is not None and
                                                                         randomization(model) is not None):
        payload["batch_size"] = int(batch_size)
    if cell.design is not None:  # a lean cell: its design and the test images its outcomes follow
        images = _LEAN_IMAGES.pop(cell.key, None)
        if images is None or len(images) != n:
            raise RuntimeError(f"{cell.describe()}: the images of a lean cell are recorded when its data is read "
                               "(cell_data); read it before writing its result")
        payload["design"] = cell.design.record(images)
    defense = record(model, attack_name) if model is not None else None
    if defense is not None:  # only for declared defenses: other results keep their bytes
        payload["defense"] = defense
    return payload


def run_batch(batch: Sequence[Cell], model: nn.Module, results_dir: Path, *, data_dir=None,
              batch_size: int = DEFAULT_BATCH) -> list[str]:
    """Evaluate one batch of cells and write the result of each that is not on disk yet (a
    resumed run recomputes a half-written batch and keeps the files already there); returns the
    keys written."""
    written: list[str] = []
    # one process at a time per batch: a concurrent run over the same folder skips a claimed batch
    with store.claim(results_dir, batch[0].key) as mine:
        if not mine or not pending(batch, results_dir):
            return written
        for cell, out in batch_outcomes(batch, model, data_dir=data_dir, batch_size=batch_size):
            path = results_dir / cell.filename
            if not store.is_done(path, cell.key):
                store.write_result(path, result_payload(cell, out, cell.threat.attack,
                                                        device=model_device(model).type, batch_size=batch_size,
                                                        model=model))
                written.append(cell.key)
    return written


# --------------------------------------------------------------------------- grid runner
def pending(cells: Iterable[Cell], results_dir: Path) -> list[Cell]:
    """Cells without a result that passes verification (a corrupt file is recomputed)."""
    return [c for c in cells if not store.is_done(results_dir / c.filename, c.key)]


def pending_with_batches(cells: Iterable[Cell], results_dir: Path) -> list[Cell]:
    """What a run of ``cells`` computes: the cells without a result, each with the other cells of
    its :attr:`Cell.batch` (the severities of its shift) that have none either."""
    from .plan import batches

    return pending([c for b in batches(pending(cells, results_dir)) for c in b], results_dir)


@functools.lru_cache(maxsize=4)
def _registry(root: str) -> Registry:
    return Registry(root)


@functools.lru_cache(maxsize=2)
def _model(registry_root: str, model_id: str, sha: str | None, model_dir: str | None,
           suite_id: str | None = None, device: str = "auto") -> nn.Module:
    from ..models.load import allowed_code, load_model

    reg = _registry(registry_root)
    suite = reg.entries["suites"].get(suite_id)  # its allow_code lets its python: entries load
    allow = allowed_code(suite.allow_code if suite is not None else ())
    model = load_model(reg.model(model_id), reg, model_dir=model_dir, allow_code=allow)
    return model.to(resolve_device(device))


def _run_chunk(chunk: list[tuple[Cell, ...]], registry_root: str, results_dir: str, data_dir: str | None,
               model_dir: str | None, threads: int, batch_size: int = DEFAULT_BATCH,
               device: str = "auto", raise_errors: bool = False) -> list[str]:
    """``raise_errors``: a failing batch raises (the executors retry and report it) instead of
    being reported here."""
    torch.set_num_threads(threads)
    done = []
    for batch in chunk:
        try:
            model = _model(registry_root, batch[0].model.id, batch[0].model.sha256, model_dir, batch[0].suite,
                           device)
            suite = _registry(registry_root).entries["suites"].get(batch[0].suite)
            with suite_code(suite.allow_code if suite is not None else ()):  # its python: attacks may load
                done += run_batch(batch, model, Path(results_dir), data_dir=data_dir, batch_size=batch_size)
        except (store.StoreError, KeyboardInterrupt):
            raise  # nothing more can be written: stop the sweep
        except Exception as exc:  # a broken entry or model fails its cells, the sweep goes on
            if raise_errors:
                raise
            _report_failure(batch, exc)
    return done


def _report_failure(batch: Sequence[Cell], exc: BaseException) -> None:
    import sys

    m = batch[0].model
    msg = str(exc) if isinstance(exc, (ValueError, RuntimeError)) and str(exc) else f"{type(exc).__name__}: {exc}"
    if m.path and m.path not in msg and not isinstance(exc, OSError):  # data errors name their files
        msg = f"model '{m.id}' ({m.path}): {msg}"
    cells = ", ".join(c.describe() for c in batch)
    print(f"error: cell(s) failed, the sweep goes on: {cells}: {msg}", file=sys.stderr, flush=True)


def run_grid(cells: list[Cell], registry: Registry, results_dir: Path, *, data_dir=None, model_dir=None,
             workers: int | None = 1, progress: bool = True, chunk: int = 6,
             batch_size: int = DEFAULT_BATCH, device: str = "auto", executor=None, retries: int | None = None,
             min_batch_size: int | None = None) -> dict[str, int]:
    """Run every pending cell; return counts.  Cells already on disk (and verified) are skipped
    (resume).  A batch of cells that raises is retried ``retries`` times, then reported on stderr
    and counted in ``failed``; cells another live run holds are counted in ``busy``; a write that
    fails raises :class:`store.StoreError`; Ctrl-C raises :class:`.executors.GridInterrupted`.

    ``device`` (``auto``/``cpu``/``cuda``) is where models run; the data of each batch of cells
    moves there once.

    Work goes by :attr:`Cell.batch`: a pending cell brings the other severities of its shift
    along (they are written too and counted in ``ran``).  ``chunk`` batches of one model make
    one task.  ``executor`` (:mod:`.executors`) says where tasks run; by default ``workers`` local
    processes (None: one per visible GPU)."""
    import sys

    from . import executors
    from .plan import batches

    results_dir = Path(results_dir)
    device = str(resolve_device(device))  # fails early on a bad or unavailable device
    _registry.cache_clear()  # entries may have changed since the last run in this process (e.g. a submission)
    _model.cache_clear()
    todo = pending(cells, results_dir)
    counts = {"planned": len(cells), "cached": len(cells) - len(todo), "ran": 0}
    if not todo:
        return counts
    by_model: dict[str, list[tuple[Cell, ...]]] = defaultdict(list)
    for b in batches(todo):
        by_model[b[0].model.id].append(b)
    chunks = [bs[i:i + chunk] for bs in by_model.values() for i in range(0, len(bs), chunk)]
    # registry.location: every layer, so workers see the same entries
    runner = functools.partial(_run_chunk, registry_root=registry.location,
                               data_dir=str(data_dir) if data_dir else None,
                               model_dir=str(model_dir) if model_dir else None, device=device,
                               raise_errors=True)
    ex = executor if executor is not None else executors.LocalExecutor(workers=workers,
                                                                       gpus=[] if device == "cpu" else None)
    work = pending_with_batches(todo, results_dir)

    def report(f: executors.Failure) -> None:
        print(f"error: cell(s) failed, the sweep goes on: {', '.join(f.cells)}: {f.error}"
              + (f" (tried {f.attempts} times)" if f.attempts > 1 else ""), file=sys.stderr, flush=True)

    try:
        done = executors.drive(ex, chunks, runner, results_dir, total=len(work),
                               retries=executors.DEFAULT_RETRIES if retries is None else retries,
                               batch_size=batch_size, progress=progress, report=report,
                               min_batch_size=min_batch_size or executors.DEFAULT_MIN_BATCH)
    except executors.GridInterrupted as exc:
        exc.counts = {**counts, "ran": len(work) - len(pending(work, results_dir))}  # what is on disk
        raise
    counts["ran"] = done["ran"]
    left = pending(todo, results_dir)
    # cells still missing: claimed by another live run ("busy"), else "failed" (reported above);
    # the keys are present only when non-zero
    busy = sum(1 for c in left if store.claimed_elsewhere(results_dir, c.batch[0].key))
    counts.update({k: v for k, v in (("failed", len(left) - busy), ("busy", busy)) if v})
    return counts
