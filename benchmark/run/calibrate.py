"""Calibrate the attack each threat uses against AutoAttack, side by side.

For every zoo model of a suite and for the ID threat plus two Lp threat shifts, the threat's own
attack (``threat.attack`` with the threat's ``attack_args``: what every result of that threat
uses; a built-in threat keeps the attack of the ID threat it is made from) and AutoAttack run on
the same clean-correct examples in the same process; the table names each row's attack and
reports its robust accuracy and AutoAttack's, the gap (attack minus AutoAttack, in points:
positive means the attack missed adversarial examples) and the wall times.  Targets: mean gap
<= 0.3, max gap <= 1.0 point, attack <= 1/20 of AutoAttack's time (1/10 for a calibration of L1
threats only).

A randomized model (:class:`..models.defenses.Randomized`) is compared with AutoAttack's ``rand``
version (APGD-CE and APGD-DLR, 20 EOT samples), the field's reference for such defenses; both
attacks' outcomes are judged by the model's decision rule (majority of draws).  Its rows have
their own targets (mean gap <= 0.5, max gap <= 2 points, no time target) and summary line, and
the exit code needs both groups' targets.

A threat that is not Lp (PPGD, LPA, StAdv, ReColor, the transform threats), picked with
``--threats``, has no AutoAttack to stand against: its attack at its settings is compared with
its **stronger run** (:func:`.trust.stronger`: the same attack with 4x the iterations and 2
restarts, the later from random starts on the still-robust examples only; a grid search on a
grid refined 4x), on the same clean-correct examples in the same process.  Targets per threat:
mean gap <= 0.5, max gap <= 1.5 points over the models; no time target.

    shiftbench calibrate --suite digits [--models PAT] [--threats PAT] [--n N] [--out FILE.md] [--fast apgd-mm,mm5]

``--fast`` instead forces the named attacks on every threat (the first is the one the targets
apply to; it gets the threat's ``attack_args`` when it is the threat's own attack); each extra
one gets its own columns and summary line, on the same examples in the same process, so
``--fast apgd-mm,mm5`` sets apgd-mm beside the reference benchmark's MM5.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..registry import Registry, SuiteSpec, ThreatSpec

FAST = "apgd-mm"  # a Row's default attack name; calibrate runs each threat's own attack unless --fast says
DEFAULT_N = 200
TARGET_MEAN_GAP, TARGET_MAX_GAP, TARGET_TIME_RATIO = 0.3, 1.0, 1 / 20
TARGET_TIME_RATIO_L1 = 1 / 10  # AutoAttack's L1 is cheaper relative to a strong L1 attack (docs/attacks.md)
# Randomized models: against AutoAttack-rand, whose own outcomes vary with its draws; no time target
# (20 EOT samples per step on the reference's side, the threat's eot on ours: not like for like).
TARGET_MEAN_GAP_RAND, TARGET_MAX_GAP_RAND = 0.5, 2.0
# Non-Lp threats: each against its own stronger run (4x the iterations, 2 restarts), per threat;
# no time target (the stronger run costs 4-8x by construction)
TARGET_MEAN_GAP_STRONGER, TARGET_MAX_GAP_STRONGER = 0.5, 1.5
STRONGER = "stronger"  # a Row's reference (aa_version) when it is the threat's stronger run
STRONGER_WHAT = "4x the iterations, 2 restarts (grids refined)"
BUDGET_KEYS = ("bound", "eps", "max_flow", "max_rotation", "brightness")  # a non-Lp row's budget column


def time_target(rows: list["Row"]) -> float:
    """The time-ratio target: 1/20 of AutoAttack's time, 1/10 for a calibration of L1 threats only."""
    return TARGET_TIME_RATIO_L1 if rows and all(r.norm == "L1" for r in rows) else TARGET_TIME_RATIO


@dataclass
class Row:
    model: str
    threat: str
    norm: str
    eps: float
    n: int
    clean: float
    fast: float
    aa: float
    fast_s: float
    aa_s: float
    # further fast attacks on the same examples: (attack, robust accuracy, seconds)
    extra: tuple[tuple[str, float, float], ...] = ()
    fast_name: str = FAST  # the attack of this row (the threat's own, or --fast's first)
    randomized: bool = False  # the model is Randomized: AutoAttack-rand, the randomized targets
    aa_version: str = "standard"  # the AutoAttack version that ran

    @property
    def gap(self) -> float:
        """The row's attack minus AutoAttack, robust accuracy in points."""
        return 100 * (self.fast - self.aa)


