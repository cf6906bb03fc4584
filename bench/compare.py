"""Side-by-side measurements of the hot path's building blocks, to choose them by measurement.

    .venv/bin/python -m bench.compare server   # HTTP server + event loop: uvicorn/httptools vs granian, ...
    .venv/bin/python -m bench.compare client   # upstream client: aiohttp vs httpx (vs a raw protocol floor)

Each variant runs in its own process against the fake upstream, interleaved over ``--rounds`` rounds;
the tables give medians of requests/s and, more telling on a shared 2-core box, CPU time per request of
the process under test. JSON libraries are compared in the micro-benchmarks (bench/micro/test_json.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import load, targets

CHAT = load.Workload("chat", 16, 0, 32)
STREAM = load.Workload("stream", 200, 0, 32)


# --- servers ------------------------------------------------------------------------------------------
def _server_cmds(work: Path, up: int) -> dict[str, tuple[list[str], dict[str, str], str]]:
    py = sys.executable
    uvicorn = [py, "-m", "uvicorn", "--no-access-log", "--log-level", "warning", "--no-server-header"]
    uvicorn += ["--no-date-header", "--http", "httptools"]
    granian = [str(Path(py).parent / "granian"), "--interface", "asgi", "--loop", "uvloop", "--workers", "1"]
    granian += ["--no-ws", "--log-level", "warning", "--no-access-log"]
    cfg = work / "regiongate.toml"
    cfg.write_text(targets.regiongate_toml(up))
    rg_env = {
        "REGIONGATE_BENCH_CONFIG": str(cfg),
        "REGIONGATE_BENCH_KEY": targets.BENCH_KEY,
        "REGIONGATE_DATA_DIR": str(work / "data"),
    }
    rg = [
        py,
        "-m",
        "regiongate",
        "serve",
        "--config",
        str(cfg),
        "--grpc-port",
        "0",
        "--log-level",
        "warning",
    ]
    out = {
        "raw asyncio Protocol + uvloop (bench.upstream, floor)": ([py, "-m", "bench.upstream"], {}, "--port"),
        "uvicorn + httptools + uvloop": (
            [*uvicorn, "--loop", "uvloop", "bench.asgi_apps:hello"],
            {},
            "--port",
        ),
        "uvicorn + httptools + asyncio loop": (
            [*uvicorn, "--loop", "asyncio", "bench.asgi_apps:hello"],
            {},
            "--port",
        ),
        "regiongate app on uvicorn (regiongate serve)": (rg, rg_env, "--port"),
    }
    if os.access(granian[0], os.X_OK):
        out["granian ASGI + uvloop"] = ([*granian, "bench.asgi_apps:hello"], {}, "--port")
        out["regiongate app on granian ASGI"] = (
            [*granian, "--factory", "bench.asgi_apps:regiongate_app"],
            rg_env,
            "--port",
        )
    return out


def compare_servers(rounds: int, seconds: float, out: Path | None) -> str:
    work = Path(tempfile.mkdtemp(prefix="rg-compare-"))
    (work / "data").mkdir()
    up = targets.start_upstream(work, "soon", None)
    running: dict[str, targets.Target] = {}
    try:
        for name, (cmd, env, flag) in _server_cmds(work, up.port).items():
            port = targets.free_port()
            log = work / f"{len(running)}.log"
            t = targets.Target(name, port, targets.spawn([*cmd, flag, str(port)], log, env), log)
            health = "/healthz" if "regiongate" in name else "/health"
            try:
                targets.wait_ready(f"http://127.0.0.1:{port}{health}", t.proc, log, 60)  # type: ignore[arg-type]
                sample, raw = load.run_probe(t.url, load.Workload("chat", 16, 0, 1), 0, requests=1)
                if sample.errors:
                    raise RuntimeError(f"answered {raw['statuses']}")
            except (RuntimeError, TimeoutError) as e:
                print(f"{name}: skipped ({str(e).splitlines()[0]})", file=sys.stderr)
                t.stop()
                continue
            running[name] = t
        cells: dict[str, list[tuple[float, float]]] = {n: [] for n in running}
        for t in running.values():
            load.run_wrk(t.url, CHAT, 1, work)  # warm-up
        for _ in range(rounds):
            for name, t in running.items():
                t.refresh()
                before = targets.cpu_seconds(t.pids)
                s = load.run_wrk(t.url, CHAT, seconds, work)
                t.refresh()
                cpu = targets.cpu_seconds(t.pids) - before
                cells[name].append((s.rps, cpu * 1e6 / max(s.requests, 1)))
    finally:
        for t in running.values():
            t.stop()
        up.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(c for _, c in cells.get("uvicorn + httptools + uvloop", [(0, 0)])) or None
    lines = [
        f"Servers, non-streaming POST, wrk -c{CHAT.conc}, {rounds} rounds x {seconds:g} s (medians); "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
        "| server | req/s | CPU µs/req | CPU vs uvicorn+httptools+uvloop |",
        "|---|--:|--:|--:|",
    ]
    for name, cs in cells.items():
        rps = statistics.median(r for r, _ in cs)
        cpu = statistics.median(c for _, c in cs)
        rel = f"{cpu / base:.2f}x" if base else "-"
        lines.append(f"| {name} | {rps:,.0f} | {cpu:.0f} | {rel} |")
    text = "\n".join(lines) + "\n"
    if out:
        out.write_text(text)
    return text


# --- upstream clients ---------------------------------------------------------------------------------
async def _client_run(lib: str, url: str, body: bytes, conc: int, seconds: float, stream: bool) -> int:
    headers = {"content-type": "application/json", "x-request-id": "req_bench"}
    deadline = time.perf_counter() + seconds
    if lib == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

        async def one() -> None:  # what regiongate.upstream.http does per request
            resp = await session.post(url, data=body, headers=headers)
            if stream:
                async for _ in resp.content.iter_any():
                    pass
            else:
                await resp.read()
            resp.release()

        close = session.close
    elif lib == "httpx":
        import httpx

        client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=conc * 2), timeout=30
        )

        async def one() -> None:
            req = client.build_request("POST", url, content=body, headers=headers)
            resp = await client.send(req, stream=stream)
            if stream:
                async for _ in resp.aiter_raw():
                    pass
                await resp.aclose()

        close = client.aclose
    elif lib == "regiongate":
        from regiongate.upstream.h1 import H1Pool

        pool = H1Pool(url)
        path = url.split("/", 3)[3] if url.count("/") >= 3 else ""
        head = (
            f"POST /{path} HTTP/1.1\r\nhost: {pool.authority}\r\ncontent-type: application/json\r\n"
            f"x-request-id: req_bench\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()

        async def one() -> None:  # what regiongate.upstream.http does per request
            resp = await pool.request(head, body)
            if stream:
                async for _ in resp.stream():
                    pass
            else:
                await resp.read()

        async def close() -> None:
            pool.close()
    else:
        raise ValueError(lib)
    count = 0

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await one()
            count += 1

    await asyncio.gather(*(worker() for _ in range(conc)))
    await close()
    return count


def client_run(args: argparse.Namespace) -> None:
    import uvloop

    w = STREAM if args.kind == "stream" else CHAT
    __import__({"raw": "bench.probe"}.get(args.lib, args.lib))  # imports are not part of the cost
    started, cpu0 = time.perf_counter(), time.process_time()
    if args.lib == "raw":
        from bench.probe import run

        r = uvloop.run(run(args.url, w.body().encode(), [], args.conc, args.seconds, 0))
        n = int(r["requests"])
    else:
        n = uvloop.run(
            _client_run(args.lib, args.url, w.body().encode(), args.conc, args.seconds, w.kind == "stream")
        )
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    print(json.dumps({"requests": n, "wall": wall, "cpu": cpu}))


def compare_clients(rounds: int, seconds: float, out: Path | None) -> str:
    work = Path(tempfile.mkdtemp(prefix="rg-compare-"))
    up = targets.start_upstream(work, "soon", None)
    libs = ["regiongate", "aiohttp", "httpx", "raw"]
    cells: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for _ in range(rounds):
            for kind in ("chat", "stream"):
                for lib in libs:
                    cmd = [sys.executable, "-m", "bench.compare", "client-run", "--lib", lib, "--kind", kind]
                    cmd += ["--url", up.url, "--conc", "32", "--seconds", str(seconds)]
                    r = subprocess.run(
                        cmd,
                        capture_output=True,
                        text=True,
                        cwd=targets.ROOT,
                        timeout=seconds + 60,
                        check=True,
                    )
                    d = json.loads(r.stdout.strip().splitlines()[-1])
                    cells.setdefault((kind, lib), []).append(
                        (d["requests"] / d["wall"], d["cpu"] * 1e6 / max(d["requests"], 1))
                    )
    finally:
        up.stop()
        shutil.rmtree(work, ignore_errors=True)
    names = {
        "regiongate": "regiongate.upstream.h1 (current)",
        "aiohttp": "aiohttp",
        "httpx": "httpx",
        "raw": "raw Protocol + httptools (bench.probe: floor)",
    }
    lines = [
        f"Upstream clients against the fake upstream, 32 concurrent, {rounds} rounds x {seconds:g} s "
        f"(medians); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
        "| client | workload | req/s | client CPU µs/req | CPU vs aiohttp |",
        "|---|---|--:|--:|--:|",
    ]
    for kind in ("chat", "stream"):
        base = statistics.median(c for _, c in cells[(kind, "aiohttp")])
        for lib in libs:
            cs = cells[(kind, lib)]
            rps, cpu = statistics.median(r for r, _ in cs), statistics.median(c for _, c in cs)
            what = "non-streaming" if kind == "chat" else "200-chunk stream"
            lines.append(f"| {names[lib]} | {what} | {rps:,.0f} | {cpu:.0f} | {cpu / base:.2f}x |")
    text = "\n".join(lines) + "\n"
    if out:
        out.write_text(text)
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("server", "client"):
        s = sub.add_parser(name)
        s.add_argument("--rounds", type=int, default=3)
        s.add_argument("--seconds", type=float, default=3)
        s.add_argument("--out", help="also write the table to this file")
    r = sub.add_parser("client-run")  # one variant, in its own process
    r.add_argument("--lib", required=True)
    r.add_argument("--kind", default="chat")
    r.add_argument("--url", required=True)
    r.add_argument("--conc", type=int, default=32)
    r.add_argument("--seconds", type=float, default=3)
    args = p.parse_args()
    if args.what == "client-run":
        client_run(args)
        return 0
    out = Path(args.out) if args.out else None
    fn = compare_servers if args.what == "server" else compare_clients
    print(fn(args.rounds, args.seconds, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
