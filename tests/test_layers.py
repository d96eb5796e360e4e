"""The package's imports point one way, along the data flow: every import (inside functions too) goes to a module
of a lower layer, or of the same layer without forming a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "graphsr"

# lowest first; a module belongs to the layer of its longest listed prefix
LAYERS = [
    # shared helpers and constants that every layer may use
    ["graphsr", "graphsr.units", "graphsr.config", "graphsr.ops", "graphsr.provenance", "graphsr.io.digest",
     "graphsr.io.errors", "graphsr.training.checkpoint", "graphsr.training.history"],
    ["graphsr.detector", "graphsr.plotting"],  # plots draw cells in the detector's geometry
    ["graphsr.io", "graphsr.simulation"],
    ["graphsr.graphs"],
    ["graphsr.datasets"],
    ["graphsr.nn", "graphsr.diffusion"],
    ["graphsr.models"],
    ["graphsr.training"],
    ["graphsr.inference"],
    ["graphsr.reco"],
    ["graphsr.eval"],
    ["graphsr.pipelines"],
    ["graphsr.cli", "graphsr.__main__"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    best, found = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), i
    assert found is not None, f"{module} is in no layer: add it to LAYERS"
    return found


def imports() -> dict[str, set[str]]:
    """Module -> the graphsr modules it imports anywhere (module level or inside functions)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets.add(base)
                targets |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_follow_the_layers():
    upward = sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                    for a, targets in imports().items() for b in targets if layer(b) > layer(a))
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = imports()
    # a package's __init__ re-exports its modules: that edge is not a cycle of the data flow
    graph = {a: {b for b in targets if not a.startswith(b + ".")} for a, targets in graph.items()}
    assert not cycles(graph), f"import cycles: {cycles(graph)}"


def test_the_checks_see_a_cycle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("graphsr.eval.evaluate") > layer("graphsr.inference") > layer("graphsr.training.trainer")
    assert layer("graphsr.training.checkpoint") == 0 < layer("graphsr.detector.geometry")
