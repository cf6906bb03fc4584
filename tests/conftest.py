"""Shared fixtures: real processes on loopback (the gateway, simulated backends), free ports, configs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from regiongate.config import demo_config_text

DEMO_KEY = "rg-test-demo-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, proc: subprocess.Popen[bytes], timeout: float = 90.0, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text() if log else ""
            raise RuntimeError(f"process exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
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
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def output(self) -> str:
        """Everything the process printed so far (stdout and stderr)."""
        return self.log.read_text()


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
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


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``regiongate serve`` with a config text (default: the demo world); returns the process."""
    procs: list[Proc] = []

    def start(
        config: str | None = None,
        *,
        key: str = DEMO_KEY,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        path = tmp_path / f"gateway-{len(procs)}.toml"
        path.write_text(config if config is not None else demo_config_text())
        port = free_port()
        cmd = ["serve", "--config", str(path), "--port", str(port), *(args or [])]
        if "--grpc-port" not in cmd:
            cmd += ["--grpc-port", "0"]
        log = tmp_path / f"gateway-{len(procs)}.log"
        # Each test's gateways keep their control store and receipt keys under its tmp_path.
        base = {"REGIONGATE_DEMO_API_KEY": key, "REGIONGATE_DATA_DIR": str(tmp_path / "data")}
        p = Proc(_spawn(cmd, log, {**base, **(env or {})}), port, log)
        procs.append(p)
        wait_http(p.url + "/healthz", p.proc, log=log)
        return p

    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def start_sim_backend(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``regiongate sim-backend`` (an OpenAI-compatible simulated cluster) on a free port."""
    procs: list[Proc] = []

    def start(region: str, *extra: str) -> Proc:
        port = free_port()
        log = tmp_path / f"sim-{len(procs)}.log"
        p = Proc(_spawn(["sim-backend", "--region", region, "--port", str(port), *extra], log), port, log)
        procs.append(p)
        wait_http(p.url + "/health", p.proc, log=log)
        return p

    yield start
    for p in procs:
        p.stop()
