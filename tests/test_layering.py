"""Imports run one way: core <- config <- asgi <- upstream <- state <- health <- pipeline <- control <-
objects <- listeners <- app, and no two modules import each other, however indirectly.

Every import counts, lazy ones inside functions and ``TYPE_CHECKING`` ones too: a dependency hidden in a
function body is still a dependency a reader has to know about.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "regiongate"

# Lowest first. A package may import its own modules and any package on a lower line; two packages on
# one line stay apart (the listeners know nothing of each other; the simulator is no part of serving).
LAYERS: list[set[str]] = [
    {"core", "__init__"},
    {"config"},
    {"asgi"},
    {"upstream"},
    {"state"},
    {"health"},
    {"pipeline", "simulate"},
    {"control"},
    {"objects"},
    {"rest", "grpc", "console"},
    {"front"},  # the one-port listener: dispatches connections and streams to the rest and grpc listeners
    {"app"},
    {"__main__"},
]
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from regiongate.core import scope`` imports the module regiongate.core.scope
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [s if s in modules else node.module for s in subs]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t.startswith("regiongate") and t != mod:
                    graph[mod].add(t)
    return graph


def test_every_package_has_a_layer() -> None:
    packages = {_package(m) for m in _graph()}
    assert packages - LEVEL.keys() == set(), "put new packages on a line of LAYERS"


def test_imports_run_one_way() -> None:
    wrong = []
    for mod, deps in _graph().items():
        src = _package(mod)
        for dep in deps:
            dst = _package(dep)
            if dst == src or dep == "regiongate":
                continue
            if LEVEL[dst] >= LEVEL[src]:
                wrong.append(f"{mod} imports {dep} ({src} is not above {dst})")
    assert wrong == []


def test_no_module_is_part_of_an_import_cycle() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checks_see_a_planted_violation(tmp_path: Path) -> None:
    """The graph really reads imports: a core module that imported the app would be found."""
    graph = _graph()
    assert "regiongate.core" in graph["regiongate.pipeline.failover"]  # through the package's face
    assert "regiongate.core.scope" in graph["regiongate.core.policy"]  # ``from regiongate.core import scope``
    assert not any(_package(d) == "app" for d in graph["regiongate.core.policy"])
