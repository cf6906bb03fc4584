"""The routing core stays pure: it imports only the standard library and itself."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "regiongate" / "core"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_nothing_but_stdlib_and_itself() -> None:
    files = sorted(CORE.glob("*.py"))
    assert files
    for f in files:
        for name in _imports(f):
            top = name.split(".")[0]
            assert (
                name.startswith("regiongate.core") or top in sys.stdlib_module_names or top == "__future__"
            ), f"{f.name} imports {name}"


def test_core_reads_no_clock_and_does_no_io() -> None:
    banned = {"time", "socket", "asyncio", "random", "os", "datetime", "threading"}
    for f in CORE.glob("*.py"):
        assert not (_imports(f) & banned), f"{f.name} imports {_imports(f) & banned}"
