"""Instructions per request, counted by valgrind's callgrind: a figure the load of a shared machine does not
move, for comparing two versions of the gateway back to back.

    .venv/bin/python -m bench.instructions [--requests 1000] [--paths rest,redis,grpc] [--pythonpath DIR]

For each path it starts the fake upstream and ``regiongate serve --workers 1`` under ``valgrind
--tool=callgrind --instr-atstart=no`` (start-up runs uninstrumented), sends 200 warm-up requests, switches
instrumentation on (``callgrind_control -i on``), sends ``--requests`` more at 8 in flight, dumps and
divides the instructions counted (all threads of the process) by the requests. Paths: ``rest`` (the
benchmark's in-process config, chat lat0), ``rest-stream`` (the same config, stream20 lat0: 20 content
chunks, each its own upstream write), ``redis`` (the same with ``[shared] redis`` and a team rate
limit, a private redis-server; it also prints the Redis commands, those inside scripts counted, and
the script calls per request, from that server's ``INFO commandstats``), ``grpc`` (unary GetCompletion through the gRPC listener, h2load),
``grpc-floor`` (the same call against a bare grpc.aio server, ``bench.grpc_floor``: what grpc.aio costs
before any gateway work) and ``grpc-floor-front`` (that server behind regiongate's gRPC front: the pipe's
cost is the difference; both run this checkout's front, ``--pythonpath`` or not: ``-m`` puts the working
directory first on the path).
Callgrind counts user-space instructions only: system calls (the kernel's share of each read and write)
are not in the figure, so it compares versions of regiongate, not regiongate with nginx.
``--pythonpath`` runs another checkout's ``regiongate`` package (e.g. an older commit) with this bench;
``--by-function N`` (from a Python >= 3.12 venv) also prints the N costliest Python functions,
inclusive, per request (``bench.by_function``). ``--keep`` keeps the callgrind files, whose C functions (``callgrind_annotate --inclusive=yes``) show what
libsqlite3 or libcrypto take of a request.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import by_function, load, targets


def _ir(out_dir: Path) -> int:
    """Sum of the 'summary:' / 'totals:' lines of every dump file callgrind wrote after the switch-on."""
    total = 0
    for f in out_dir.glob("callgrind.out*"):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                break
    return total


_SIGN = re.compile(r"^\s*([\d,]+) .*:(ossl_ed25519_sign|crypto_sign_ed25519_detached) ")


def _signing(out_dir: Path) -> int:
    """Instructions inside the Ed25519 signing function (inclusive, every dump): how much of a run's total
    is its signatures, whose number moves with the batching (OpenSSL's or libsodium's entry point)."""
    total = 0
    for f in out_dir.glob("callgrind.out*"):
        out = by_function.annotate(f, check=False)
        found = [int(m.group(1).replace(",", "")) for m in map(_SIGN.match, out.splitlines()) if m]
        total += max(found, default=0)
    return total


def _drive(t: targets.Target, path: str, n: int, work: Path) -> str:
    """Send ``n`` requests; returns how many receipts a signature covered (REST paths: they batch per
    loop iteration, so a run's total moves with it: one Ed25519 signature is about 0.3-0.45 M)."""
    if path.startswith("grpc"):
        w = load.Workload("grpc", 16, 0, 8)
        body = work / "grpc.bin"
        body.write_bytes(w.grpc_body())
        headers = [f"authorization: Bearer {targets.BENCH_KEY}", "content-type: application/grpc", "te: trailers"]
        cmd = ["h2load", "-n", str(n), "-c", "1", "-m", "8", "-d", str(body)]
        for h in headers:
            cmd += ["-H", h]
        out = subprocess.run(
            [*cmd, f"http://127.0.0.1:{t.grpc_port}{w.grpc_path}"], capture_output=True, text=True, check=False
        )
        if f"{n} succeeded" not in out.stdout:
            raise RuntimeError(f"h2load: {out.stdout[-1500:]}{out.stderr[-500:]}")
        return ""
    w = load.Workload("stream", 20, 0, 8) if path == "rest-stream" else load.Workload("chat", 16, 0, 8)
    sample, raw = load.run_probe(t.url, w, 600.0, requests=n, show=True)
    if sample.errors or sample.requests < n:
        raise RuntimeError(f"{sample.errors} errors in {sample.requests} requests: {raw.get('statuses')}")
    sigs = int(raw.get("signatures", 0))
    return f"{int(raw.get('receipts', 0)) / sigs:.2f} receipts per signature" if sigs else ""


def _redis_rate(before: tuple[int, int], after: tuple[int, int], n: int) -> str:
    """Redis commands (those inside scripts counted) and script calls (each one round trip) per request
    over the measured requests, from ``INFO commandstats`` of the private redis-server."""
    return f"{(after[0] - before[0]) / n:.2f} Redis commands and {(after[1] - before[1]) / n:.2f} scripts per request"


def _start_floor(work: Path, front: bool) -> targets.Target:
    port = targets.free_port()
    cmd = [sys.executable, "-m", "bench.grpc_floor", "--port", str(port), *(["--front"] if front else [])]
    log = work / f"grpc-floor-{port}.log"
    return targets.Target("grpc-floor", 0, targets.spawn(cmd, log), log, grpc_port=port)


def _wait_floor(t: targets.Target, work: Path) -> None:
    """Started under valgrind it takes a while: the first h2load round that succeeds says it is up."""
    deadline = time.monotonic() + 300
    while True:
        try:
            _drive(t, "grpc-floor", 1, work)
            return
        except RuntimeError:
            if time.monotonic() > deadline or (t.proc is not None and t.proc.poll() is not None):
                raise
            time.sleep(1)


def measure(path: str, n: int, work: Path, pythonpath: str | None, functions: int = 0) -> tuple[float, str]:
    up = targets.start_upstream(work, "soon", None)
    redis = targets.start_redis(work, None) if path == "redis" else None
    cg = work / f"cg-{path}"
    cg.mkdir()
    prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={cg}/callgrind.out.%p"]
    old_env = dict(os.environ)
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    if functions:
        os.environ["PYTHONPERFSUPPORT"] = "1"  # one trampoline per code object: bench.by_function
    try:
        real_spawn = targets.spawn
        targets.spawn = lambda cmd, log, env=None, cpus=None: real_spawn([*prefix, *cmd], log, env, cpus)
        try:
            if path.startswith("grpc-floor"):
                rg = _start_floor(work, path.endswith("-front"))
            else:
                rg = targets.start_regiongate(work, up.port, 1, None, [], redis, ready_s=600)
        finally:
            targets.spawn = real_spawn
        assert rg.proc is not None
        try:
            if path.startswith("grpc-floor"):
                _wait_floor(rg, work)
            elif path == "grpc":
                deadline = time.monotonic() + 120
                while True:
                    try:
                        load.check_grpc(rg.grpc_port)
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(1)
            _drive(rg, path, 200, work)  # warm-up: pools, caches, first-call paths
            subprocess.run(["callgrind_control", "-i", "on", str(rg.proc.pid)], check=True, capture_output=True)
            before = redis.counts() if redis is not None else None
            batching = _drive(rg, path, n, work)
            if redis is not None and before is not None:
                batching = ", ".join(x for x in (batching, _redis_rate(before, redis.counts(), n)) if x)
            subprocess.run(["callgrind_control", "-d", str(rg.proc.pid)], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-i", "off", str(rg.proc.pid)], check=True, capture_output=True)
            if functions:
                _print_functions(cg, Path(f"/tmp/perf-{rg.proc.pid}.map"), n, functions)
            signing = _signing(cg) / n
            if signing:
                batching += f"; {(_ir(cg) / n - signing) / 1e6:.3f} M without the Ed25519 signing's {signing / 1e3:.0f}k"
            return _ir(cg) / n, batching
        finally:
            rg.stop()
    finally:
        os.environ.clear()
        os.environ.update(old_env)
        if redis is not None:
            redis.stop()
        up.stop()


def _print_functions(cg: Path, perf: Path, n: int, top: int) -> None:
    dumps = sorted(cg.glob("callgrind.out.*.*"))  # the dump after the switch-on (not the one at exit)
    costs = by_function.inclusive(dumps[-1], perf)
    print(by_function.report(costs, n, (), top), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--paths", default="rest,redis,grpc")
    p.add_argument("--pythonpath", help="import regiongate from here (another checkout)")
    p.add_argument("--keep", action="store_true", help="keep the callgrind files (for callgrind_annotate)")
    p.add_argument(
        "--by-function",
        type=int,
        default=0,
        metavar="N",
        help="also print the N costliest Python functions, inclusive (Python >= 3.12)",
    )
    a = p.parse_args()
    if a.by_function and sys.version_info < (3, 12):
        print("--by-function needs Python >= 3.12 (perf trampolines): run this bench from such a venv", file=sys.stderr)
        return 2
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="rg-instr-"))
    try:
        for path in a.paths.split(","):
            ir, batching = measure(path, a.requests, work, a.pythonpath, a.by_function)
            extra = f", {batching}" if batching else ""
            print(f"{path}: {ir / 1e6:.3f} M instructions per request ({a.requests} requests{extra})", flush=True)
    finally:
        if a.keep:
            print(f"callgrind files kept in {work}/cg-<path>", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
