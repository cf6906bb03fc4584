"""Helpers for the scale-out and fault tests: Redis (the shared one, or a private server a test may stop),
small config worlds, and streaming clients that report exactly how each request ended."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support import worlds
from tests.support.procs import DEMO_KEY, free_port, wait_until
from tests.support.worlds import DEMO_REGIONS, http_backend

# The database number is the machine's choice (REGIONGATE_TEST_REDIS_DB): keys are prefixed per test anyway.
REDIS_DB = int(os.environ.get("REGIONGATE_TEST_REDIS_DB", "0"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
MSG = [{"role": "user", "content": "hello"}]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def shared_redis() -> str:
    """The machine's Redis; FAIL in CI when it is missing, skip elsewhere."""
    if _reachable("127.0.0.1", 6379):
        return REDIS_URL
    if os.environ.get("CI") == "true":
        pytest.fail("Redis is not reachable on 127.0.0.1:6379 (CI must start it: see .ci/run)")
    pytest.skip("Redis is not reachable on 127.0.0.1:6379")


def unique_prefix() -> str:
    return f"rgtest:{uuid.uuid4().hex[:12]}:"




@dataclass
class RedisServer:
    """A private redis-server on a free port, which a test may stop and start again."""

    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            if os.environ.get("CI") == "true":
                pytest.fail("redis-server is not installed")
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _reachable("127.0.0.1", self.port), 10, what="redis-server to start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


# --- config worlds -------------------------------------------------------------------------------

REGIONS = {rid: DEMO_REGIONS[rid] for rid in ("us-east-1", "us-west-2", "eu-west-1")}
FAST_SIM = '{ kind = "simulated", ttft_ms = 1, tokens_per_s = 20000 }'
http = http_backend


def world(deployments: dict[str, list[str]], **kw: Any) -> str:
    """Three of the demo regions, active probes on (``tests.worlds.world`` takes the same arguments)."""
    return worlds.world(deployments, regions=REGIONS, probes=True, **kw)


def shared_section(url: str, prefix: str, **kw: object) -> str:
    # A loaded 2-core CI machine can stall a Redis reply past the 250 ms production default; tests that are
    # not about outages must not see one, so their command timeout is generous unless they set it.
    kw = {"timeout_ms": 5000, **kw}
    lines = ["[shared]", f'redis = "{url}"', f'key_prefix = "{prefix}"']
    lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in kw.items()]
    return "\n".join(lines) + "\n"


# --- clients -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one request ended, as the client saw it."""

    status: int = 0
    region: str = ""
    chunks: int = 0  # content events received
    done: bool = False  # saw data: [DONE]
    error: str = ""  # error code (HTTP error body or in-band stream error) or exception name
    headers: dict[str, str] = field(default_factory=dict)
    started: threading.Event = field(default_factory=threading.Event)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and not self.error


def stream_chat(
    base: str,
    out: Outcome,
    *,
    host: str = "localhost",
    model: str = "grok-4",
    max_tokens: int = 32,
    key: str = DEMO_KEY,
    timeout: float = 60.0,
) -> Outcome:
    body = {"model": model, "messages": MSG, "stream": True, "max_tokens": max_tokens}
    headers = {"authorization": f"Bearer {key}", "host": host}
    try:
        with (
            httpx.Client(timeout=timeout) as c,
            c.stream("POST", base + "/v1/chat/completions", json=body, headers=headers) as r,
        ):
            out.status = r.status_code
            out.headers = dict(r.headers)
            out.region = r.headers.get("x-regiongate-region", "")
            if r.status_code != 200:
                r.read()
                out.error = str(orjson.loads(r.content)["error"]["code"])
                return out
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    out.done = True
                    continue
                obj = orjson.loads(data)
                if "error" in obj:
                    out.error = str(obj["error"]["code"])
                elif obj.get("choices"):
                    out.chunks += 1
                    out.started.set()
    except httpx.HTTPError as e:
        out.error = out.error or type(e).__name__
    return out


def in_threads(n: int, fn: Callable[[int], object]) -> list[threading.Thread]:
    threads = [threading.Thread(target=fn, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def join_all(threads: list[threading.Thread], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.1))
    alive = [t for t in threads if t.is_alive()]
    assert not alive, f"{len(alive)} client threads still running after {timeout}s"


def metric(url: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample from a Prometheus text page (first match)."""
    text = httpx.get(url, timeout=5).text
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head != name and not head.startswith(name + "{"):
            continue
        if labels and not all(f'{k}="{v}"' in head for k, v in labels.items()):
            continue
        return float(value)
    return None


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
