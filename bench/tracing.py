"""What tracing costs: CPU time per request of the gateway with tracing off, sampling 0.01 and sampling 1.0.

    .venv/bin/python -m bench.tracing [--requests 3000] [--rounds 5]

Four gateways (the benchmark's config: six regions, http backends on the fake upstream) differ only in
``[tracing]``; two have none, so their difference is the noise floor of the measurement. An OTLP/HTTP sink
in this process answers the exports. Round after round, in a rotating order (A B C D, B C D A, ...), each
gets the same closed-loop load of plain and streamed chat completions, and the CPU time of its whole
process (/proc/<pid>/stat, the SDK's export thread included) is divided by the requests served. Reported:
the median over rounds, per workload and mode, and the difference to "off".
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.load import Workload, run_probe
from bench.targets import (
    BENCH_KEY,
    Target,
    cpu_seconds,
    free_port,
    regiongate_toml,
    spawn,
    start_upstream,
    wait_ready,
)

# "off again" is a second gateway without tracing: its distance to "off" is the noise of the measurement.
MODES = {"off": None, "off again": None, "sampling 0.01": 0.01, "sampling 1.0": 1.0}


def start_sink() -> tuple[ThreadingHTTPServer, list[int]]:
    """An OTLP/HTTP endpoint that accepts every export (and counts the bytes, to show spans arrived)."""
    received = [0]

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received[0] += len(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, received


def start_gateway(work: Path, name: str, upstream: int, ratio: float | None, sink: int) -> Target:
    text = regiongate_toml(upstream)
    if ratio is not None:
        text += f'\n[tracing]\notlp_endpoint = "http://127.0.0.1:{sink}"\nsampling_ratio = {ratio}\n'
    slug = name.replace(" ", "-")
    cfg = work / f"{slug}.toml"
    cfg.write_text(text)
    (work / slug).mkdir()
    port = free_port()
    exe = shutil.which("regiongate", path=str(Path(sys.executable).parent)) or "regiongate"
    cmd = [exe, "serve", "--config", str(cfg), "--port", str(port), "--grpc-port", "0"]
    cmd += ["--log-level", "warning"]
    env = {"REGIONGATE_BENCH_KEY": BENCH_KEY, "REGIONGATE_DATA_DIR": str(work / slug)}
    log = work / f"{slug}.log"
    t = Target(name, port, spawn(cmd, log, env), log)
    wait_ready(f"http://127.0.0.1:{port}/healthz", t.proc, log, 60)  # type: ignore[arg-type]
    return t


def measure(t: Target, w: Workload, requests: int) -> float:
    """CPU microseconds per request for one closed-loop run of ``requests``."""
    t.refresh()
    before = cpu_seconds(t.pids)
    sample, _ = run_probe(t.url, w, 0, requests)
    spent = cpu_seconds(t.pids) - before
    assert sample.errors == 0, f"{t.name}: {sample.errors} errors"
    return spent / sample.requests * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000, help="per workload, mode and round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    workloads = [Workload("chat", 16, 0, 8), Workload("stream", 20, 0, 8)]
    sink, received = start_sink()
    with tempfile.TemporaryDirectory(prefix="rg-bench-tracing-") as tmp:
        work = Path(tmp)
        upstream = start_upstream(work, "soon", None)
        gateways = [
            start_gateway(work, n, upstream.port, r, sink.server_address[1]) for n, r in MODES.items()
        ]
        try:
            for t in gateways:  # warm-up: pools, caches, the first spans
                for w in workloads:
                    measure(t, w, 300)
            results: dict[tuple[str, str], list[float]] = {}
            for r in range(args.rounds):
                order = gateways[r % len(gateways) :] + gateways[: r % len(gateways)]  # no mode always first
                for w in workloads:
                    for t in order:
                        results.setdefault((w.name, t.name), []).append(measure(t, w, args.requests))
        finally:
            for t in (*gateways, upstream):
                t.stop()
            sink.shutdown()
    print(f"CPU time per request, median of {args.rounds} rounds of {args.requests} requests")
    print(f"{'workload':<22}{'mode':<16}{'µs/request':>12}{'vs off':>10}")
    for w in workloads:
        off = statistics.median(results[(w.name, "off")])
        for name in MODES:
            med = statistics.median(results[(w.name, name)])
            print(f"{w.name:<22}{name:<16}{med:>12.0f}{med - off:>+10.0f}")
    print(f"OTLP bytes received by the sink: {received[0]}")


if __name__ == "__main__":
    main()