def calibration_threats(reg: Registry, suite: SuiteSpec, patterns: str | None = None) -> list[ThreatSpec]:
    """The ID threat and two Lp threat shifts: the suite's own, else ``<dataset>-linf-large`` and
    ``<dataset>-l2`` from the registry, else built in code (twice the ID budget in the same norm;
    an L2 budget of half the Linf ball's L2 radius).  ``patterns`` (comma-separated globs) picks
    among the ID threat and all the suite's threat shifts instead."""
    id_t = reg.threat(suite.id_threat)
    if patterns:  # chosen among the suite's threats (a non-Lp one is calibrated against its stronger run)
        from ..registry import filter_ids

        every = [id_t, *(reg.threat(t) for t in suite.threat_shifts)]
        chosen = filter_ids(every, patterns)
        if not chosen:
            raise SystemExit(f"calibrate: no threat of suite '{suite.id}' matches {patterns!r} "
                             f"(they are: {', '.join(t.id for t in every)})")
        return chosen
    out = [id_t]
    known = reg.entries["threats"]
    wanted = [*suite.threat_shifts, f"{suite.dataset}-linf-large", f"{suite.dataset}-l2"]
    for tid in dict.fromkeys(wanted):
        t = known.get(tid)
        if t is not None and t.kind == "lp" and t.id != id_t.id and len(out) < 3:
            out.append(t)
    if id_t.kind == "lp":
        if len(out) < 3:
            out.append(dataclasses.replace(id_t, id=f"{id_t.id}-x2 (built-in)", eps=2 * id_t.eps, path=""))
        if len(out) < 3 and id_t.norm == "Linf":
            d = {"digits": 256}.get(suite.dataset, 3 * 32 * 32)
            out.append(dataclasses.replace(id_t, id=f"{id_t.id}-l2 (built-in)", norm="L2",
                                           eps=round(id_t.eps * math.sqrt(d) / 2, 3), path=""))
    return out[:3]


