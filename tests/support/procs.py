"""Real processes on loopback: the gateway and simulated backends, the ports they listen on, waiting for them."""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

DEMO_KEY = "rg-test-demo-key-0123456789"


_BLOCK = 1500  # ports per test worker, below the kernel's ephemeral range (32768+)
_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_next_port = itertools.count(random.randrange(_BLOCK))


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False  # in use (another session's test, or a server still closing)
        return True


def free_port() -> int:
    """A port for a server a test is about to start. Each xdist worker draws from its own block below the
    ephemeral range, so no other worker, and no outgoing connection, can be handed the same port between
    this check and the server's bind (a port from bind(0) can be, once it is closed)."""
    return free_ports(1)


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free ports from this worker's block (``serve --region-ports``); the
    draw moves past them, so later ``free_port`` calls do not hand them out again."""
    base = 20000 + (_worker % 8) * _BLOCK
    for _ in range(_BLOCK):
        # The same position in the block as ``free_port``'s draws (modulo the block, never wrapping past
        # its end), so the draws after this one start past the run. A modulus of its own let a later
        # ``free_port`` land inside the run once the counter had gone round the block: the gateway's
        # own port then took a region port it had been given (test_quickstart, seen in CI).
        offset = next(_next_port) % _BLOCK
        if offset + n > _BLOCK:
            continue
        first = base + offset
        if all(_free(p) for p in range(first, first + n)):
            for _ in range(n - 1):
                next(_next_port)
            return first
    raise RuntimeError(f"no {n} free ports in a row in {base}..{base + _BLOCK}")


def wait_http(
    url: str, proc: subprocess.Popen[bytes], timeout: float = 90.0, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text() if log else ""
            raise RuntimeError(f"process exited with {proc.returncode}:\n{out}")
        try:
            if (
                httpx.get(url, timeout=1.0).status_code == 200
            ):  # this server's health answer, not any server's
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not come up within {timeout}s")


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # a gateway skips its SIGTERM drain period for SIGINT
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def output(self) -> str:
        """Everything the process printed so far (stdout and stderr)."""
        return self.log.read_text()


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    # Output goes to a file: a pipe nobody reads would block a chatty process once full.
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "regiongate", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )


def spawn_gateway(
    config: str,
    workdir: Path,
    *,
    key: str = DEMO_KEY,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    name: str = "gateway",
    one_port: bool = False,
) -> Proc:
    """Start ``regiongate serve`` with ``config`` in ``workdir`` and wait for /healthz (the caller stops it).
    ``one_port``: REST and gRPC on one port (``--listen``) instead of the REST port (``--port``)."""
    path = workdir / f"{name}.toml"
    path.write_text(config)
    port = free_port()
    where = ["--listen", f"127.0.0.1:{port}"] if one_port else ["--port", str(port)]
    cmd = ["serve", "--config", str(path), *where, *(args or [])]
    if "--grpc-port" not in cmd and not one_port:
        cmd += ["--grpc-port", "0"]
    log = workdir / f"{name}.log"
    # Each gateway keeps its control store and receipt keys under its own directory.
    base = {"REGIONGATE_DEMO_API_KEY": key, "REGIONGATE_DATA_DIR": str(workdir / "data")}
    p = Proc(spawn(cmd, log, {**base, **(env or {})}), port, log)
    try:
        wait_http(p.url + "/healthz", p.proc, log=log)
    except BaseException:
        p.stop()
        raise
    return p


def wait_until(cond: Callable[[], bool], timeout: float = 60.0, step: float = 0.05, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")


class ClosingServer:
    """A backend that accepts each connection and closes it at once, counting them: a failed backend whose
    every attempt the test can see (a port where nothing listens shows no attempt at all)."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def need(ok: bool, why: str) -> None:
    """A test's system requirement (root, iproute2, a binary): skipped without it, a failure under CI."""
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done
