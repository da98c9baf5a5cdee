"""Regression-test a defense: "did my change make the model less robust, anywhere?"

    shiftbench export-baseline --suite S --model ID --out baseline.json
    shiftbench regress --model ENTRY.yaml|ID|python:module:factory --baseline baseline.json
                       [--quick] [--alpha 0.05] [--report FILE] [--attack NAME|python:module:function]

A baseline holds the per-example outcomes of one model's stored cells and everything that must
match for a comparison to mean something: suite, harness version, n and seed of every cell, and
the full threat and shift entries.  ``regress`` evaluates a model on the same cells (the same
images, in the same order) and compares each cell with the baseline by an exact one-sided
McNemar test on the paired robust outcomes, Holm-corrected across cells.  A baseline made with
other settings is refused with what differs, never compared.

``--attack`` runs one attack on every cell instead of each threat's own: one of ours, or the
defense author's adaptive attack ``python:module:function`` (imported only with ``--allow-code``).
The report says so, and names the baseline's attacks where they differ: a change may then come
from the attack, not the model.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from ..analysis.stats import discordant, holm, mcnemar_exact
from ..attacks import HARNESS_VERSION, get_attack, is_code_attack, load_code_attacks, suite_code
from ..models.load import code_opt_in
from ..registry import ModelSpec, Registry, allowed_code, canonical
from ..run import plan as planner
from ..run import store
from ..run.evaluate import DEFAULT_BATCH, batch_outcomes, package_versions
from . import entries
from .rules import QUICK_RULE, QUICK_SHIFTS, QUICK_THREATS  # noqa: F401  (QUICK_RULE: API)

BASELINE_FORMAT = "shiftbench-baseline"
BASELINE_SCHEMA = 1


class BaselineError(ValueError):
    """A baseline file that is unreadable, or made with settings this run does not use."""


# --------------------------------------------------------------------------- export
def export_baseline(registry: Registry, suite: str, model: str, results: str | Path = "results", *,
                    n_examples: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """The baseline of a model: the per-example outcomes of its stored, current cells of a suite
    (``n_examples``/``seed`` as given to ``shiftbench run``), with the settings they were made with.
    Raises FileNotFoundError when the model has no stored result for the suite."""
    spec = registry.model(model)
    cells = planner.plan_suite(registry, suite, models=spec.id, n_examples=n_examples, seed=seed)
    cells = [c for c in cells if c.model.id == spec.id]
    if not cells:
        raise ValueError(f"model '{model}' is not part of suite '{suite}' (see `shiftbench ls models --suite {suite}`)")
    results_dir = Path(results) / suite
    out_cells, missing = [], []
    for c in cells:
        path = results_dir / c.filename
        payload = store.read_json(path) if path.is_file() else None
        if payload is None or payload.get("key") != c.key:
            missing.append(c)
            continue
        out_cells.append({"key": c.key, "role": c.role, "data": c.data_name, "shift": c.shift_id,
                          "severity": c.severity, "threat": c.threat.id, "n": int(payload["n"]), "seed": c.seed,
                          "attack": payload["attack"], "clean_acc": payload["clean_acc"],
                          "robust_acc": payload["robust_acc"], "clean_correct": payload["clean_correct"],
                          "robust_correct": payload["robust_correct"]})
    if not out_cells:
        flags = (f" --n {n_examples}" if n_examples else "") + (f" --seed {seed}" if seed is not None else "")
        raise FileNotFoundError(f"no stored result of model '{spec.id}' in {results_dir} for its {len(cells)} "
                                f"planned cells; run `shiftbench run --suite {suite} --models {spec.id}{flags}` first")
    used_threats = sorted({c["threat"] for c in out_cells})  # the entries the exported cells were made with
    used_shifts = sorted({c["shift"] for c in out_cells if c["role"] == "dataset"})
    return {
        "format": BASELINE_FORMAT, "schema": BASELINE_SCHEMA, "suite": suite, "model": spec.id,
        "model_spec": canonical(spec), "harness": HARNESS_VERSION, "n_examples": n_examples,
        "seed": cells[0].seed, "threats": {t: canonical(registry.threat(t)) for t in used_threats},
        "shifts": {s: canonical(registry.shift(s)) for s in used_shifts},
        "planned": len(cells), "missing": [f"{c.data_name} x {c.threat.id}" for c in missing],
        "versions": package_versions(), "cells": out_cells,
    }


def write_baseline(baseline: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    store.write_json_atomic(out, baseline)
    return out


def read_baseline(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: baseline file not found; make one with `shiftbench export-baseline`")
    try:
        data = store.read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{path}: not a JSON baseline ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
        raise BaselineError(f"{path}: not a shiftbench baseline (key 'format' should be '{BASELINE_FORMAT}'); "
                            "make one with `shiftbench export-baseline`")
    if data.get("schema") != BASELINE_SCHEMA:
        raise BaselineError(f"{path}: key 'schema': baseline schema {data.get('schema')!r}, this shiftbench reads "
                            f"{BASELINE_SCHEMA}; re-export it with `shiftbench export-baseline`")
    for key in ("suite", "model", "harness", "seed", "threats", "shifts", "cells"):
        if key not in data:
            raise BaselineError(f"{path}: key '{key}' missing; re-export it with `shiftbench export-baseline`")
    for i, c in enumerate(data["cells"]):
        for key in ("role", "data", "shift", "severity", "threat", "n", "seed", "robust_correct", "clean_correct"):
            if key not in c:
                raise BaselineError(f"{path}: key 'cells[{i}].{key}' missing")
        if len(c["robust_correct"]) != c["n"] or len(c["clean_correct"]) != c["n"]:
            raise BaselineError(f"{path}: key 'cells[{i}]': {len(c['robust_correct'])} outcomes, n says {c['n']}")
    return data


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Readable differences between two canonical entries: ``attack_args.steps 20 -> 10``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')} {a!r} -> {b!r}"]


def quick_subset(cells: list[dict[str, Any]], registry: Registry, suite_id: str) -> list[dict[str, Any]]:
    """The baseline cells ``--quick`` evaluates (QUICK_RULE).  A shift or threat whose baseline
    cells hold no robust example is passed over: nothing there can get worse."""
    suite = registry.suite(suite_id)

    def robust_somewhere(pick) -> set[str]:
        return {name for c in cells if (name := pick(c)) and "1" in c["robust_correct"]}

    shifts_ok = robust_somewhere(lambda c: c["shift"] if c["role"] == "dataset" else None)
    threats_ok = robust_somewhere(lambda c: c["threat"] if c["role"] == "threat" else None)
    shifts, families = [], set()
    for sid in suite.dataset_shifts:
        fam = registry.shift(sid).family
        if sid in shifts_ok and fam not in families and len(shifts) < QUICK_SHIFTS:
            shifts.append(sid)
            families.add(fam)
    threats = [t for t in suite.threat_shifts if t in threats_ok and registry.threat(t).kind == "lp"][:QUICK_THREATS]
    return [c for c in cells if c["role"] == "id" or (c["role"] == "dataset" and c["shift"] in shifts)
            or (c["role"] == "threat" and c["threat"] in threats)]


def check_settings(baseline: dict[str, Any], registry: Registry, *, n_examples: int | None = None,
                   seed: int | None = None, where: str = "baseline") -> list[planner.Cell]:
    """The cells of this run that pair with the baseline's, in its order (with the baseline's
    model as placeholder); raises BaselineError saying what differs and how to re-export."""
    suite_id, model = baseline["suite"], baseline["model"]
    problems = []
    if baseline["harness"] != HARNESS_VERSION:
        problems.append(f"harness version: baseline {baseline['harness']}, this shiftbench {HARNESS_VERSION} "
                        "(the attack code changed)")
    try:
        suite = registry.suite(suite_id)
    except KeyError as exc:
        raise BaselineError(f"{where}: key 'suite': {exc.args[0]}") from None
    this_seed = suite.seed if seed is None else seed
    if baseline["seed"] != this_seed:
        problems.append(f"seed: baseline {baseline['seed']}, this run {this_seed}")
    for kind in ("threats", "shifts"):  # the full entries the baseline's cells were made with
        for name, entry in baseline[kind].items():
            table = registry.entries[kind]
            now = canonical(table[name]) if name in table else None
            if now is None:
                problems.append(f"{kind[:-1]} '{name}': not in this registry")
            elif now != entry:
                problems.append(f"{kind[:-1]} '{name}': " + "; ".join(_diff(entry, now)))
    placeholder = ModelSpec(id=model, source="python:<baseline>:model", dataset=suite.dataset,
                            architecture="?", training="?")
    id_threat = registry.threat(suite.id_threat) if suite.id_threat in registry.entries["threats"] else None
    n_id = n_examples or suite.n_examples
    n_shift = n_examples or suite.n_shift_examples or suite.n_examples
    cells: list[planner.Cell] = []
    wrong_n = []
    for c in baseline["cells"]:
        if problems:
            break
        role = c["role"]
        if role == "dataset" and c["shift"] not in suite.dataset_shifts:
            problems.append(f"cell {c['data']} x {c['threat']}: shift '{c['shift']}' is not in suite {suite_id} any more")
            continue
        if role == "threat" and c["threat"] not in suite.threat_shifts:
            problems.append(f"cell {c['data']} x {c['threat']}: threat '{c['threat']}' is not in suite {suite_id} any more")
            continue
        if role in ("id", "dataset") and c["threat"] != suite.id_threat:
            problems.append(f"cell {c['data']} x {c['threat']}: the suite's ID threat is now '{suite.id_threat}'")
            continue
        n = n_shift if role == "dataset" else n_id
        if c["n"] != n:
            wrong_n.append(f"{c['data']} x {c['threat']} (baseline n={c['n']}, this run n={n})")
        shift = registry.shift(c["shift"]) if role == "dataset" else None
        threat = id_threat if role != "threat" else registry.threat(c["threat"])
        cells.append(planner.Cell(suite_id, placeholder, shift, c["severity"], threat, role, n, this_seed))
    if wrong_n:
        problems.append(f"n: {len(wrong_n)} cell(s) differ, e.g. {wrong_n[0]}")
    if problems:
        flags = (f" --n {baseline['n_examples']}" if baseline.get("n_examples") else "")
        raise BaselineError(
            f"{where} was made with other settings than this run, so it is not compared:\n  - "
            + "\n  - ".join(problems)
            + f"\nRe-run the baseline model with this shiftbench and registry and re-export it: "
            f"`shiftbench run --suite {suite_id} --models {model}{flags}` then `shiftbench export-baseline --suite "
            f"{suite_id} --model {model}{flags} --out {where}`"
            + ("; or pass the baseline's --n / --seed to regress" if wrong_n or baseline["seed"] != this_seed else ""))
    return cells


# --------------------------------------------------------------------------- regress
@dataclass
class RegressResult:
    """One row per compared cell, the verdict, and the Markdown report."""

    suite: str
    baseline_model: str
    model: str
    cells: pd.DataFrame  # data, threat, role, n, baseline/now robust and clean acc, lost, gained, p, p_holm, verdict
    alpha: float
    quick: bool
    seconds: float
    attack: str | None = None  # the attack run on every cell instead of each threat's (--attack)
    baseline_attacks: tuple[str, ...] = ()  # the attacks the compared baseline cells were made with

    @property
    def worse(self) -> list[str]:
        w = self.cells[self.cells["verdict"] == "worse"]
        return [f"{r.data} x {r.threat}" for r in w.itertuples()]

    @property
    def ok(self) -> bool:
        return not self.worse

    def markdown(self) -> str:
        n_worse = len(self.worse)
        head = (f"**{n_worse} of {len(self.cells)} cell(s) significantly less robust**" if n_worse
                else f"**no cell significantly less robust** ({len(self.cells)} compared)")
        lines = [f"### shiftbench regress: `{self.model}` vs baseline `{self.baseline_model}` ({self.suite})", "",
                 f"{head}; exact one-sided McNemar test per cell on the paired robust outcomes, Holm-corrected "
                 f"across cells, alpha {self.alpha:g}" + ("; quick subset" if self.quick else "")
                 + f"; {self.seconds:.1f} s.", ""]
        if self.attack is not None:
            other = [a for a in self.baseline_attacks if a != self.attack]
            lines += [f"Attack: `{self.attack}` on every cell, instead of each threat's own"
                      + (f"; the baseline's cells were made with {', '.join(f'`{a}`' for a in other)}, so a change "
                         "may come from the attack, not the model" if other else "") + ".", ""]
        lines += ["| Data | Threat | n | Robust baseline | Robust now | Change (pp) | Lost / gained | p | p (Holm) "
                  "| Clean baseline -> now | Verdict |",
                  "| :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :--- |"]
        for r in self.cells.itertuples():
            verdict = "**worse**" if r.verdict == "worse" else r.verdict
            lines.append(f"| {r.data} | {r.threat} | {r.n} | {100 * r.robust_baseline:.1f} | {100 * r.robust_now:.1f} | "
                         f"{100 * (r.robust_now - r.robust_baseline):+.1f} | {r.lost} / {r.gained} | {r.p:.3g} | "
                         f"{r.p_holm:.3g} | {100 * r.clean_baseline:.1f} -> {100 * r.clean_now:.1f} | {verdict} |")
        lines += ["", "Lost: examples robust in the baseline and not now; gained: the reverse. "
                  "Verdict `worse` when the Holm-adjusted p < alpha; `ok` otherwise."]
        return "\n".join(lines) + "\n"


def regress(model: str | nn.Module | ModelSpec, baseline: str | Path | dict[str, Any], *, quick: bool = False,
            alpha: float = 0.05, registry: Registry | None = None, weights: str | Path | None = None,
            allow_code: bool = False, n_examples: int | None = None, seed: int | None = None,
            data_dir: str | Path | None = None, model_dir: str | Path | None = None,
            batch_size: int = DEFAULT_BATCH, progress: bool = False, randomized: dict | None = None,
            input_transform: dict | None = None,
            attack: str | None = None) -> RegressResult:
    """Evaluate ``model`` (an entry file, a registry id, ``python:module:factory`` with
    ``weights``, or an ``nn.Module``) on the baseline's cells and compare them (see module doc).
    ``randomized``/``input_transform`` declare a defense the model (an entry's own declaration
    wins) has: attacks then use EOT/BPDA and outcomes a majority of draws (docs/defenses.md).
    ``attack``: run this attack on every cell instead of each threat's (a ``python:module:function``
    attack, like a ``python:`` model, needs ``allow_code``).
    Raises BaselineError when the baseline was made with other settings."""
    t0 = time.perf_counter()
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha must be in (0, 1), got {alpha}")
    where = str(baseline) if not isinstance(baseline, dict) else "baseline"
    data = baseline if isinstance(baseline, dict) else read_baseline(baseline)
    registry = registry if registry is not None else Registry(_default_location())
    suite = registry.suite(data["suite"])
    chosen = quick_subset(data["cells"], registry, suite.id) if quick else list(data["cells"])
    cells = check_settings({**data, "cells": chosen}, registry, n_examples=n_examples, seed=seed, where=where)
    resolved = entries.resolve(model, registry, dataset=suite.dataset, weights=weights, allow_code=allow_code)
    # user attacks (--attack, or the threats'): refused without the opt-in, imported before any cell runs
    load_code_attacks([c.threat for c in cells], attack,
                      allow=True if allow_code else allowed_code(suite.allow_code))
    if attack is not None and not is_code_attack(attack):
        get_attack(attack)  # an unknown name: a KeyError with a "did you mean", before any cell runs
    if isinstance(resolved, ModelSpec):  # the declarations go into the spec (an entry's own win): load applies them
        from ..registry import FrozenMap

        resolved = dataclasses.replace(
            resolved, randomized=resolved.randomized or FrozenMap(randomized or {}),
            input_transform=resolved.input_transform or FrozenMap(input_transform or {}))
    net = entries.load(resolved, registry, model_dir=model_dir, allow_code=allow_code)
    if isinstance(resolved, nn.Module) and (randomized or input_transform):
        from ..models.defenses import defend

        net = defend(net, randomized=randomized, input_transform=input_transform,
                     allow_code=True if allow_code else None, where="the model").eval()
    if isinstance(resolved, nn.Module):
        name = getattr(net, "shiftbench_name", type(net).__name__)
        spec = ModelSpec(id=name, source="python:<in-memory>:model", dataset=suite.dataset,
                         architecture=type(net).__name__, training="unknown")
    else:
        spec = resolved
    cells = [dataclasses.replace(c, model=spec) for c in cells]
    wanted = {(c.data_name, c.threat.id) for c in cells}
    outcomes: dict[tuple[str, str], Any] = {}
    todo = planner.batches(cells)
    bar = tqdm(total=len(todo), desc="regress", unit="batch", disable=not progress, dynamic_ncols=True)
    with code_opt_in(allow_code), suite_code(suite.allow_code):
        for batch in todo:
            bar.set_postfix_str(batch[0].describe(), refresh=False)
            for cell, out in batch_outcomes(batch, net, data_dir=data_dir, batch_size=batch_size, attack=attack):
                if (cell.data_name, cell.threat.id) in wanted:
                    outcomes[(cell.data_name, cell.threat.id)] = out
            bar.update(1)
    bar.close()
    rows = []
    for c in chosen:
        out = outcomes[(c["data"], c["threat"])]
        before = store.unbits(c["robust_correct"])
        lost, gained = discordant(before, out.robust_correct)
        clean_before = store.unbits(c["clean_correct"])
        rows.append({"data": c["data"], "threat": c["threat"], "role": c["role"], "n": int(c["n"]),
                     "robust_baseline": float(before.mean()), "robust_now": float(out.robust_correct.mean()),
                     "clean_baseline": float(clean_before.mean()), "clean_now": float(out.clean_correct.mean()),
                     "lost": lost, "gained": gained, "p": mcnemar_exact(lost, gained, "greater")})
    df = pd.DataFrame(rows, columns=["data", "threat", "role", "n", "robust_baseline", "robust_now", "clean_baseline",
                                     "clean_now", "lost", "gained", "p"])
    df["p_holm"] = holm(df["p"].tolist()) if len(df) else []
    df["verdict"] = ["worse" if p < alpha else "ok" for p in df["p_holm"]]
    used = tuple(sorted({str(c["attack"]) for c in chosen if c.get("attack")}))
    return RegressResult(suite.id, data["model"], spec.id, df, alpha, quick, time.perf_counter() - t0,
                         attack=attack, baseline_attacks=used)


def _default_location() -> str:
    from ..registry import layered_location

    return layered_location()


def publish(result: RegressResult, report: str | Path | None = None) -> list[Path]:
    """Write the Markdown report to ``report`` and append it to ``$GITHUB_STEP_SUMMARY`` when set."""
    text = result.markdown()
    written = []
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(text, encoding="utf-8")
        written.append(Path(report))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
        written.append(Path(summary))
    return written