def _robust(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The model's verdict on ``x_adv``: for a randomized model the majority of its draws, drawn
    apart from what the attacks queried (an attack's luck with the draws it saw does not count)."""
    from ..models.defenses import judge

    return judge(model, x_adv).argmax(1) == y


def calibrate_model(model: torch.nn.Module, name: str, x: torch.Tensor, y: torch.Tensor,
                    threats: list[ThreatSpec], *, seed: int = 0, fast_args: dict[str, Any] | None = None,
                    aa_version: str = "standard", fast: tuple[str, ...] | None = None) -> list[Row]:
    """Each threat's attack (or the ``fast`` attacks) and AutoAttack on the clean-correct examples
    of ``x``.  An attack runs with the threat's ``attack_args`` when it is the threat's own attack;
    ``fast_args`` override the row's (first) attack's.  A randomized model gets AutoAttack's
    ``rand`` version whatever ``aa_version`` says; outcomes are the model's no-gradient decisions
    (for a randomized model, its majority-of-draws rule) for both attacks."""
    from ..attacks import run_attack
    from ..models.defenses import randomization

    randomized = randomization(model) is not None
    version = "rand" if randomized else aa_version
    ok = _robust(model, x, y)  # clean verdicts, by the same rule
    xc, yc = x[ok], y[ok]
    n = len(y)
    rows = []
    for t in threats:
        if t.kind != "lp" and not fast:
            rows.append(_versus_stronger(model, name, xc, yc, t, n=n, clean=float(ok.float().mean()), seed=seed,
                                         fast_args=fast_args))
            continue
        res = []
        for i, attack in enumerate(fast or (t.attack,)):
            args = dict(t.attack_args) if t.attack == attack else {}
            if i == 0:
                args.update(fast_args or {})
            t0 = time.perf_counter()
            xf = run_attack(model, xc, yc, t, seed=seed, attack=attack, **args)
            res.append((attack, float(_robust(model, xf, yc).sum()) / n, time.perf_counter() - t0))
        t1 = time.perf_counter()
        xa = run_attack(model, xc, yc, t, seed=seed, attack="autoattack", version=version)
        t2 = time.perf_counter()
        rows.append(Row(name, t.id, str(t.norm), float(t.eps), n, float(ok.float().mean()),
                        res[0][1], float(_robust(model, xa, yc).sum()) / n, res[0][2], t2 - t1,
                        extra=tuple(res[1:]), fast_name=res[0][0], randomized=randomized, aa_version=version))
    return rows


def _versus_stronger(model: torch.nn.Module, name: str, xc: torch.Tensor, yc: torch.Tensor, t: ThreatSpec, *,
                     n: int, clean: float, seed: int, fast_args: dict[str, Any] | None) -> "Row":
    """A non-Lp threat's row: its attack at its settings against its stronger run
    (:func:`.trust.stronger`: 4x the iterations, 2 restarts), both on the clean-correct examples
    ``xc`` (their positions ``0..`` index the restarts' draws); an example is robust for the
    reference when neither run broke it."""
    from ..attacks import run_attack
    from .trust import stronger

    args = {**t.attack_args, **(fast_args or {})}
    attack, strong = stronger(t, None, fast_args)
    if strong is None:
        raise SystemExit(f"calibrate: threat '{t.id}' ({t.path or 'built in'}): attack '{attack}' takes no "
                         "iteration count, restarts or grid, so it has no stronger run to be calibrated against")
    index = list(range(len(yc)))
    robust, secs = [], []
    for settings in (args, strong):
        t0 = time.perf_counter()
        xa = run_attack(model, xc, yc, t, seed=seed, index=index, **settings)
        robust.append(_robust(model, xa, yc))
        secs.append(time.perf_counter() - t0)
    # the reference counts an example robust when neither run broke it: the gap is the share of the
    # examples the threat's attack left robust that the stronger run breaks (what the convergence check tests)
    timed = [(float(robust[0].sum()) / n, secs[0]), (float((robust[0] & robust[1]).sum()) / n, secs[1])]
    budget = next((float(v) for k, v in (t.params or {}).items() if k in BUDGET_KEYS), float("nan"))
    return Row(name, t.id, t.kind, budget, n, clean, timed[0][0], timed[1][0], timed[0][1], timed[1][1],
               fast_name=attack, aa_version=STRONGER)


def _calibrate_one(registry_root: str, model_id: str, suite_id: str, n: int | None, seed: int,
                   fast_args: dict[str, Any] | None, threads: int, threats: str | None = None,
                   fast: tuple[str, ...] | None = None, device: str = "auto") -> list[Row]:
    """One model's rows, in a fresh process when run by a pool: both attacks of a row run back
    to back in the same process, so their times are comparable whatever else runs.  Model and
    images go to ``device`` (auto: CUDA when available) once."""
    from ..data import datasets
    from ..models.load import allowed_code, load_model
    from ..attacks import suite_code
    from ..attacks.batching import fixed_batch
    from .evaluate import resolve_device

    torch.set_num_threads(threads)
    reg = Registry(registry_root)
    suite = reg.suite(suite_id)
    x_all, y_all = datasets.load_id(suite.dataset, "test")
    idx = torch.from_numpy(datasets.subset(min(n or DEFAULT_N, len(x_all)), len(x_all), seed))
    dev = resolve_device(device)
    model = load_model(reg.model(model_id), reg, allow_code=allowed_code(suite.allow_code)).to(dev)
    with suite_code(suite.allow_code):  # a python: attack in --fast under the suite's allow_code
        return calibrate_model(fixed_batch(model), model_id, x_all[idx].to(dev), y_all[idx].to(dev),
                               calibration_threats(reg, suite, threats), seed=seed, fast_args=fast_args, fast=fast)


def run(reg: Registry, suite_id: str, *, models: str | None = None, n: int | None = None, seed: int | None = None,
        fast_args: dict[str, Any] | None = None, progress: bool = True, workers: int = 1,
        threads: int = 1, threats: str | None = None, fast: tuple[str, ...] | None = None,
        device: str = "auto") -> list[Row]:
    """Calibration rows for every zoo model of ``suite_id`` matching ``models`` (in model order),
    ``workers`` models at a time in separate processes; ``fast`` None: each threat's own attack."""
    from tqdm.auto import tqdm

    suite = reg.suite(suite_id)
    specs = reg.suite_models(suite, models)
    if not specs:
        raise SystemExit(f"calibrate: no model of suite '{suite_id}' matches {models!r}; "
                         f"see `shiftbench ls models --suite {suite_id}`")
    seed = suite.seed if seed is None else seed
    calibration_threats(reg, suite, threats)  # a bad pattern fails here, not in a worker
    jobs = [(reg.location, spec.id, suite_id, n, seed, fast_args, threads, threats, tuple(fast) if fast else None,
             device)
            for spec in specs]
    by_model: dict[str, list[Row]] = {}
    bar = tqdm(total=len(jobs), desc="calibrate", unit="model", disable=not progress)
    try:
        if workers <= 1:
            for job in jobs:
                by_model[job[1]] = _calibrate_one(*job)
                bar.update(1)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_calibrate_one, *job): job[1] for job in jobs}
                for fut in as_completed(futures):
                    by_model[futures[fut]] = fut.result()
                    bar.update(1)
    finally:
        bar.close()
    return [r for spec in specs for r in by_model[spec.id]]


