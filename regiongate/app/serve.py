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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from regiongate.app.edge import EdgeLimits, edge_protocol
from regiongate.app.logs import register_secrets, setup_logging
from regiongate.app.region_ports import describe, plan_ports, region_listeners
from regiongate.app.runtime import Runtime, build_keys, build_runtime
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
    admin_listen: str | None = None  # HOST:PORT: /admin and /metrics there, not on the public port
    listen: str | None = None  # HOST:PORT for REST and gRPC on one port (regiongate.app.listeners), or off


def main_listener(opts: ServeOptions) -> tuple[str, int]:
    """Where the main listener binds: ``--listen`` when given (one port for REST and gRPC), else ``--port``."""
    if opts.listen:
        from regiongate.app.listeners import parse_listen

        return parse_listen(opts.listen)
    return opts.host, opts.port


def ports_to_bind(cfg: Config, opts: ServeOptions) -> list[tuple[int, str, str]]:
    """(port, what listens there, the option that moves it) for every fixed port this run will bind."""
    out = [(opts.port, "REST", "--port"), (opts.grpc_port, "gRPC", "--grpc-port")]
    if opts.listen:
        out = [(main_listener(opts)[1], "REST and gRPC", "--listen")]
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
    its graceful shutdown, which would end the process as killed by it).

    SIGTERM first opens a drain period (``[gateway].drain_s``): ``/readyz`` answers 503 while the
    listeners still accept and serve, so a load balancer probing readiness stops sending before anything
    is refused. Then new connections are refused and in-flight requests get ``shutdown_grace_s``. SIGINT
    (Ctrl-C at a terminal) or a second SIGTERM skips the drain period."""

    def __init__(self, config: uvicorn.Config, app: RestApp, drain_s: float = 0.0) -> None:
        super().__init__(config)
        self.app = app
        self.drain_s = drain_s
        self.on_drain: list[Callable[[], None]] = []
        self._drain_until: float | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        settle_heap()

    def handle_exit(self, sig: int, frame: object) -> None:
        # A signal handler: it only sets state, which on_tick (every 0.1 s on the loop) acts on.
        self.app.ready = False
        if sig == signal.SIGTERM and self.drain_s > 0 and self._drain_until is None and not self.should_exit:
            self._drain_until = time.monotonic() + self.drain_s
            log.info("draining: /readyz answers 503; still serving", extra={"drain_s": self.drain_s})
            return
        self._close(sig, frame)

    def _close(self, sig: int, frame: object) -> None:
        if not self.should_exit:
            log.info("draining: no new connections; in-flight requests may finish", extra={"signal": sig})
        for drain in self.on_drain:
            drain()
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
        self._captured_signals.clear()

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and time.monotonic() >= self._drain_until and not self.should_exit:
            self._close(signal.SIGTERM, None)
        return await super().on_tick(counter)


async def serve_async(cfg: Config, opts: ServeOptions, worker: int = 0) -> None:
    from regiongate.app.reload import install_sighup
    from regiongate.app.scaleout import Replica

    runtime = build_runtime(cfg, dict(os.environ), replica=Replica(worker, max(opts.workers, 1)))
    app = RestApp(runtime, access_log=opts.access_log, admin_here=opts.admin_listen is None)
    install_sighup(runtime, opts.config_path)
    host, port = main_listener(opts)
    sock = bind(host, port, reuse_port=opts.workers > 1)
    grpc = None
    one_port: dict[str, Any] = {}  # uvicorn settings of the one-port listener (regiongate.app.listeners)
    if opts.listen:
        from regiongate.app.listeners import start_one_port

        await runtime.start()  # keys loaded and probes running before the first gRPC call
        grpc, one_port = await start_one_port(runtime, port, tls=bool(opts.tls_cert and opts.tls_key))
    socks: list[socket.socket] = []
    asgi: ASGIApp = app
    if opts.region_ports is not None:
        socks, asgi = region_listeners(cfg, opts.host, opts.region_ports, opts.workers > 1, app)
    ucfg = _uvicorn_config(
        asgi if runtime.tracing is None else runtime.tracing.asgi(asgi),
        cfg, opts, lifespan="on",
        overrides=one_port,
    )
    server = _Server(ucfg, app, cfg.gateway.drain_s)
    if opts.grpc_port and not opts.listen:
        from regiongate.grpc.server import start_grpc

        await runtime.start()  # keys loaded and probes running before the first gRPC call
        grpc = await start_grpc(
            runtime, opts.host, opts.grpc_port, opts.tls_cert, opts.tls_key, reuse_port=opts.workers > 1
        )
    if grpc is not None:
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
        extra={
            "rest": f"{host}:{sock.getsockname()[1]}",
            "grpc": "same port" if opts.listen else opts.grpc_port,
            "worker": worker,
        },
    )
    admin = await _start_admin(runtime, cfg, opts) if opts.admin_listen else None
    try:
        await server.serve(sockets=[sock, *socks])
    finally:
        if admin is not None:
            await admin.shutdown()
        if grpc is not None:
            await grpc.stop(0)  # already drained unless serving ended another way


def _uvicorn_config(
    app: ASGIApp, cfg: Config, opts: ServeOptions, lifespan: str, overrides: dict[str, Any] | None = None
) -> uvicorn.Config:
    """uvicorn's settings; ``overrides`` are the one-port listener's (its ``http=`` protocol class, which
    dispatches HTTP/1.1 and HTTP/2, and its SSL context factory)."""
    edge = cfg.edge
    extra = dict(overrides or {})
    limits = EdgeLimits(
        edge.max_header_bytes, edge.header_timeout_s, edge.body_timeout_s, edge.max_connections
    )
    return uvicorn.Config(
        app,
        loop="uvloop",
        http=extra.pop("http", None) or edge_protocol(limits),
        timeout_keep_alive=edge.keepalive_idle_s,  # type: ignore[arg-type]  # a float is fine for call_later
        lifespan=lifespan,  # type: ignore[arg-type]
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(cfg.gateway.shutdown_grace_s)),
        ssl_certfile=opts.tls_cert,
        ssl_keyfile=opts.tls_key,
        server_header=False,
        proxy_headers=False,  # client addresses are trusted by our own rules (gateway.trusted_proxies)
        date_header=False,
        **extra,
    )


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--admin-listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]"), int(port)


async def _start_admin(runtime: Runtime, cfg: Config, opts: ServeOptions) -> uvicorn.Server:
    """The admin API and /metrics on their own address (no signal handling: the public server's ends it)."""
    from regiongate.rest.admin_site import AdminSite

    assert opts.admin_listen is not None
    host, port = split_listen(opts.admin_listen)
    sock = bind(host, port, reuse_port=opts.workers > 1)
    ucfg = _uvicorn_config(AdminSite(runtime), cfg, opts, lifespan="off")
    ucfg.load()
    server = uvicorn.Server(ucfg)
    server.lifespan = ucfg.lifespan_class(ucfg)
    await server.startup(sockets=[sock])
    log.info("admin listening", extra={"admin": f"{host}:{sock.getsockname()[1]}"})
    return server


def _worker(cfg: Config, opts: ServeOptions, worker: int) -> None:
    setup_logging(opts.log_level)
    register_secrets(cfg, os.environ)
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
    check_free(main_listener(opts)[0], ports_to_bind(cfg, opts))
    _demo_keys(cfg)
    if opts.region_ports is not None:
        print(describe(plan_ports(cfg, opts.region_ports), opts.host), file=sys.stdout, flush=True)
    register_secrets(cfg, os.environ)  # after the demo keys, which land in the environment
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
