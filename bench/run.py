"""The side-by-side benchmark of issue 4, in one command:

    .venv/bin/python -m bench.run                 # full run (~8 min): table, targets, chart -> docs/bench/
    .venv/bin/python -m bench.run --quick         # smoke (seconds): fake upstream + regiongate, tiny loads

It starts the fake upstream (``bench.upstream``) and, in front of it, regiongate (``regiongate serve`` with
``--workers 1`` and ``--workers 2``, a config whose deployment is an http backend on the upstream, so every
request takes the real path: key lookup, endpoint, policy, capacity lease, upstream call, usage record), and
nginx and LiteLLM when they are installed. Then, workload by workload, it measures every target in turn,
round after round (A B C A B C ...), and reports medians over the rounds: requests/s, p50/p99 latency and
what each proxy adds over the upstream alone (paired per round), time to first byte of streams, CPU time
per request of the proxy's process tree (/proc/<pid>/stat) and its peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import load, report, targets
from bench.load import Workload
from bench.report import Cell
from bench.targets import Target


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = [f"Python {platform.python_version()}"]
    for pkg in ("uvicorn", "uvloop", "httptools", "aiohttp", "orjson"):
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{pkg} {version(pkg)}")
    return ", ".join(out)


def calibrate() -> float:
    """ns per Python function call on this machine now (best of 5): how fast the shared CPU is during the
    run, so runs taken under different load can be compared."""

    def f(x: int) -> int:
        return x + 1

    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        for i in range(200_000):
            f(i)
        best = min(best, time.process_time() - t)
    return best / 200_000 * 1e9


def start_targets(
    args: argparse.Namespace, work: Path, redises: list[targets.Redis]
) -> tuple[Target, list[Target], list[str]]:
    notes: list[str] = []
    up = targets.start_upstream(work, args.gap, args.pin_upstream)
    started: list[Target] = [up]
    want = set(args.targets.split(",")) if args.targets else None

    def wanted(name: str) -> bool:
        return want is None or name in want

    for n in args.workers:
        if wanted(f"regiongate-w{n}"):
            started.append(targets.start_regiongate(work, up.port, n, args.pin_proxy, args.serve_arg))
    for n in args.workers:  # the production configuration: leases and a team rate limit in Redis
        if not wanted(f"regiongate-w{n}-redis"):
            continue
        if targets.redis_path() is None:
            notes.append("redis-server: not installed (apt-get install redis-server) - [shared] rows skipped")
            break
        redis = targets.start_redis(work, args.pin_upstream)
        redises.append(redis)
        started.append(targets.start_regiongate(work, up.port, n, args.pin_proxy, args.serve_arg, redis))
    if wanted("nginx") and not args.quick:
        if targets.nginx_path():
            started.append(targets.start_nginx(work, up.port, args.pin_proxy))
        else:
            notes.append("nginx: not installed (apt-get install nginx-light) - skipped")
    if wanted("litellm-w1") and not args.quick:
        if targets.litellm_path():
            try:
                started.append(targets.start_litellm(work, up.port, args.pin_proxy))
            except (RuntimeError, TimeoutError) as e:
                notes.append(f"litellm: failed to start - skipped ({str(e).splitlines()[0]})")
        else:
            notes.append(f"litellm: not installed (see docs/bench/README.md; or set ${targets.LITELLM_ENV}) - skipped")
    return up, started, notes


def check(ts: list[Target], workloads: list[Workload], notes: list[str]) -> list[Target]:
    """One request of each kind through each target: it must answer 200 and a whole stream."""
    kinds = {(w.kind, w.chunks): w for w in workloads if not w.grpc}
    ok = []
    for t in ts:
        good = True
        if t.grpc_port and any(w.grpc for w in workloads):
            try:
                load.check_grpc(t.grpc_port)
            except Exception as e:  # whatever broke: the target is left out and the run says why
                notes.append(f"{t.name}: a gRPC call failed: {e!s:.300}")
                good = False
        for w in kinds.values():
            one = Workload(w.kind, w.chunks, 0, 1)
            sample, raw = load.run_probe(t.url, one, 0, requests=1, show=True)
            if sample.errors or sample.requests != 1:
                notes.append(
                    f"{t.name}: {one.name} failed ({raw.get('statuses')}): {raw.get('sample')!s:.300}"
                )
                good = False
            elif w.kind == "stream" and (sample.events or 0) < one.events:
                notes.append(
                    f"{t.name}: a {one.chunks}-chunk stream had {sample.events} events, want >= {one.events}"
                )
                good = False
        if good:
            ok.append(t)
        else:
            notes.append(f"{t.name}: excluded from the run")
    return ok


def measure(t: Target, w: Workload, duration: float, work: Path, chat_client: str) -> Cell:
    t.refresh()
    counters: dict[str, Any] = {}

    def mark() -> None:  # where the counted window starts: now, or after a warm workload's warm-up
        counters["redis"] = t.redis.counts() if t.redis else None
        counters["cpu"] = targets.cpu_seconds(t.pids)

    if w.warm_s:
        sample = load.run_probe(t.url, w, duration, on_mark=mark)[0]
    else:
        mark()
        if w.grpc:
            sample = load.run_grpc(t.grpc_port, w, duration, work)
        elif w.kind == "chat" and chat_client == "wrk":
            sample = load.run_wrk(t.url, w, duration, work)
        else:
            sample = load.run_probe(t.url, w, duration)[0]
    redis_before = counters["redis"]
    t.refresh()
    cpu = targets.cpu_seconds(t.pids) - counters["cpu"]
    worker, total = targets.peak_rss_mb(t.pids)
    settle(t)
    redis = None
    if t.redis and redis_before:
        # Read once the gateway is idle again: wrk stops with up to ``conc`` requests admitted but not
        # counted as done, and the gateway admits and releases them after wrk left; the probe waits for them.
        after = t.redis.counts()
        admitted = w.conc if w.kind == "chat" and chat_client == "wrk" else 0
        redis = (after[0] - redis_before[0], after[1] - redis_before[1], admitted)
    return Cell(sample, cpu, worker, total, redis)


def settle(t: Target, idle: float = 0.1, window: float = 0.25, limit: float = 20.0) -> None:
    """Wait until ``t`` has worked off what the load left queued (a saturated proxy keeps serving requests
    the client already gave up on) so that it does not take CPU from the next target's measurement."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        t.refresh()
        before = targets.cpu_seconds(t.pids)
        time.sleep(window)
        if targets.cpu_seconds(t.pids) - before <= idle * window:
            return


