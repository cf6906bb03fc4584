"""Fixtures: a gateway and simulated backends started as real processes on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from regiongate.config import demo_config_text
from tests.support.procs import DEMO_KEY, Proc, free_port, spawn, wait_http


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
        p = Proc(spawn(cmd, log, {**base, **(env or {})}), port, log)
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
        p = Proc(spawn(["sim-backend", "--region", region, "--port", str(port), *extra], log), port, log)
        procs.append(p)
        wait_http(p.url + "/health", p.proc, log=log)
        return p

    yield start
    for p in procs:
        p.stop()


pytest_plugins = ["tests.support.faults"]  # the fault-injection upstream's fixtures
