"""Where a suite's evaluation time goes, read from its stored results, and the least wall time a
run on W workers can take without some of its threats.

Every result stores what its cell cost in its worker (``timing``: the attack, the trust checks
with their escalation, the clean pass; seconds of one worker holding one core).  This sums them
per part of the grid (the ID cells, the dataset-shift cells, each threat shift) and prints each
part's share and its wall time spread evenly over ``--workers`` cores.  ``--without`` drops
threats (e.g. the ones whose settings are to change) and prints the rest against ``--target``:
if the rest alone exceeds the target on these workers, no setting of the dropped threats can
bring the run under it.  The workers' sum is what the run's wall time approaches: the fresh-clone
``make run`` of harness 8 took 1,136 s for its cells, 2,246 worker seconds over 2 workers.

    .venv/bin/python perf/run_budget.py                                   # results/digits, 2 workers
    .venv/bin/python perf/run_budget.py --without digits-ppgd,digits-lpa --target 600
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = ("attack_s", "checks_s", "clean_s")


def part_of(result: dict) -> str:
    """The part of the grid a result belongs to: ``id``, ``dataset shifts`` or its threat."""
    return {"dataset": "dataset shifts", "id": "id"}.get(result.get("role"), str(result.get("threat")))


def budget(results_dir: Path) -> tuple[dict[str, list[float]], dict[str, int], list[Path]]:
    """Per part: seconds of (attack, checks, clean) and the number of cells; and the files that
    could not be read (skipped: `shiftbench verify-results` says what is wrong with them)."""
    from benchmark.run.store import read_json, result_files

    secs: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(PARTS))
    cells: dict[str, int] = defaultdict(int)
    unreadable = []
    for path in result_files(results_dir):
        try:
            r = read_json(path)
        except (OSError, ValueError):
            r = None
        if not isinstance(r, dict):
            unreadable.append(path)
            continue
        timing = r.get("timing") or {}
        key = part_of(r)
        cells[key] += 1
        for i, name in enumerate(PARTS):
            secs[key][i] += float(timing.get(name) or 0.0)
    return secs, cells, unreadable


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results/digits", help="a suite's results folder (default results/digits)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--without", default="", help="comma-separated threats (or 'dataset shifts', 'id') to drop")
    ap.add_argument("--target", type=float, default=600.0, help="wall seconds to compare the rest with (default 600)")
    a = ap.parse_args(argv)
    folder = Path(a.results)
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no such results folder (run `make run` first, or pass --results)")
    secs, cells, unreadable = budget(folder)
    for path in unreadable:
        print(f"skipped {path}: not a readable result (`shiftbench verify-results` says more)")
    if not cells:
        raise SystemExit(f"{folder}: no results in it")
    total = sum(sum(v) for v in secs.values())
    print(f"{folder}: {sum(cells.values())} cells, {total:,.0f} worker seconds; wall at {a.workers} workers "
          f"if spread evenly: {total / a.workers:,.0f} s")
    print("| part | cells | attack s | checks + escalation s | clean s | total s | share | wall at "
          f"{a.workers} workers s |")
    print("| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key in sorted(secs, key=lambda k: -sum(secs[k])):
        att, chk, cln = secs[key]
        t = att + chk + cln
        print(f"| {key} | {cells[key]} | {att:,.0f} | {chk:,.0f} | {cln:,.1f} | {t:,.0f} | {100 * t / total:.1f}% "
              f"| {t / a.workers:,.0f} |")
    dropped = [d.strip() for d in a.without.split(",") if d.strip()]
    if dropped:
        unknown = [d for d in dropped if d not in secs]
        if unknown:
            raise SystemExit(f"--without: no cells of {', '.join(unknown)} in {folder} (parts: {', '.join(sorted(secs))})")
        rest = sum(sum(v) for k, v in secs.items() if k not in dropped)
        floor = rest / a.workers
        print(f"\nwithout {', '.join(dropped)}: {rest:,.0f} worker seconds, at least {floor:,.0f} s of wall time on "
              f"{a.workers} workers, against a target of {a.target:,.0f} s: "
              + (f"{floor - a.target:,.0f} s over before any cell of them runs" if floor > a.target
                 else f"{a.target - floor:,.0f} s left for them ({(a.target - floor) * a.workers:,.0f} worker seconds)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
