"""``regiongate serve``: one process or N workers sharing each port through SO_REUSEPORT, each composing
its services once (``app.runtime``) and its listeners over them (``app.sites``), run by one
``app.listeners.Listeners``."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
from dataclasses import dataclass

from regiongate.app.listeners import Listeners, Site
from regiongate.app.logs import register_secrets, setup_logging
from regiongate.app.region_ports import describe, plan_ports, region_listeners
from regiongate.app.reload import install_sighup
from regiongate.app.runtime import Runtime, build_keys, build_runtime
from regiongate.app.scaleout import Replica
from regiongate.app.sites import (
    GrpcSite,
    OnePortSite,
    Tls,
    WebSite,
    parse_listen,
    split_listen,
    uvicorn_config,
)
from regiongate.app.sockets import bind, check_free
from regiongate.asgi import ASGIApp
from regiongate.config import Config
from regiongate.pipeline.services import Readiness
from regiongate.rest.admin_site import ADMIN_PREFIX, AdminSite
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
    listen: str | None = None  # HOST:PORT for REST and gRPC on one port (regiongate.app.sites), or off


def main_listener(opts: ServeOptions) -> tuple[str, int]:
    """Where the main listener binds: ``--listen`` when given (one port for REST and gRPC), else ``--port``."""
    if opts.listen:
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


async def serve_async(cfg: Config, opts: ServeOptions, worker: int = 0) -> None:
    """Compose this process: the services once, every listener given only what it uses, one runner."""
    runtime = build_runtime(cfg, dict(os.environ), replica=Replica(worker, max(opts.workers, 1)))
    install_sighup(runtime, opts.config_path)
    await compose(runtime, cfg, opts, worker).run()


def compose(runtime: Runtime, cfg: Config, opts: ServeOptions, worker: int = 0) -> Listeners:
    """The sites ``opts`` asks for, over one ``runtime``: REST (with its region ports), or REST and gRPC on
    one port; gRPC on a port of its own; the admin listener."""
    reuse = opts.workers > 1
    tls = Tls(opts.tls_cert, opts.tls_key)
    readiness = Readiness()
    rest = RestApp(
        runtime, runtime.mounts, readiness, access_log=opts.access_log, admin_here=opts.admin_listen is None
    )
    host, port = main_listener(opts)
    sock = bind(host, port, reuse_port=reuse)
    # The public REST site starts last: once it answers /healthz, every other listener accepts too.
    sites: list[Site] = []
    if opts.grpc_port and not opts.listen:
        sites.append(GrpcSite(runtime, opts.host, opts.grpc_port, tls, reuse))
    if opts.admin_listen:
        admin_host, admin_port = split_listen(opts.admin_listen)
        admin_sock = bind(admin_host, admin_port, reuse_port=reuse)
        admin = AdminSite(runtime.metrics, dict(runtime.mounts).get(ADMIN_PREFIX))
        sites.append(WebSite("admin", uvicorn_config(admin, cfg, tls), [admin_sock]))
    if opts.listen:
        sites.append(OnePortSite(runtime, _traced(runtime, rest), sock, tls))
    else:
        socks: list[socket.socket] = [sock]
        asgi: ASGIApp = rest
        if opts.region_ports is not None:
            pinned, asgi = region_listeners(cfg, opts.host, opts.region_ports, reuse, rest)
            socks += pinned
        sites.append(WebSite("rest", uvicorn_config(_traced(runtime, asgi), cfg, tls), socks))
    gateway = cfg.gateway
    return Listeners(runtime, sites, readiness, gateway.drain_s, gateway.shutdown_grace_s, worker)


def _traced(runtime: Runtime, app: ASGIApp) -> ASGIApp:
    return app if runtime.tracing is None else runtime.tracing.asgi(app)


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
