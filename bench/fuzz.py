"""Fuzz the REST listener into a raw capture backend and count what must never happen.

    python -m bench.fuzz --requests 100000 [--clients 4] [--seed 1]

Starts ``regiongate serve`` in front of ``bench.capture.CaptureBackend`` (an ``http`` backend) and sends
generated requests from several clients at once: hostile paths (encodings, dot segments, control and
non-ASCII bytes, smuggled request lines), methods, ``Host`` forms, header names and values, and bodies
(valid, truncated, deeply nested, non-UTF-8). Between them, "victim" clients send valid requests on
kept-alive connections, each with its own marker, and check that the answer they get is their own.

Counted: requests sent, answers by status, **desynchronised** answers (a 200 carrying another request's
marker), **5xx** answers, **crashes** (the gateway process ended, or a valid request got no answer),
and **malformed upstream requests** (anything the backend saw that is not exactly one well-formed request
on an allow-listed path). The run passes when the last four are zero.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.capture import CaptureBackend, RawClient, chat_request
from bench.targets import free_port, wait_ready

KEY = "rg-fuzz-key-0123456789abcdef"
ROUTES = [b"chat/completions", b"completions", b"embeddings", b"responses", b"messages", b"models", b"X"]
PIECES = [
    b"..",
    b".",
    b"%2e%2e",
    b"%2E",
    b"%2f",
    b"%2F",
    b"%5c",
    b"\\",
    b"//",
    b"%00",
    b"%0d%0a",
    b"%0D%0A",
    b"%20HTTP/1.1%0D%0AHost:%20x%0D%0AContent-Length:%200%0D%0A%0D%0AGET%20/v1/X",
    b"%C4%80",
    b"%ff",
    b"\x80",
    b"\xc4\x80",
    b"\xff",
    b"%",
    b"%zz",
    b";a=b",
    b"?q=1",
    b"#frag",
    b"@",
    b":",
    b"~",
    b"%63",
    b"\x7f",
    b"\x01",
    b"\t",
    b"../../metrics",
    b"admin",
    b"v1",
    b"%2e%2e%2fmetrics",
]
HOSTS = [
    [b"localhost"],
    [b"LOCALHOST."],
    [b"us-east-1.localhost"],
    [b"US-EAST-1.localhost."],
    [],
    [b"localhost", b"us-east-1.localhost"],
    [b"nowhere.localhost"],
    [b"localhost.."],
    [b"[::1]:8000"],
    [b"\xc4\x80.localhost"],
    [b"localhost:99999"],
    [b"127.0.0.1"],
    [b""],
    [b"a" * 300],
]
HEADER_NAMES = [
    b"x-custom",
    b"x-request-id",
    b"x-regiongate-explain",
    b"transfer-encoding",
    b"te",
    b"x-forwarded-for",
    b"x-regiongate-client-location",
    b"expect",
    b"bad name",
    b"\xc4\x80",
    b"x:y",
    b"connection",
    b"upgrade",
    b"content-type",
]
HEADER_VALUES = [
    b"1",
    b"chunked",
    b"\xff\xfe",
    b"\xc4\x80",
    b"a\x00b",
    b"a\x7fb",
    b"100-continue",
    b"h2c",
    b"x" * 200,
    b"1.2.3.4, 5.6.7.8",
    b"51.5,-0.1",
    b"nan,nan",
    b"keep-alive",
    b"",
]


@dataclass
class Counts:
    requests: int = 0
    victims: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    desync: int = 0
    server_errors: int = 0
    crashes: int = 0
    malformed_upstream: int = 0
    upstream_requests: int = 0
    echoed: int = 0  # fuzzed requests answered by the backend with their own marker
    upstream_connections: int = 0
    examples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bad(self, kind: str, what: str) -> None:
        with self.lock:
            setattr(self, kind, getattr(self, kind) + 1)
            if len(self.examples) < 20:
                self.examples.append(f"{kind}: {what}")

    @property
    def ok(self) -> bool:
        return not (self.desync or self.server_errors or self.crashes or self.malformed_upstream)


HOSTILE = 0.3  # each part of a request is hostile with this probability, so many requests reach upstream


def _path(rng: random.Random) -> bytes:
    if rng.random() > HOSTILE:
        return b"/v1/chat/completions"
    path = b"/v1/" + rng.choice(ROUTES)
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        at = rng.randrange(len(path) + 1)
        path = path[:at] + rng.choice(PIECES) + path[at:]
    return path


def _body(rng: random.Random, marker: str) -> bytes:
    obj: dict[str, object] = {"model": "grok-4", "messages": [{"role": "user", "content": marker}]}
    roll = rng.random()
    if roll < 0.1:
        obj["stream"] = True
    elif roll < 0.15:
        depth = rng.choice((100, 200, 254, 300, 1100))
        nested = b"[" * depth + b"]" * depth
        return orjson.dumps(obj)[:-1] + b',"metadata":' + nested + b"}"
    elif roll < 0.2:
        return orjson.dumps(obj)[: rng.randrange(1, 40)]
    elif roll < 0.25:
        return orjson.dumps(obj).replace(marker.encode(), b"\xff\xfe" + marker.encode())
    elif roll < 0.3:
        obj["model"] = rng.choice([None, 5, "", "nope", ["grok-4"]])
    return orjson.dumps(obj)


def fuzz_request(rng: random.Random, marker: str) -> bytes:
    hostile = rng.random() < HOSTILE
    method = (
        rng.choice([b"GET", b"PUT", b"DELETE", b"OPTIONS", b"P\xc4ST", b"GET /x"]) if hostile else b"POST"
    )
    version = rng.choice([b"HTTP/1.0", b"HTTP/9.9", b"HTTP/1.1"]) if rng.random() < 0.1 else b"HTTP/1.1"
    lines = [method + b" " + _path(rng) + b" " + version]
    lines += [b"host: " + h for h in (rng.choice(HOSTS) if rng.random() < HOSTILE else HOSTS[0])]
    if rng.random() < 0.9:
        lines.append(b"authorization: Bearer " + KEY.encode())
    for _ in range(rng.choice((0, 1, 2))):
        lines.append(rng.choice(HEADER_NAMES) + b": " + rng.choice(HEADER_VALUES))
    body = _body(rng, marker)
    length = len(body) if rng.random() < 0.95 else rng.randrange(0, len(body) + 1)
    lines += [b"content-length: " + str(length).encode(), b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _fuzzer(port: int, n: int, seed: int, counts: Counts) -> None:
    rng = random.Random(seed)
    for i in range(n):
        marker = f"fuzz-{seed}-{i}"
        client = RawClient(port, timeout=30, reset=True)  # one connection each: framing may be broken
        a = client.send(fuzz_request(rng, marker))
        client.close()
        with counts.lock:
            counts.requests += 1
            counts.statuses[a.status if a else 0] += 1
        if a is None:
            continue  # refused at the protocol level (a 400 and a close, or a reset): fine
        if a.status >= 500:
            counts.bad("server_errors", f"{a.status} {a.body[:200]!r}")
        elif a.status == 200 and a.content is not None:
            if a.content != marker:
                counts.bad("desync", f"expected {marker}, got {a.content}")
            else:
                with counts.lock:
                    counts.echoed += 1


def _victim(port: int, stop: threading.Event, seed: int, counts: Counts) -> None:
    client = RawClient(port, timeout=30)
    i = 0
    while not stop.is_set():
        marker = f"victim-{seed}-{i}"
        i += 1
        a = client.send(chat_request(b"/v1/chat/completions", marker, key=KEY))
        with counts.lock:
            counts.victims += 1
        if a is None:
            counts.bad("crashes", f"a valid request ({marker}) got no answer")
        elif a.status != 200:
            counts.bad("server_errors" if a.status >= 500 else "crashes", f"valid request got {a.status}")
        elif a.content != marker:
            counts.bad("desync", f"victim expected {marker}, got {a.content}")
    client.close()


def config(backend_url: str) -> str:
    return f"""
