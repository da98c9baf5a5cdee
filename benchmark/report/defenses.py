"""The board's "Defenses" section: each declared defense of a companion suite (a suite on the same
dataset whose models declare ``randomized`` or ``input_transform``, e.g. ``digits-defenses``)
beside its twin, the same network without the defense, under the attacks that account for it
(EOT, BPDA; docs/defenses.md)."""
from __future__ import annotations

from pathlib import Path

from ..analysis import aggregate
from ..registry import ModelSpec, Registry, SuiteSpec


def defended(spec: ModelSpec) -> bool:
    return bool(spec.randomized or spec.input_transform)


def describe(spec: ModelSpec) -> str:
    """``gaussian-noise sigma 0.4; randomized (EOT 20, 5 draws)``: the declaration in words."""
    parts = []
    t = dict(spec.input_transform)
    if t:
        params = " ".join(f"{k} {v}" for k, v in t.items() if k not in ("kind", "bpda"))
        bpda = t.get("bpda")
        parts.append(f"{t['kind']} {params}".strip() + (f", BPDA {bpda}" if bpda and bpda != "exact" else ""))
    if spec.randomized:
        r = dict(spec.randomized)
        parts.append(f"randomized (EOT {r.get('eot', 20)}, {r.get('draws', 5)} draws)")
    return "; ".join(parts)


def twin_of(spec: ModelSpec, others: list[ModelSpec]) -> ModelSpec | None:
    """The undefended model with the same network (architecture source, arguments and weights)."""
    for o in others:
        if not defended(o) and (o.source, dict(o.arch_args), o.sha256) == (spec.source, dict(spec.arch_args),
                                                                          spec.sha256) and o.sha256:
            return o
    return None


def companion_suites(registry: Registry, suite: SuiteSpec) -> list[SuiteSpec]:
    """Other suites on ``suite``'s dataset whose models include declared defenses."""
    out = []
    for s in sorted(registry.entries["suites"].values(), key=lambda s: s.id):
        if s.id != suite.id and s.dataset == suite.dataset and any(defended(m) for m in registry.suite_models(s)):
            out.append(s)
    return out


def section(registry: Registry, suite: SuiteSpec, results_root: Path) -> list[str]:
    """Markdown lines of the section (empty when no companion suite has results)."""
    lines: list[str] = []
    for comp in companion_suites(registry, suite):
        res = aggregate.load(registry, comp.id, Path(results_root))
        if res.n_present == 0:
            continue
        cells = res.cells
        threats = [comp.id_threat, *comp.threat_shifts]
        models = registry.suite_models(comp)
        look = {(r.model, r.threat): r for r in cells[cells["role"] != "dataset"].itertuples()}

        def pct(model: str, threat: str, what: str = "robust_acc") -> str:
            r = look.get((model, threat))
            return "-" if r is None else f"{100 * getattr(r, what):.1f}"

        rows = []
        for m in models:
            if not defended(m):
                continue
            twin = twin_of(m, models)
            flags = [f"{str(f).split(' (')[0]} ({t})" for t in threats if (m.id, t) in look
                     for f in look[(m.id, t)].failed_checks]
            row = [f"`{m.id}`", describe(m), f"`{twin.id}`" if twin else "-", pct(m.id, comp.id_threat, "clean_acc")]
            for t in threats:
                mine, base = pct(m.id, t), pct(twin.id, t) if twin else "-"
                row.append(f"{mine} ({base})")
            row.append(", ".join(flags) or "-")
            rows.append(row)
        if not rows:
            continue
        lines += ["", f"## Defenses (suite `{comp.id}`)", "",
                  f"Each declared defense beside its twin, the same network and weights without it: robust accuracy "
                  f"in % under each threat (the twin's in brackets), n={comp.n_examples}, seed {comp.seed}. The "
                  "attacks account for the defense: a randomized model is attacked with expectation over "
                  "transformation (the loss gradient averaged over its EOT samples) and its clean and robust "
                  "outcomes are the majority of its draws, seeded by each image; a transform that is not "
                  "differentiable is attacked through by BPDA, while every verdict and trust check runs the real "
                  "model. A robust accuracy here is what survives the right attack, not what a naive one reports "
                  "(docs/defenses.md has both). Flags: the trust check that failed, and on which threat (a failed "
                  "black-box check escalates the cell to Square, so its number is Square's). `make defenses` "
                  f"(`shiftbench run --suite {comp.id}`) recomputes the section's results.", ""]
        head = ["Model", "Defense", "Twin", "Clean %"] + [f"{t} %" for t in threats] + ["Flags"]
        lines += _table(head, rows)
    return lines


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head) - 1))
           + "|---|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]
