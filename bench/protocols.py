"""One port against separate ports: what the one-port listener (``serve --listen``) costs per protocol.

    .venv/bin/python -m bench.protocols [--rounds 3] [--seconds 3] [--tls] [--out FILE]

Two gateways on the same fake upstream, interleaved round by round: ``--port P --grpc-port G`` (REST on
uvicorn/httptools, gRPC behind the byte-pipe front) and ``--listen :Q`` (one port: ALPN / preface
dispatch, REST over HTTP/1.1 on the same httptools protocol, REST over HTTP/2 on regiongate.front, gRPC
relayed stream by stream to grpc.aio). Each cell: requests/s, gateway CPU per request (its whole process,
/proc) and latency percentiles, at ``--conc`` concurrent requests and at 1 (added latency). Loads: wrk for
HTTP/1.1, h2load (Debian's nghttp2-client) for HTTP/2 and gRPC (unary ``xai_api.Chat/GetCompletion``,
a framed protobuf body, one connection carrying ``--conc`` streams as a gRPC channel does).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import load, targets

CHAT = load.Workload("chat", 16, 0, 16)


@dataclass
class Gw:
    name: str
    target: targets.Target
    rest: int
    grpc: int
    tls: bool

    def url(self, port: int, path: str = "/v1/chat/completions") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}{path}"


def _start(work: Path, up: int, one_port: bool, tls: tuple[Path, Path] | None) -> Gw:
    cfg = work / "regiongate.toml"
    cfg.write_text(targets.regiongate_toml(up))
    tag = "one" if one_port else "sep"
    data = work / f"data-{tag}"
    data.mkdir(exist_ok=True)
    exe = shutil.which("regiongate", path=str(Path(sys.executable).parent)) or "regiongate"
    cmd = [exe, "serve", "--config", str(cfg), "--log-level", "warning"]
    if one_port:
        rest = grpc = targets.free_port()
        cmd += ["--listen", f"127.0.0.1:{rest}"]
    else:
        rest, grpc = targets.free_port(), targets.free_port()
        cmd += ["--port", str(rest), "--grpc-port", str(grpc)]
    if tls:
        cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    env = {"REGIONGATE_BENCH_KEY": targets.BENCH_KEY, "REGIONGATE_DATA_DIR": str(data)}
    log = work / f"rg-{tag}.log"
    t = targets.Target(f"regiongate {tag}", rest, targets.spawn(cmd, log, env), log)
    if tls:
        ready = ["curl", "-skf", "-o", "/dev/null", f"https://127.0.0.1:{rest}/healthz"]
        for _ in range(600):
            if subprocess.run(ready, check=False).returncode == 0:
                break
            assert t.proc is not None and t.proc.poll() is None, log.read_text()
            __import__("time").sleep(0.1)
    else:
        targets.wait_ready(f"http://127.0.0.1:{rest}/healthz", t.proc, log, 60)  # type: ignore[arg-type]
    return Gw("one port (--listen)" if one_port else "separate ports", t, rest, grpc, bool(tls))


def _grpc_body(work: Path) -> Path:
    from xai_sdk.proto import chat_pb2

    msg = chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.Content(text="Write one sentence.")])
    req = chat_pb2.GetCompletionsRequest(model="bench-0ms", messages=[msg], max_tokens=16)
    raw = req.SerializeToString()
    path = work / "grpc.bin"
    path.write_bytes(b"\x00" + len(raw).to_bytes(4, "big") + raw)
    return path


def _check_grpc(gw: Gw, ca: Path | None) -> None:
    """One real call first: h2load counts HTTP 200s, and a gRPC error is an HTTP 200 too."""
    import grpc
    from xai_sdk.proto import chat_pb2, chat_pb2_grpc

    target = f"127.0.0.1:{gw.grpc}"
    if ca is not None:
        opts = [("grpc.ssl_target_name_override", "localhost")]
        ch = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca.read_bytes()), options=opts)
    else:
        ch = grpc.insecure_channel(target)
    msg = chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.Content(text="hi")])
    with ch:
        out = chat_pb2_grpc.ChatStub(ch).GetCompletion(
            chat_pb2.GetCompletionsRequest(model="bench-0ms", messages=[msg], max_tokens=16),
            metadata=[("authorization", f"Bearer {targets.BENCH_KEY}")],
            timeout=10,
        )
    assert out.outputs, "empty gRPC answer"


def measure(gw: Gw, what: str, conc: int, secs: int, work: Path) -> load.Sample:
    auth = f"authorization: Bearer {targets.BENCH_KEY}"
    w = load.Workload("chat", 16, 0, conc)
    if what == "rest-h1":
        return load.run_wrk(gw.url(gw.rest), w, secs, work)
    body = work / "chat.json"
    body.write_text(w.body())
    if what == "rest-h2":
        return load.run_h2load(gw.url(gw.rest), body, [auth, "content-type: application/json"], 1, conc, secs, work)
    grpc_headers = [auth, "content-type: application/grpc", "te: trailers"]
    url = gw.url(gw.grpc, "/xai_api.Chat/GetCompletion")
    return load.run_h2load(url, _grpc_body(work), grpc_headers, 1, conc, secs, work)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--conc", type=int, default=16)
    p.add_argument("--tls", action="store_true", help="both gateways with a certificate (default: cleartext)")
    p.add_argument("--only", choices=["rest-h1", "rest-h2", "grpc"], help="measure one protocol")
    p.add_argument("--out")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rg-protocols-"))
    up = targets.start_upstream(work, "soon", None)
    ca: Path | None = None
    tls: tuple[Path, Path] | None = None
    if a.tls:
        sys.path.insert(0, str(targets.ROOT))
        from tests.support.certs import make_certs

        ca, cert, key = make_certs(work, ("localhost", "127.0.0.1"))
        tls = (cert, key)
    gws = [_start(work, up.port, False, tls), _start(work, up.port, True, tls)]
    cells: dict[tuple[str, str, int], list[tuple[float, float, float, float]]] = {}
    plan = [("rest-h1", gws), ("rest-h2", gws[1:]), ("grpc", gws)]
    plan = [(what, on) for what, on in plan if a.only in (None, what)]
    try:
        for gw in gws:
            _check_grpc(gw, ca)
            for what, on in plan:
                if gw in on:
                    measure(gw, what, a.conc, 1, work)  # warm-up
        for _ in range(a.rounds):
            for what, on in plan:
                for conc in (a.conc, 1):
                    for gw in on:
                        gw.target.refresh()
                        before = targets.cpu_seconds(gw.target.pids)
                        s = measure(gw, what, conc, a.seconds, work)
                        cpu = targets.cpu_seconds(gw.target.pids) - before
                        if s.errors:
                            raise RuntimeError(f"{gw.name} {what}: {s.errors} errors")
                        cells.setdefault((what, gw.name, conc), []).append(
                            (s.rps, cpu * 1e6 / max(s.requests, 1), s.p50_us, s.p99_us)
                        )
    finally:
        for gw in gws:
            gw.target.stop()
        up.stop()
        shutil.rmtree(work, ignore_errors=True)
    names = {"rest-h1": "REST, HTTP/1.1 (wrk)", "rest-h2": "REST, HTTP/2 (h2load, 1 connection)",
             "grpc": "gRPC unary (h2load, 1 connection)"}
    lines = [
        f"Protocols, non-streaming chat (16 tokens) on the fake upstream, {'TLS' if a.tls else 'cleartext'}, "
        f"{a.rounds} rounds x {a.seconds} s (medians); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
        "| protocol | listener | req/s at c" + str(a.conc) + " | CPU µs/req | p50 ms | p99 ms | p50 ms at c1 |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for what, on in plan:
        for gw in on:
            cs, c1 = cells[(what, gw.name, a.conc)], cells[(what, gw.name, 1)]
            med = [statistics.median(x[i] for x in cs) for i in range(4)]
            lat1 = statistics.median(x[2] for x in c1)
            lines.append(
                f"| {names[what]} | {gw.name} | {med[0]:,.0f} | {med[1]:.0f} | {med[2] / 1000:.2f} | "
                f"{med[3] / 1000:.2f} | {lat1 / 1000:.2f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
