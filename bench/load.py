"""Workloads and the two load generators that drive them.

- ``wrk`` (Debian's wrk 4.1, C, epoll) for non-streaming requests: one thread sends well over 50k small
  requests/s on this machine, ten times what the Python proxies can take, and it costs the proxy under test
  the least CPU on a 2-core box that it shares with the upstream and the client.
- ``bench.probe`` (uvloop + httptools, run in the orchestrating process) for streams, because wrk sees a
  response only when it has ended: the probe records the time to the first body byte of each stream and
  counts its SSE events.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.targets import BENCH_KEY

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write one sentence about load balancers."},
]


@dataclass(frozen=True)
class Workload:
    kind: str  # "chat" | "stream" | "grpc" (unary GetCompletion) | "grpc-stream" (GetCompletionChunk)
    chunks: int  # content chunks (stream) or completion tokens (chat)
    latency_ms: int  # the upstream's own latency before its first byte
    conc: int
    # Seconds the connections run before anything is counted (the probe drives such a workload): the
    # window then starts in steady state, without the burst of ``conc`` new connections at once.
    warm_s: float = 0.0

    @property
    def what(self) -> str:
        return {"chat": "chat", "grpc": "grpc-unary", "grpc-stream": f"grpc-stream{self.chunks}"}.get(
            self.kind, f"stream{self.chunks}"
        )

    @property
    def name(self) -> str:
        return f"{self.what} lat{self.latency_ms} c{self.conc}" + (" steady" if self.warm_s else "")

    @property
    def group(self) -> str:
        return f"{self.what} lat{self.latency_ms}"

    @property
    def grpc(self) -> bool:
        return self.kind.startswith("grpc")

    def body(self) -> str:
        obj: dict[str, object] = {
            "model": f"bench-{self.latency_ms}ms",
            "messages": PROMPT,
            "max_tokens": self.chunks,
        }
        if self.kind == "stream":
            obj["stream"] = True
        return json.dumps(obj, separators=(",", ":"))

    @property
    def events(self) -> int:
        """SSE events a client must see: the content chunks, the finish chunk and [DONE]."""
        return self.chunks + 2 if self.kind == "stream" else 0

    def grpc_body(self) -> bytes:
        """The request as the xAI SDK frames it: one length-prefixed protobuf message."""
        from xai_sdk.proto import chat_pb2

        msgs = [
            chat_pb2.Message(role=chat_pb2.ROLE_SYSTEM, content=[chat_pb2.Content(text=PROMPT[0]["content"])]),
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.Content(text=PROMPT[1]["content"])]),
        ]
        raw = bytes(
            chat_pb2.GetCompletionsRequest(
                model=f"bench-{self.latency_ms}ms", messages=msgs, max_tokens=self.chunks
            ).SerializeToString()
        )
        return b"\x00" + len(raw).to_bytes(4, "big") + raw

    @property
    def grpc_path(self) -> str:
        return "/xai_api.Chat/GetCompletionChunk" if self.kind == "grpc-stream" else "/xai_api.Chat/GetCompletion"


def matrix(full: bool) -> list[Workload]:
    """The default matrix covers every axis (kind, chunks, latency, concurrency) in about 8 minutes; ``full``
    is the whole cross product."""
    if full:
        return [
            Workload(k, n, lat, c)
            for k, n in (("chat", 16), ("stream", 20), ("stream", 200))
            for lat in (0, 50)
            for c in (1, 32, 128)
        ]
    out = [Workload("chat", 16, lat, c) for lat in (0, 50) for c in (1, 32, 128)]
    out += [Workload("chat", 16, 50, 128, warm_s=1.0)]  # the tail without the opening burst (docs/bench)
    out += [Workload("stream", 20, 0, c) for c in (1, 32, 128)]
    out += [Workload("stream", 20, 50, c) for c in (1, 128)]
    out += [Workload("stream", 200, 0, c) for c in (1, 32)]
    out += [Workload("stream", 200, 50, 128)]
    return out


def grpc_matrix(quick: bool) -> list[Workload]:
    """gRPC as the xAI SDK calls it, beside the REST rows of the same concurrency."""
    conc = 8 if quick else 32
    return [Workload("grpc", 16, 0, conc), Workload("grpc-stream", 20, 0, 4 if quick else 32)]


def quick_matrix() -> list[Workload]:
    return [Workload("chat", 16, 0, 8), Workload("stream", 20, 0, 4)]


LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,'
    .. '"p50_us":%d,"p99_us":%d}}\\n', summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def lua_script(work: Path, w: Workload) -> Path:
    path = work / f"wrk-{w.kind}{w.chunks}-{w.latency_ms}.lua"
    if not path.exists():
        path.write_text(LUA.format(body=json.dumps(w.body()), key=BENCH_KEY))
    return path


@dataclass
class Sample:
    requests: int
    errors: int
    rps: float
    p50_us: float
    p99_us: float
    ttfb_p50_us: float | None = None
    ttfb_p99_us: float | None = None
    events: int | None = None
    unfinished: int = 0  # streams abandoned after the drain time (the probe only)


def run_wrk(url: str, w: Workload, duration: float, work: Path) -> Sample:
    secs = max(1, round(duration))  # wrk takes whole seconds
    cmd = ["wrk", "-t1", f"-c{w.conc}", f"-d{secs}s", "--timeout", "10s", "-s", str(lua_script(work, w)), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    r = json.loads(line[len("WRKJSON ") :])
    secs = r["duration_us"] / 1e6
    ok = r["requests"] - r["status_errors"]
    return Sample(
        requests=r["requests"],
        errors=r["status_errors"] + r["socket_errors"],
        rps=ok / secs if secs > 0 else 0.0,
        p50_us=float(r["p50_us"]),
        p99_us=float(r["p99_us"]),
    )


def run_probe(
    url: str,
    w: Workload,
    duration: float,
    requests: int = 0,
    show: bool = False,
    on_mark: Callable[[], None] | None = None,
) -> tuple[Sample, dict[str, Any]]:
    """Drive ``url`` with bench.probe, in this process (the orchestrator only waits meanwhile, and a
    process start per measurement would cost more than the short cells of --quick). A warm workload
    calls ``on_mark`` when its counted window starts (the caller reads its CPU counters there)."""
    import uvloop

    from bench.probe import run

    headers = [f"Authorization: Bearer {BENCH_KEY}"]
    r = uvloop.run(run(url, w.body().encode(), headers, w.conc, duration, requests, warm=w.warm_s, on_mark=on_mark))
    if not show:
        r.pop("sample", None)
    statuses: dict[str, int] = r["statuses"]
    bad = sum(v for k, v in statuses.items() if k != "200")
    n, elapsed = int(r["requests"]), float(r["elapsed_s"])
    return (
        Sample(
            requests=n,
            errors=int(r["errors"]) + bad,
            rps=(n - bad) / elapsed if elapsed else 0.0,
            p50_us=float(r["p50_us"]),
            p99_us=float(r["p99_us"]),
            ttfb_p50_us=float(r["ttfb_p50_us"]),
            ttfb_p99_us=float(r["ttfb_p99_us"]),
            events=int(r["events"]),
            unfinished=int(r["unfinished"]),
        ),
        r,
    )


def _h2load(cmd: list[str], logf: Path, timeout: float) -> tuple[list[float], int, str]:
    """Run h2load: the elapsed time of each response it logged (µs), how many were not 200, its output."""
    logf.unlink(missing_ok=True)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    times, bad = [], 0
    for line in logf.read_text().splitlines() if logf.exists() else []:
        _start_us, status, elapsed_us = line.split("\t")[:3]
        if status != "200":
            bad += 1
        times.append(float(elapsed_us))
    return times, bad, out.stdout + out.stderr


def run_h2load(
    url: str, body: Path, headers: list[str], conns: int, streams: int, secs: float, work: Path
) -> Sample:
    """h2load (Debian's nghttp2-client, C): ``conns`` connections carrying ``streams`` concurrent streams
    each, as gRPC channels do. Latency is per whole response (a stream's last byte)."""
    logf = work / "h2load.log"
    base = ["h2load", "-c", str(conns), "-m", str(streams), "-d", str(body), "--log-file", str(logf)]
    for h in headers:
        base += ["-H", h]
    times, bad, said = _h2load([*base, "-D", f"{max(int(secs * 1000), 100)}ms", url], logf, secs + 60)
    if not times:
        # A window shorter than one whole response (a smoke's sub-second cell on a loaded machine) sees
        # none finish; count one round of streams instead, which h2load waits for however slow they are.
        started = time.monotonic()
        times, bad, said = _h2load([*base, "-n", str(conns * streams), url], logf, secs + 60)
        secs = time.monotonic() - started
    if not times:
        raise RuntimeError(f"h2load measured nothing:\n{said}")
    times.sort()
    return Sample(
        requests=len(times),
        errors=bad,
        rps=(len(times) - bad) / secs,
        p50_us=times[len(times) // 2],
        p99_us=times[min(len(times) - 1, int(len(times) * 0.99))],
    )


def check_grpc(port: int) -> None:
    """One real call with grpcio first: h2load counts HTTP 200s, and a gRPC error is an HTTP 200 too."""
    import grpc
    from xai_sdk.proto import chat_pb2, chat_pb2_grpc

    w = Workload("grpc", 16, 0, 1)
    req = chat_pb2.GetCompletionsRequest.FromString(w.grpc_body()[5:])
    meta = [("authorization", f"Bearer {BENCH_KEY}")]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = chat_pb2_grpc.ChatStub(ch)
        out = stub.GetCompletion(req, metadata=meta, timeout=10)
        if not out.outputs or not out.outputs[0].message.content:
            raise RuntimeError(f"empty gRPC answer: {out}")
        chunks = list(stub.GetCompletionChunk(req, metadata=meta, timeout=10))
        if len(chunks) < 2:
            raise RuntimeError(f"a gRPC stream of {len(chunks)} chunks")


def run_grpc(port: int, w: Workload, duration: float, work: Path) -> Sample:
    body = work / f"grpc-{w.kind}{w.chunks}-{w.latency_ms}.bin"
    if not body.exists():
        body.write_bytes(w.grpc_body())
    headers = [f"authorization: Bearer {BENCH_KEY}", "content-type: application/grpc", "te: trailers"]
    conns = max(1, w.conc // 8)  # a few channels, 8 streams each
    url = f"http://127.0.0.1:{port}{w.grpc_path}"
    return run_h2load(url, body, headers, conns, max(1, w.conc // conns), duration, work)


def drive(url: str, w: Workload, duration: float, work: Path) -> Sample:
    """One measurement: wrk for plain requests, the probe for streams."""
    if w.kind == "chat":
        return run_wrk(url, w, duration, work)
    return run_probe(url, w, duration)[0]
