"""Running the listeners: the REST app under uvicorn (uvloop + httptools), one process or N workers
sharing one port through SO_REUSEPORT."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
from dataclasses import dataclass

import uvicorn

from regiongate.config import Config
from regiongate.logs import setup_logging
from regiongate.rest.app import RestApp
from regiongate.runtime import build_keys, build_runtime

log = logging.getLogger("regiongate")


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 0
    workers: int = 1
    access_log: bool = False
    log_level: str = "info"
    tls_cert: str | None = None
    tls_key: str | None = None


def bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def serve_async(cfg: Config, opts: ServeOptions, worker: int = 0) -> None:
    runtime = build_runtime(cfg, dict(os.environ))
    app = RestApp(runtime, access_log=opts.access_log)
    sock = bind(opts.host, opts.port, reuse_port=opts.workers > 1)
    ucfg = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=30,
        ssl_certfile=opts.tls_cert,
        ssl_keyfile=opts.tls_key,
        server_header=False,
        date_header=False,
    )
    server = uvicorn.Server(ucfg)
    grpc = None
    if opts.grpc_port:
        from regiongate.grpc.server import start_grpc

        grpc = await start_grpc(runtime, opts.host, opts.grpc_port, opts.tls_cert, opts.tls_key)
    log.info(
        "listening",
        extra={"rest": f"{opts.host}:{sock.getsockname()[1]}", "grpc": opts.grpc_port, "worker": worker},
    )
    try:
        await server.serve(sockets=[sock])
    finally:
        if grpc is not None:
            await grpc.stop(5)


def _worker(cfg: Config, opts: ServeOptions, worker: int) -> None:
    setup_logging(opts.log_level)
    import uvloop

    uvloop.run(serve_async(cfg, opts, worker))


def _demo_keys(cfg: Config) -> None:
    """Generate missing demo keys once, before any worker starts, so every worker accepts the same key."""
    _keys, generated = build_keys(cfg)
    for team, key in generated.items():
        env = next((k.env for t in cfg.teams if t.name == team for k in t.keys if k.env), None)
        if env:
            os.environ[env] = key
        # Shown once, on the terminal, never through the logger.
        print(f"regiongate: API key for team '{team}': {key}", file=sys.stdout, flush=True)


def serve(cfg: Config, opts: ServeOptions) -> None:
    setup_logging(opts.log_level)
    _demo_keys(cfg)
    if opts.workers <= 1:
        import uvloop

        uvloop.run(serve_async(cfg, opts))
        return
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(cfg, opts, i), daemon=False) for i in range(opts.workers)]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    sys.exit(max((p.exitcode or 0) for p in procs))