[gateway]
lat = 39.04
lon = -77.49
max_body_bytes = 65536

[health]
probe_interval_s = 0

[load]
scrape_interval_s = 0

[edge]
header_timeout_s = 2.0
body_timeout_s = 2.0

[[regions]]
id = "us-east-1"
lat = 39.04
lon = -77.49
zone = "us"

[[deployments]]
region = "us-east-1"
models = ["grok-4"]
limit = 64
backends = [{{ kind = "http", url = "{backend_url}", metrics_url = "" }}]

[[teams]]
name = "fuzz"
keys = [{{ id = "fuzz", env = "REGIONGATE_FUZZ_KEY" }}]

[limits.key]
requests_per_minute = 0
"""


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_gateway(backend_url: str, work: Path) -> Gateway:
    path, log, port = work / "fuzz.toml", work / "gateway.log", free_port()
    path.write_text(config(backend_url))
    cmd = [
        sys.executable,
        "-m",
        "regiongate",
        "serve",
        "--config",
        str(path),
        "--port",
        str(port),
        "--grpc-port",
        "0",
    ]
    env = {**os.environ, "REGIONGATE_FUZZ_KEY": KEY, "REGIONGATE_DATA_DIR": str(work / "data")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    gw = Gateway(proc, port, log)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc, log, 90)
    except BaseException:
        gw.stop()
        raise
    return gw


def run(requests: int, clients: int = 4, seed: int = 1) -> Counts:
    backend = CaptureBackend().start()
    counts = Counts()
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="regiongate-fuzz-") as tmp:
        gw = start_gateway(backend.url, Path(tmp))
        try:
            per = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
            fuzzers = [
                threading.Thread(target=_fuzzer, args=(gw.port, n, seed * 100 + i, counts))
                for i, n in enumerate(per)
            ]
            victims = [
                threading.Thread(target=_victim, args=(gw.port, stop, seed * 100 + 50 + i, counts))
                for i in range(2)
            ]
            for t in fuzzers + victims:
                t.start()
            for t in fuzzers:
                t.join()
            stop.set()
            for t in victims:
                t.join()
            if gw.proc.poll() is not None:
                counts.bad(
                    "crashes", f"the gateway exited with {gw.proc.returncode}: {gw.log.read_text()[-500:]}"
                )
            for problem in backend.bad():
                counts.bad("malformed_upstream", problem)
            counts.upstream_requests = len(backend.requests)
            counts.upstream_connections = backend.connections
            answered = counts.victims + counts.echoed
            if counts.upstream_requests != answered:  # exactly one upstream request per relayed answer
                what = f"{counts.upstream_requests} upstream requests, {answered} answers relayed"
                counts.bad("malformed_upstream", what)
        finally:
            gw.stop()
            backend.stop()
    return counts


def report(counts: Counts) -> str:
    by_class = Counter(f"{s // 100}xx" if s else "closed" for s in counts.statuses.elements())
    lines = [
        f"requests: {counts.requests} fuzzed + {counts.victims} valid (victims)",
        "answers: " + ", ".join(f"{k} {v}" for k, v in sorted(by_class.items())),
        f"desynchronised answers: {counts.desync}",
        f"5xx answers: {counts.server_errors}",
        f"crashes / unanswered valid requests: {counts.crashes}",
        f"malformed upstream requests: {counts.malformed_upstream}",
        f"upstream: {counts.upstream_requests} requests on {counts.upstream_connections} pooled connections",
    ]
    lines += [f"  e.g. {e}" for e in counts.examples]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    counts = run(args.requests, args.clients, args.seed)
    print(report(counts))
    return 0 if counts.ok else 1


if __name__ == "__main__":
    sys.exit(main())
