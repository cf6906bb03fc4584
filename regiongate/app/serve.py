"""Running the listeners: the REST app under uvicorn (uvloop + httptools), one process or N workers
sharing one port through SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn

from regiongate.app.logs import setup_logging
from regiongate.app.region_ports import describe, plan_ports, region_listeners
from regiongate.app.runtime import build_keys, build_runtime
from regiongate.app.sockets import bind, check_free
from regiongate.asgi import ASGIApp
from regiongate.config import Config
from regiongate.rest.app import RestApp

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
    config_path: str | None = None  # re-read on SIGHUP (hot reload)
    pid_file: str | None = None  # for `regiongate reload`
    region_ports: int | None = None  # first of the per-endpoint ports (regiongate.app.region_ports), or off


def ports_to_bind(cfg: Config, opts: ServeOptions) -> list[tuple[int, str, str]]:
    """(port, what listens there, the option that moves it) for every fixed port this run will bind."""
    out = [(opts.port, "REST", "--port"), (opts.grpc_port, "gRPC", "--grpc-port")]
    if opts.region_ports is not None:
        out += [(p.port, f"{p.kind} {p.name}", "--region-ports") for p in plan_ports(cfg, opts.region_ports)]
    return [entry for entry in out if entry[0]]


def settle_heap() -> None:
    """Once started, hide everything alive (modules, config, pools, keys) from the cyclic
    garbage collector. Measured under load, each full collection otherwise walked all of them and paused
    the loop for 26-46 ms, several times a minute, the worst of the p99. Garbage made later is still collected."""
    gc.collect()
    gc.freeze()


class _Server(uvicorn.Server):
    """uvicorn's server, draining on SIGTERM/SIGINT and then exiting 0 (uvicorn re-raises the signal after
    its graceful shutdown, which would end the process as killed by it)."""

    def __init__(self, config: uvicorn.Config, app: RestApp) -> None:
        super().__init__(config)
        self.app = app
        self.on_drain: list[Callable[[], None]] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        settle_heap()

    def handle_exit(self, sig: int, frame: object) -> None:
        if not self.should_exit:
            log.info("draining: no new connections; in-flight requests may finish", extra={"signal": sig})
        self.app.ready = False
        for drain in self.on_drain:
            drain()
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
        self._captured_signals.clear()


async def serve_async(cfg: Config, opts: ServeOptions, worker: int = 0) -> None:
    from regiongate.app.reload import install_sighup
    from regiongate.app.scaleout import Replica

    runtime = build_runtime(cfg, dict(os.environ), replica=Replica(worker, max(opts.workers, 1)))
    app = RestApp(runtime, access_log=opts.access_log)
    install_sighup(runtime, opts.config_path)
    sock = bind(opts.host, opts.port, reuse_port=opts.workers > 1)
    socks: list[socket.socket] = []
    asgi: ASGIApp = app
    if opts.region_ports is not None:
        socks, asgi = region_listeners(cfg, opts.host, opts.region_ports, opts.workers > 1, app)
    ucfg = uvicorn.Config(
        asgi if runtime.tracing is None else runtime.tracing.asgi(asgi),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(cfg.gateway.shutdown_grace_s)),
        ssl_certfile=opts.tls_cert,
        ssl_keyfile=opts.tls_key,
        server_header=False,
        proxy_headers=False,  # client addresses are trusted by our own rules (gateway.trusted_proxies)
        date_header=False,
    )
    server = _Server(ucfg, app)
    grpc = None
    if opts.grpc_port:
        from regiongate.grpc.server import start_grpc

        await runtime.start()  # keys loaded and probes running before the first gRPC call
        grpc = await start_grpc(
            runtime, opts.host, opts.grpc_port, opts.tls_cert, opts.tls_key, reuse_port=opts.workers > 1
        )
        grace = cfg.gateway.shutdown_grace_s
        handle = grpc
        draining: list[asyncio.Task[None]] = []

        def drain_grpc() -> None:  # at SIGTERM, with REST: stop taking calls, let in-flight ones finish
            if not draining:
                draining.append(asyncio.ensure_future(handle.stop(grace)))

        async def grpc_drained() -> None:
            drain_grpc()
            await draining[0]

        server.on_drain.append(drain_grpc)
        runtime.drains.append(grpc_drained)  # the runtime closes only after in-flight gRPC calls end
    log.info(
        "listening",
        extra={"rest": f"{opts.host}:{sock.getsockname()[1]}", "grpc": opts.grpc_port, "worker": worker},
    )
    try:
        await server.serve(sockets=[sock, *socks])
    finally:
        if grpc is not None:
            await grpc.stop(0)  # already drained unless serving ended another way


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
    check_free(opts.host, ports_to_bind(cfg, opts))
    _demo_keys(cfg)
    if opts.region_ports is not None:
        print(describe(plan_ports(cfg, opts.region_ports), opts.host), file=sys.stdout, flush=True)
    if opts.pid_file:
        with open(opts.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
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
    signal.signal(signal.SIGHUP, forward)  # each worker reloads its own runtime
    for p in procs:
        p.join()
    sys.exit(max((p.exitcode or 0) for p in procs))
