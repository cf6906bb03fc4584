"""Profile regiongate under load with py-spy and print the hot frames as text.

    .venv/bin/python -m bench.profile [--workload chat|stream20] [--conc 32] [--seconds 15] [--out /tmp/rg-profile]

Starts the fake upstream and ``regiongate serve --workers 1`` (the benchmark's config), drives it with wrk
(plain requests) or bench.probe (streams), and records with ``py-spy record`` twice: raw folded stacks
(``<out>/profile.txt``, summarised here) and a flame graph (``<out>/profile.svg``). The outputs stay outside
the repository. ``--summarise FILE`` only summarises an existing folded-stack file.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench import load, targets

FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str, lines: bool) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "/regiongate/", "/lib/python3"):
        i = path.find(marker)
        if i >= 0:
            path = (
                path[i + len(marker) :]
                if marker != "/regiongate/"
                else "regiongate/" + path[i + len(marker) :]
            )
            break
    where = f"{path}:{m.group('line')}" if lines and m.group("line") else path
    return f"{m.group('fn')} ({where})"


# Each sample is charged to the first of these that matches a frame, walking from the leaf to the root.
SUBSYSTEMS = [
    ("policy (snapshot_for + decide)", ["core/policy.py", "core/world.py", "state/fleet.py", "Gateway.plan"]),
    ("receipts (signature per response)", ["pipeline/receipts.py"]),
    (
        "usage + metrics (record, store writer thread)",
        [
            *("pipeline/usage.py", "metering", "sqlstore", "sqlite", "health/metrics.py", "prometheus", "Gateway._record"),
            *("concurrent/futures", "threading.py"),
        ],
    ),
    ("request id", ["_new_request_id"]),
    ("SSE relay", ["pipeline/sse.py"]),
    (
        "upstream client (regiongate.upstream.h1 + http)",
        ["aiohttp/", "upstream/", "HttpUpstream", "H1Pool", "H1Response", "_Conn.", "(h1.py)"],
    ),
    ("uvicorn server (httptools parse, ASGI, writes)", ["uvicorn/", "asgi.py"]),
    ("asyncio/uvloop (tasks, timeouts, loop)", ["asyncio/", "uvloop", "runners.py"]),
    ("regiongate glue (app, gateway, auth, hooks)", ["regiongate", "app.py", "pipeline/failover.py", "pipeline/hops.py", "pipeline/auth.py"]),
]


def by_subsystem(folded: Path) -> str:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        for frame in reversed(stack.split(";")):
            hit = next((name for name, keys in SUBSYSTEMS if any(k in frame for k in keys)), None)
            if hit:
                counts[hit] += int(count)
                break
        else:
            counts["other"] += int(count)
    rows = "".join(f"| {name} | {100.0 * n / max(total, 1):.1f}% |\n" for name, n in counts.most_common())
    return "| where the samples fall | share |\n|---|--:|\n" + rows


def summarise(folded: Path, top: int = 25) -> str:
    """Self time per function (where the CPU was) and inclusive time per function (what it costs with its
    callees), as percentages of all samples of the process."""
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f, lines=False) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{total} samples\n", "Self time (top frames):"]
    out += [f"  {100.0 * n / total:5.1f}%  {f}" for f, n in self_t.most_common(top)]
    out += ["", "Inclusive time (function and its callees):"]
    out += [f"  {100.0 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    out += ["", "By subsystem (each sample charged to the innermost matching frame):", by_subsystem(folded)]
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="chat", choices=["chat", "stream20", "stream200"])
    p.add_argument("--conc", type=int, default=32)
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", default="/tmp/rg-profile")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--summarise", help="only summarise this folded-stack file")
    args = p.parse_args()
    if args.summarise:
        print(summarise(Path(args.summarise), args.top))
        return 0
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rg-profile-"))
    kind, chunks = ("chat", 16) if args.workload == "chat" else ("stream", int(args.workload[6:]))
    w = load.Workload(kind, chunks, 0, args.conc)
    up = targets.start_upstream(work, "soon", None)
    rg = None
    try:
        rg = targets.start_regiongate(work, up.port, 1, None, [])
        assert rg.proc is not None
        load.run_probe(rg.url, w, 1.0)  # warm up pools and caches
        length = args.seconds + 3
        driver = threading.Thread(target=lambda: load.drive(rg.url, w, length, work), daemon=True)
        driver.start()
        common = ["--pid", str(rg.proc.pid), "--rate", str(args.rate), "--nonblocking"]
        raw = out / "profile.txt"
        subprocess.run(
            [spy, "record", *common, "--duration", str(args.seconds), "--format", "raw", "-o", str(raw)],
            check=True,
        )
        driver.join()
        driver = threading.Thread(target=lambda: load.drive(rg.url, w, 7, work), daemon=True)
        driver.start()
        svg = out / "profile.svg"
        subprocess.run([spy, "record", *common, "--duration", "5", "-o", str(svg)], check=True)
        driver.join()
        print(f"{w.name}: folded stacks {raw}, flame graph {svg}\n")
        print(summarise(raw, args.top))
    finally:
        if rg is not None:
            rg.stop()
        up.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