def summary(rows: list[Row], attack: str | None = None) -> dict[str, float]:
    """Mean and max gap and time ratio of each row's (first) attack, or of the extra one ``attack``."""
    if attack is None or all(r.fast_name == attack for r in rows):
        pairs = [(r.gap, r.fast_s) for r in rows]
    else:
        pairs = [(100 * (rob - r.aa), sec) for r in rows for name, rob, sec in r.extra if name == attack]
    gaps = [g for g, _ in pairs]
    fast_s, aa_s = sum(sec for _, sec in pairs), sum(r.aa_s for r in rows)
    return {"mean_gap": sum(gaps) / len(gaps) if gaps else float("nan"),
            "max_gap": max(gaps) if gaps else float("nan"),
            "time_ratio": fast_s / aa_s if aa_s else float("nan"), "fast_s": fast_s, "aa_s": aa_s}


def targets_met(s: dict[str, float], time_ratio: float = TARGET_TIME_RATIO) -> bool:
    """Gaps are multiples of 100/n points: compare after rounding away float noise (1.0000000002)."""
    return (round(s["mean_gap"], 6) <= TARGET_MEAN_GAP and round(s["max_gap"], 6) <= TARGET_MAX_GAP
            and round(s["time_ratio"], 6) <= time_ratio)


def targets_met_randomized(s: dict[str, float]) -> bool:
    """The randomized models' targets (gaps only), with the same rounding as :func:`targets_met`."""
    return round(s["mean_gap"], 6) <= TARGET_MEAN_GAP_RAND and round(s["max_gap"], 6) <= TARGET_MAX_GAP_RAND


