"""The listeners ``regiongate serve`` runs, one ``Site`` each (``app.listeners`` starts and drains them):

- ``WebSite``: an ASGI app under uvicorn on sockets bound beforehand (the REST port with its region ports,
  the admin listener), HTTP/1.1 through ``front.edge`` under the ``[edge]`` limits;
- ``GrpcSite``: the xAI gRPC API on its own port (``grpc.server``);
- ``OnePortSite``: REST over HTTP/1.1 and HTTP/2 and gRPC on one port and one certificate (``--listen``):
  uvicorn runs the socket with ``front.dispatch.FrontProtocol`` as the per-connection protocol, which hands
  HTTP/1.1 to the same edge protocol and gRPC streams to grpc.aio in cleartext on loopback behind it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from regiongate.asgi import ASGIApp
from regiongate.config import Config
from regiongate.front.dispatch import front_protocol, remember_sni
from regiongate.front.edge import EdgeLimits, edge_protocol
from regiongate.front.h2server import FrontEnv
from regiongate.grpc.server import ConnectionsCollector, GrpcHandle, start_grpc, start_inner
from regiongate.objects.services import StatefulServices


@dataclass(frozen=True, slots=True)
class Tls:
    cert: str | None = None
    key: str | None = None

    @property
    def on(self) -> bool:
        return bool(self.cert and self.key)


def parse_listen(listen: str) -> tuple[str, int]:
    """``:443`` (every IPv4 address), ``127.0.0.1:8443``, ``[::]:443``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT or :PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` (``--admin-listen``)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--admin-listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]"), int(port)


def uvicorn_config(
    app: ASGIApp, cfg: Config, tls: Tls, http: type[asyncio.Protocol] | None = None
) -> uvicorn.Config:
    """uvicorn's settings for one listener: no lifespan (the runner's), our own signals, the ``[edge]``
    limits through ``front.edge`` unless ``http`` is the one-port listener's protocol."""
    edge = cfg.edge
    extra: dict[str, Any] = {}
    if http is not None and tls.on:
        extra["ssl_context_factory"] = _ssl_factory
    return uvicorn.Config(
        app,
        loop="uvloop",
        http=http or edge_protocol(EdgeLimits.of(edge)),
        timeout_keep_alive=edge.keepalive_idle_s,  # type: ignore[arg-type]  # a float is fine for call_later
        lifespan="off",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(cfg.gateway.shutdown_grace_s)),
        ssl_certfile=tls.cert,
        ssl_keyfile=tls.key,
        server_header=False,
        proxy_headers=False,  # client addresses are trusted by our own rules (gateway.trusted_proxies)
        date_header=False,
        **extra,
    )


def _ssl_factory(config: object, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    ctx = default()
    remember_sni(ctx)
    return ctx


class WebSite:
    """An ASGI app served by uvicorn on sockets bound beforehand (``app.sockets.bind``)."""

    def __init__(self, name: str, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        self.name, self.config, self.sockets = name, config, sockets
        self.server: uvicorn.Server | None = None

    async def start(self) -> dict[str, object]:
        self.config.load()
        server = uvicorn.Server(self.config)
        server.lifespan = self.config.lifespan_class(self.config)  # "off": the runner's lifespan
        await server.startup(sockets=self.sockets)
        self.server = server
        return {self.name: ", ".join(_where(s) for s in self.sockets)}

    async def drain(self, grace_s: float) -> None:
        """uvicorn's own shutdown: stop accepting, ask every connection to finish (HTTP/2: GOAWAY), wait
        for them within ``timeout_graceful_shutdown`` (``shutdown_grace_s``), cancel the rest."""
        if self.server is not None:
            await self.server.shutdown(sockets=self.sockets)


class GrpcSite:
    """The xAI gRPC API on a port of its own."""

    def __init__(self, services: StatefulServices, host: str, port: int, tls: Tls, reuse_port: bool) -> None:
        self.services, self.host, self.port, self.tls, self.reuse_port = services, host, port, tls, reuse_port
        self.handle: GrpcHandle | None = None

    async def start(self) -> dict[str, object]:
        self.handle = await start_grpc(
            self.services, self.host, self.port, self.tls.cert, self.tls.key, reuse_port=self.reuse_port
        )
        return {"grpc": f"{self.host}:{self.handle.port}", "tls": self.tls.on}

    async def drain(self, grace_s: float) -> None:
        if self.handle is not None:
            await self.handle.stop(grace_s)


class OnePortSite:
    """REST and gRPC on one socket: the web site with the front protocol, and grpc.aio behind it."""

    def __init__(self, services: StatefulServices, app: ASGIApp, sock: socket.socket, tls: Tls) -> None:
        self.services, self.app, self.sock, self.tls = services, app, sock, tls
        self.web: WebSite | None = None
        self.handle: GrpcHandle | None = None

    async def start(self) -> dict[str, object]:
        cfg = self.services.config
        grpc_server, conns, inner = await start_inner(self.services, None, None)  # cleartext: TLS ends here
        port = self.sock.getsockname()[1]
        self.handle = GrpcHandle(port, inner, grpc_server, None, conns)
        self.services.metrics.registry.register(ConnectionsCollector(lambda: len(conns)))
        protocol = front_protocol(FrontEnv(grpc_port=inner, conns=conns), EdgeLimits.of(cfg.edge))
        self.web = WebSite("rest", uvicorn_config(self.app, cfg, self.tls, http=protocol), [self.sock])
        where = await self.web.start()
        return {**where, "grpc": "same port", "tls": self.tls.on}

    async def drain(self, grace_s: float) -> None:
        """HTTP/2 connections get GOAWAY (their open streams, gRPC ones too, finish) while grpc.aio lets its
        running calls end."""
        web, handle = self.web, self.handle
        await asyncio.gather(
            web.drain(grace_s) if web is not None else asyncio.sleep(0),
            handle.stop(grace_s) if handle is not None else asyncio.sleep(0),
        )


def _where(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"
