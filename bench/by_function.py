"""Instructions per request of each Python function (inclusive), from a callgrind file: what
``bench.instructions --by-function`` prints.

Callgrind sees C functions only, and from Python 3.11 on one ``_PyEval_EvalFrameDefault`` runs every Python
frame. Python 3.12's perf support (``PYTHONPERFSUPPORT=1``) enters each code object through its own small
trampoline and writes ``/tmp/perf-<pid>.map`` (address, size, ``py::qualname:file``); callgrind counts each
trampoline as a function named by its address, so that map names the Python functions, and a trampoline's
inclusive cost is its function's, with everything it called (a coroutine's cost is that of its resumptions).
The trampolines make every Python call a C call, so the totals are a little higher than without them: read
the shares and compare versions measured the same way.
"""

from __future__ import annotations

import bisect
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

_LINE = re.compile(r"^\s*([\d,]+) \([^)]*\)\s+(\S.*?)(?: \[[^\]]*\])?$")
_ADDR = re.compile(r"^\?\?\?:0x([0-9a-fA-F]+)$")


def perf_map(path: Path) -> tuple[list[int], list[tuple[int, str]]]:
    """Start addresses (sorted) and (size, name) of each code object's trampoline."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:
            rows.append((int(parts[0], 16), int(parts[1], 16), parts[2]))
    rows.sort()
    return [r[0] for r in rows], [(r[1], r[2]) for r in rows]


def _name(addr: int, starts: list[int], info: list[tuple[int, str]]) -> str | None:
    i = bisect.bisect_right(starts, addr) - 1
    if i >= 0 and addr < starts[i] + info[i][0]:
        return info[i][1]
    return None


def annotate(cg_file: Path, check: bool = True) -> str:
    """``callgrind_annotate``'s inclusive listing of every function of one dump."""
    return subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(cg_file)],
        capture_output=True,
        text=True,
        check=check,
    ).stdout


def inclusive(cg_file: Path, perf: Path) -> dict[str, int]:
    """Inclusive instructions per Python function (``qualname:file``), from ``callgrind_annotate``.

    Recursion levels (``name'2``) are left out: their cost is inside the first level's already."""
    out = annotate(cg_file)
    starts, info = perf_map(perf)
    costs: dict[str, int] = {}
    for line in out.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        fn = m.group(2)
        a = _ADDR.match(fn)
        if a is None:
            continue
        name = _name(int(a.group(1), 16), starts, info)
        if name is None:
            continue
        name = name.removeprefix("py::")
        costs[name] = max(costs.get(name, 0), int(m.group(1).replace(",", "")))
    return costs


def short(name: str) -> str:
    """``qualname:/long/path/site-packages/uvicorn/x.py`` -> ``qualname (uvicorn/x.py)``."""
    fn, _, path = name.rpartition(":")
    for marker in ("site-packages/", "/regiongate/", "/bench/", "/lib/python3"):
        i = path.find(marker)
        if i >= 0:
            keep = path[i + len(marker) :]
            path = ("regiongate/" if marker == "/regiongate/" else "bench/" if marker == "/bench/" else "") + keep
            break
    return f"{fn} ({path})"


def report(costs: dict[str, int], requests: int, layers: Iterable[str], top: int) -> str:
    """The ``top`` costliest functions of ``layers`` (path fragments: ``regiongate/front/``, ``uvicorn/``),
    in thousands of instructions per request, inclusive."""
    keys = tuple(layers)
    rows = sorted(
        ((c, short(n)) for n, c in costs.items() if not keys or any(k in n for k in keys)), reverse=True
    )
    lines = [f"{'k instr/request':>16}  function (inclusive)"]
    lines += [f"{c / requests / 1e3:16.1f}  {n}" for c, n in rows[:top]]
    return "\n".join(lines)
