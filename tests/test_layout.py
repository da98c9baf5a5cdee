"""The package layout is the data flow: imports go one way, down the stages, and never in a circle.

cli -> workflows -> report -> analysis -> run -> models -> data -> registry, attacks.  Every import
counts, including the lazy ones inside functions: a lazy upward import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "benchmark"

# Lower number = lower layer.  A module may import from its own layer or below, never above.
LAYERS = {
    "benchmark._compat": 0,
    "benchmark._numerics": 0,
    "benchmark.registry": 0,
    "benchmark.attacks": 0,
    "benchmark.data": 1,
    "benchmark.models": 2,
    "benchmark.run": 3,
    "benchmark.analysis": 4,
    "benchmark.report": 5,
    "benchmark.workflows": 6,
    "benchmark.cli": 7,
    "benchmark": 8,  # the package's __init__: the public API on top of everything
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def is_package(mod: str) -> bool:
    return MODULES[mod].name == "__init__.py"


def layer(mod: str) -> int:
    best = max((k for k in LAYERS if mod == k or mod.startswith(k + ".")), key=len)
    return LAYERS[best]


def imports_of(mod: str) -> set[str]:
    """The benchmark modules ``mod`` imports (at any depth in its code)."""
    tree = ast.parse(MODULES[mod].read_text(), filename=str(MODULES[mod]))
    here = mod if is_package(mod) else mod.rpartition(".")[0]
    out: set[str] = set()

    def add(name: str) -> None:
        while name and name not in MODULES:  # benchmark.x.y.attr -> benchmark.x.y
            name = name.rpartition(".")[0]
        if name and name != mod:
            out.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "benchmark" or a.name.startswith("benchmark."):
                    add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            elif node.module and (node.module == "benchmark" or node.module.startswith("benchmark.")):
                target = node.module
            else:
                continue
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                add(sub if sub in MODULES else target)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    assert "benchmark.cli" in MODULES and "benchmark.registry" in MODULES
    for m in MODULES:
        assert any(m == k or m.startswith(k + ".") for k in LAYERS), f"{m} is in no layer of LAYERS"


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_no_upward_import(mod):
    up = sorted(t for t in GRAPH[mod] if layer(t) > layer(mod) and not mod.startswith(t + "."))
    assert not up, f"{mod} (layer {layer(mod)}) imports from a layer above it: {up}"


CLI_OWN = ("benchmark.cli.common", "benchmark.cli.__main__")  # not families of commands


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the import graph, or None.  Package -> its own submodule edges are left out:
    ``pkg/__init__`` importing ``pkg.x`` while ``pkg.x`` imports ``pkg``'s siblings is Python's
    normal package structure, not a cycle between two modules."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if t.startswith(m + ".") or m.startswith(t + "."):
                continue
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (c := visit(t)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_cli_families_stand_apart():
    """The command line is a package: each family module (``benchmark/cli/run.py``, ...) imports the
    shared ``common`` module and the stages below, never another family nor the package that assembles
    them; ``__init__`` assembles every family (``__main__`` only calls it)."""
    families = sorted(m for m in MODULES if m.startswith("benchmark.cli.") and m not in CLI_OWN)
    assert "benchmark.cli.run" in families and "benchmark.cli.common" in MODULES
    for mod in [*families, "benchmark.cli.common"]:
        inside = sorted(t for t in GRAPH[mod] if (t == "benchmark.cli" or t.startswith("benchmark.cli."))
                        and t != "benchmark.cli.common")
        assert not inside, f"{mod} imports {inside}: a family stands alone; what families share goes in cli/common.py"
    assert set(families) <= GRAPH["benchmark.cli"], "benchmark/cli/__init__.py must assemble every family"
    assert GRAPH["benchmark.cli.__main__"] == {"benchmark.cli"}


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_checker_sees_cycles_and_upward_imports():
    """The checks above can fail: a made-up graph with a cycle and an upward edge is caught."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer("benchmark.run.evaluate") > layer("benchmark.models.load") > layer("benchmark.data.shifts")
    assert layer("benchmark.data.shifts") > layer("benchmark.registry")


@pytest.mark.parametrize("pkg", sorted(m for m in MODULES if is_package(m) and m.count(".") == 1))
def test_stage_docstring(pkg):
    """Each stage's __init__ says what it takes in and what it hands on."""
    doc = ast.get_docstring(ast.parse(MODULES[pkg].read_text()))
    assert doc, f"{pkg}/__init__.py has no docstring"
    first = doc.splitlines()[0]
    assert "takes" in first and "hands on" in first, f"{pkg}: first line should say what it takes and hands on"