def split(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """(deterministic rows, randomized rows) of the rows against AutoAttack: each group has its
    own targets (the rows against a stronger run: :func:`by_threat`)."""
    lp = [r for r in rows if r.aa_version != STRONGER]
    return [r for r in lp if not r.randomized], [r for r in lp if r.randomized]


def by_threat(rows: list[Row]) -> dict[str, list[Row]]:
    """The rows against a threat's stronger run, per threat (each threat meets the targets alone)."""
    out: dict[str, list[Row]] = {}
    for r in rows:
        if r.aa_version == STRONGER:
            out.setdefault(r.threat, []).append(r)
    return out


def targets_met_stronger(s: dict[str, float]) -> bool:
    """A non-Lp threat's targets against its stronger run (gaps only), rounded as :func:`targets_met`."""
    return round(s["mean_gap"], 6) <= TARGET_MEAN_GAP_STRONGER and round(s["max_gap"], 6) <= TARGET_MAX_GAP_STRONGER


def all_targets_met(rows: list[Row]) -> bool:
    """Every group's targets (a group without rows has none to meet); False without any row."""
    det, rnd = split(rows)
    return (bool(rows) and (not det or targets_met(summary(det), time_target(det)))
            and (not rnd or targets_met_randomized(summary(rnd)))
            and all(targets_met_stronger(summary(g)) for g in by_threat(rows).values()))


def _names(rows: list[Row]) -> str:
    return ", ".join(dict.fromkeys(r.fast_name for r in rows))


def _inverse(ratio: float) -> str:
    """``1/ratio`` rounded, for the 'time ratio 0.050 = 1/20' text (a zero or missing ratio has none)."""
    return f"{1 / ratio:.0f}" if ratio and ratio == ratio else "-"


def render(rows: list[Row], command: str) -> str:
    """Markdown table + summary line(s) (what docs/attacks.md shows).  The ``attack`` column names
    each row's attack; the accuracy and time columns carry its name only when every row shares it."""
    names = list(dict.fromkeys(r.fast_name for r in rows)) or [FAST]
    first = names[0] if len(names) == 1 else "attack"
    extras = [name for name, _, _ in rows[0].extra] if rows else []
    groups = by_threat(rows)
    if groups:  # some rows stand against a stronger run, not AutoAttack: say so in the columns
        head = (f"| model | threat | kind | budget | n | clean % | attack | {first} % | reference % | reference | "
                f"gap (pp) | {first} s | reference s |")
    else:
        head = (f"| model | threat | norm | eps | n | clean % | attack | {first} % | AutoAttack % | AA version | "
                f"gap (pp) | {first} s | AA s |")
    rule = "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for name in extras:
        head += f" {name} % | {name} gap (pp) | {name} s |"
        rule += "---|---|---|"
    lines = [f"<!-- generated by: {command} -->", head, rule]
    for r in rows:
        line = (f"| {r.model} | {r.threat} | {r.norm} | {r.eps:g} | {r.n} | {100 * r.clean:.1f} | {r.fast_name} | "
                f"{100 * r.fast:.1f} | {100 * r.aa:.1f} | {r.aa_version} | {r.gap:+.2f} | {r.fast_s:.1f} | "
                f"{r.aa_s:.1f} |")
        for _, rob, sec in r.extra:
            line += f" {100 * rob:.1f} | {100 * (rob - r.aa):+.2f} | {sec:.1f} |"
        lines.append(line)
    det, rnd = split(rows)
    lines.append("")
    for threat, group in groups.items():
        s = summary(group)
        ok = targets_met_stronger(s)
        lines.append(f"**{threat}** ({_names(group)} at its settings vs its stronger run: "
                     f"{STRONGER_WHAT}): mean gap {s['mean_gap']:+.2f} pp (target <= {TARGET_MEAN_GAP_STRONGER}), "
                     f"max gap {s['max_gap']:+.2f} pp (target <= {TARGET_MAX_GAP_STRONGER}), time ratio "
                     f"{s['time_ratio']:.3f} (no target; {s['fast_s']:.0f} s vs {s['aa_s']:.0f} s). "
                     f"Targets {'met' if ok else 'NOT met'}.")
    if det or not (rows and groups):
        s = summary(det)
        target_t = time_target(det)
        ok = targets_met(s, target_t)
        label = "**Summary**" if not rnd else "**Summary (deterministic models)**"
        lines.append(f"{label} ({_names(det) or FAST} vs AutoAttack): mean gap {s['mean_gap']:+.2f} pp "
                     f"(target <= {TARGET_MEAN_GAP}), max gap {s['max_gap']:+.2f} pp (target <= {TARGET_MAX_GAP}), "
                     f"time ratio {s['time_ratio']:.3f} = 1/{_inverse(s['time_ratio'])} "
                     f"(target <= 1/{round(1 / target_t)}; {s['fast_s']:.0f} s vs {s['aa_s']:.0f} s). "
                     f"Targets {'met' if ok else 'NOT met'}.")
    if rnd:
        s = summary(rnd)
        ok = targets_met_randomized(s)
        lines.append(f"**Summary (randomized models)** ({_names(rnd)} vs AutoAttack-rand, decisions by majority "
                     f"of draws): mean gap {s['mean_gap']:+.2f} pp (target <= {TARGET_MEAN_GAP_RAND}), max gap "
                     f"{s['max_gap']:+.2f} pp (target <= {TARGET_MAX_GAP_RAND}), time ratio {s['time_ratio']:.3f} "
                     f"(no target; {s['fast_s']:.0f} s vs {s['aa_s']:.0f} s). Targets {'met' if ok else 'NOT met'}.")
    for name in extras:
        e = summary(rows, name)
        lines.append(f"**{name}**: mean gap {e['mean_gap']:+.2f} pp, max gap {e['max_gap']:+.2f} pp, time ratio "
                     f"{e['time_ratio']:.3f} = 1/{_inverse(e['time_ratio'])} ({e['fast_s']:.0f} s vs {e['aa_s']:.0f} s).")
    return "\n".join(lines) + "\n"


def main(args) -> int:
    """``shiftbench calibrate``: print the table (and write it to ``--out``); 0 if the targets of both
    groups (deterministic and randomized models) are met."""
    import shlex
    import sys

    import torch

    threads = getattr(args, "threads", 1)  # small models: more threads only contend
    torch.set_num_threads(threads)
    reg = Registry(args.registry)
    fast = tuple(a.strip() for a in (getattr(args, "fast", None) or "").split(",") if a.strip()) or None
    from ..attacks import get_attack
    from ..registry import allowed_code

    allow = allowed_code(reg.suite(args.suite).allow_code)  # a python: attack: the suite's allow_code, --allow-code
    for name in fast or ():
        try:
            get_attack(name, allow=allow, path="--fast")
        except KeyError as e:
            raise SystemExit(f"calibrate: --fast: {e.args[0]}")
    rows = run(reg, args.suite, models=args.models, n=args.n, fast_args=getattr(args, "fast_args", None),
               workers=getattr(args, "workers", 1), threads=threads, threats=getattr(args, "threats", None),
               fast=fast, device=getattr(args, "device", "auto"))
    cmd = "shiftbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "shiftbench calibrate"
    text = render(rows, getattr(args, "command_line", None) or cmd)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0 if all_targets_met(rows) else 1
