"""The in-memory Python API: ``benchmark.evaluate(model, suite=...)`` runs a suite's cells on a
model object and returns a DataFrame, writing nothing to ``results/``."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from ..analysis.stats import wilson
from ..attacks import get_attack, is_code_attack, load_code_attacks, suite_code
from ..data.loaders import model_preprocessing as check_preprocessing
from ..models.load import code_opt_in
from ..registry import ModelSpec, Registry, allowed_code, default_registry_root
from ..run.evaluate import DEFAULT_BATCH, batch_outcomes, resolve_device
from ..run.plan import ID_SHIFT, Cell, batches


def evaluate(model: nn.Module, suite: str = "digits", shifts: list[str] | None = None,
             threats: list[str] | None = None, attack: str | None = None, n_examples: int | None = None,
             seed: int = 0, *, registry: Registry | str | None = None, data_dir: str | Path | None = None,
             batch_size: int = DEFAULT_BATCH, progress: bool = False, preprocessing: str | None = None,
             device: str = "auto", randomized: dict | None = None, input_transform: dict | None = None,
             allow_code: bool = False):
    """Evaluate an in-memory model (inputs in [0, 1], returns logits) on a suite.

    ``shifts``/``threats``: ids of dataset / threat shifts; ``None`` means the suite's full set,
    ``[]`` means none (ID only).  ``attack`` overrides every threat's attack.  Returns a pandas
    DataFrame with one row per cell: model, role, shift, severity, threat, attack, n, clean_acc,
    robust_acc and Wilson 95% intervals.  Nothing is written to ``results/``.  ``preprocessing``:
    how ImageNet images become the model's inputs (``registry.IMAGENET_PREPROCESSINGS``, default
    ``Res256Crop224``).  ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``; the model
    is moved there (``nn.Module.to``, in place) and each batch of images once.
    ``randomized`` (e.g. ``{"eot": 20, "draws": 5}``) and ``input_transform`` (e.g. ``{"kind":
    "quantize", "bits": 1}``) declare a defense (docs/defenses.md); the module's own
    ``shiftbench_randomized`` / ``shiftbench_input_transform`` attributes do the same.  A model
    whose output changes between identical calls and declares nothing is refused.  ``allow_code``
    lets a ``python`` transform or BPDA approximation import its module.
    ``attack`` (or a threat's entry) may name ``python:module:function``, your own attack; it is
    imported only with ``allow_code=True`` (or ``$SHIFTBENCH_ALLOW_CODE``, or the suite's ``allow_code``).
    """
    from ..models.defenses import defend, randomization, transformation

    reg = registry if isinstance(registry, Registry) else Registry(registry or default_registry_root())
    s = reg.suite(suite)
    shift_ids = list(s.dataset_shifts) if shifts is None else list(shifts)
    threat_ids = list(s.threat_shifts) if threats is None else list(threats)
    name = getattr(model, "shiftbench_name", type(model).__name__)
    check_preprocessing(s.dataset, preprocessing)  # raises on an unknown name or a non-ImageNet suite
    model = defend(model, randomized=randomized, input_transform=input_transform, allow_code=allow_code or None,
                   where=f"model {name!r}")
    r, t = randomization(model), transformation(model)
    spec = ModelSpec(id=name, source="python:<in-memory>:model", dataset=s.dataset, architecture=type(model).__name__,
                     training="unknown", preprocessing=preprocessing,
                     randomized={"eot": r.eot, "draws": r.draws, "seed": r.seed} if r is not None else {},
                     input_transform={"kind": t.name} if t is not None else {})
    id_threat = reg.threat(s.id_threat)
    n = n_examples or s.n_examples
    n_shift = n_examples or s.n_shift_examples or s.n_examples
    cells = [Cell(s.id, spec, None, None, id_threat, "id", n, seed)]
    for sid in shift_ids:
        sh = reg.shift(sid)
        cells += [Cell(s.id, spec, sh, sev, id_threat, "dataset", n_shift, seed) for sev in (sh.severities or (None,))]
    cells += [Cell(s.id, spec, None, None, reg.threat(t), "threat", n, seed) for t in threat_ids]
    # user attacks: refused without the opt-in, imported and checked before any cell runs
    load_code_attacks([c.threat for c in cells], attack, allow=True if allow_code else allowed_code(s.allow_code),
                      override="evaluate(attack=...)")
    if attack is not None and not is_code_attack(attack):
        get_attack(attack)  # an unknown name: a KeyError with a "did you mean", before any cell runs
    model = model.eval().to(resolve_device(device))
    rows = []
    outcomes = []
    bar = tqdm(total=len(cells), disable=not progress, desc="cells")
    with code_opt_in(allow_code), suite_code(s.allow_code):
        for batch in batches(cells):
            outcomes += batch_outcomes(batch, model, data_dir=data_dir, attack=attack, batch_size=batch_size)
            bar.update(len(batch))
    bar.close()
    for cell, out in outcomes:
        k_clean, k_rob, m = int(out.clean_correct.sum()), int(out.robust_correct.sum()), len(out.clean_correct)
        rows.append({
            "model": name, "role": cell.role, "shift": cell.shift_id if cell.shift else ID_SHIFT,
            "severity": cell.severity, "threat": cell.threat.id, "attack": attack or cell.threat.attack,
            "n": m, "clean_acc": k_clean / m, "robust_acc": k_rob / m,
            "clean_ci": wilson(k_clean, m), "robust_ci": wilson(k_rob, m),
            "flags": [k for k, v in out.checks.items() if isinstance(v, dict) and v.get("ok") is False],
        })
    return pd.DataFrame(rows)