def run(args: argparse.Namespace) -> int:
    started_at = time.time()
    load_before = _load()
    speed = calibrate()
    workloads = load.quick_matrix() if args.quick else load.matrix(args.full)
    if shutil.which("h2load"):
        workloads += load.grpc_matrix(args.quick)
    if args.only:
        workloads = [w for w in workloads if w.name in args.only.split(",")]
    # --quick drives everything with the probe: sub-second cells (wrk counts whole seconds), no apt package.
    chat_client = "wrk" if shutil.which("wrk") and not (args.probe_only or args.quick) else "probe"
    work = Path(tempfile.mkdtemp(prefix="rg-bench-"))
    running: list[Target] = []
    redises: list[targets.Redis] = []
    results: dict[Workload, dict[str, list[Cell]]] = {}
    try:
        _up, running, notes = start_targets(args, work, redises)
        if chat_client != "wrk" and not args.quick:
            notes.append("wrk not found: plain requests driven by bench.probe (apt-get install wrk)")
        if not shutil.which("h2load"):
            notes.append("h2load not found: no gRPC rows (apt-get install nghttp2-client)")
        ts = check(running, workloads, notes)
        print(
            f"targets: {', '.join(t.name for t in ts)}; {len(workloads)} workloads x {args.rounds} rounds",
            flush=True,
        )
        for w in workloads:
            here = [
                t
                for t in ts
                if not (w.conc == 1 and t.name.startswith("regiongate-w") and not t.name.startswith("regiongate-w1"))
                and (t.grpc_port or not w.grpc)  # gRPC: regiongate only (the upstream and peers speak HTTP/1.1 JSON)
            ]
            results[w] = {t.name: [] for t in here}
            if args.warmup > 0:
                for t in here:
                    measure(t, w, args.warmup, work, chat_client)
            for _ in range(args.rounds):
                for t in here:  # interleaved: A B C ... A B C ...
                    results[w][t.name].append(measure(t, w, args.duration, work, chat_client))
            line = "  ".join(
                f"{n} {report._med([c.sample.rps for c in cs]):,.0f}/s" for n, cs in results[w].items()
            )
            print(f"  {w.name:<20} {line}", flush=True)
    finally:
        for t in reversed(running):
            t.stop()
        for r in redises:
            r.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows = report.summarise(results, {t for cells in results.values() for t in cells})
    elapsed = time.time() - started_at
    cmd = "python -m bench.run " + " ".join(sys.argv[1:])
    header = (
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started_at))}: `{cmd.strip()}` on "
        f"{os.cpu_count()} cores ({_cpu_model()}); load average before {load_before}, after {_load()} "
        f"(the machine is shared); Python speed {speed:.0f} ns per function call before, {calibrate():.0f} "
        f"after; {elapsed:.0f} s. {args.rounds} rounds x {args.duration:g} s per cell, "
        f"medians over rounds; +latency is paired per round against direct. Plain requests: {chat_client}; "
        f"streams: bench.probe. {_versions()}.\n"
    )
    text = header + "\n" + report.markdown(rows) + "\n" + report.targets20(rows) + "\n" + report.targets(rows)
    if notes:
        text += "\nNotes:\n" + "".join(f"- {n}\n" for n in notes)
    print()
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(text)
        (out / "results.json").write_text(
            json.dumps([{**asdict(r), "workload": r.workload.name} for r in rows], indent=1, default=str)
        )
        wrote = [out / "results.md", out / "results.json"]
        if not args.no_chart:
            try:
                report.chart(rows, out / "bench.png", header.split(";")[0])
                wrote.append(out / "bench.png")
            except ImportError:
                print("no chart: matplotlib is not installed (pip install matplotlib)")
        print("wrote " + ", ".join(map(str, wrote)))
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="CI smoke: upstream + regiongate, tiny loads, seconds"
    )
    p.add_argument("--full", action="store_true", help="every workload of the cross product (~11 min)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per cell (default 3; quick 2)")
    p.add_argument("--duration", type=float, default=None, help="seconds per cell (default 2; quick 0.3)")
    p.add_argument("--warmup", type=float, default=None, help="seconds per target per workload, not counted")
    p.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=None, help="e.g. 1,2")
    p.add_argument(
        "--targets",
        help="comma list: direct,regiongate-w1,regiongate-w2,regiongate-w1-redis,regiongate-w2-redis,nginx,litellm-w1",
    )
    p.add_argument("--only", help="comma list of workload names, e.g. 'chat lat0 c32,grpc-unary lat0 c32'")
    p.add_argument("--gap", default="soon", help="upstream stream pacing: soon | burst | <ms>")
    p.add_argument("--pin-upstream", help="taskset CPU list for the upstream, e.g. 1")
    p.add_argument("--pin-proxy", help="taskset CPU list for the proxies, e.g. 0")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `regiongate serve` argument")
    p.add_argument("--probe-only", action="store_true", help="drive plain requests with bench.probe too")
    p.add_argument(
        "--out", default=None, help="write results.md/json and bench.png here (default docs/bench)"
    )
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    a = p.parse_args(argv)
    a.rounds = a.rounds or (2 if a.quick else 3)
    a.duration = a.duration or (0.3 if a.quick else 2.0)
    a.warmup = a.warmup if a.warmup is not None else (0.0 if a.quick else 0.5)
    a.workers = a.workers or ([1] if a.quick else [1, 2])
    if a.out is None and not a.quick:
        a.out = str(targets.ROOT / "docs" / "bench")
    return a


def main(argv: list[str] | None = None) -> int:
    return run(parse(argv))


if __name__ == "__main__":
    sys.exit(main())
