"""Fixtures: a gateway and simulated backends started as real processes on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.capture import CaptureBackend
from regiongate.config import demo_config_text
from tests.support import llama
from tests.support.procs import DEMO_KEY, Proc, free_port, spawn, spawn_gateway, wait_http


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
        text = config if config is not None else demo_config_text()
        p = spawn_gateway(text, tmp_path, key=key, args=args, env=env, name=f"gateway-{len(procs)}")
        procs.append(p)
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


pytest_plugins = ["tests.support.faults", "tests.support.standin"]  # fault-injection upstream, stand-ins


@pytest.fixture(scope="module")
def capture_backend() -> Iterator[CaptureBackend]:
    """A raw HTTP/1.1 backend that records exactly the bytes it receives (``bench.capture``)."""
    backend = CaptureBackend().start()
    yield backend
    backend.stop()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """llama.cpp's llama-server with the tiny random-weight model (tests/support/llama.py), once per test
    process; skipped when it is not built, failed under CI."""
    llama.binary()  # skip / fail first, before writing a model
    tmp = tmp_path_factory.mktemp("llama")
    model = llama.write_model(tmp / "tiny.gguf")
    port = free_port()
    log = tmp / "llama-server.log"
    p = Proc(llama.start(model, port, log), port, log)
    try:
        wait_http(p.url + "/health", p.proc, timeout=60, log=log)  # 503 while the model loads
        yield p
    finally:
        p.stop()
