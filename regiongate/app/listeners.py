"""The one-port listener: ``regiongate serve --listen :443 [--tls-cert … --tls-key …]``.

REST over HTTP/1.1 and HTTP/2 and gRPC on one socket and one certificate: uvicorn runs the socket, its
lifespan and its drain (``app/serve.py``), with ``regiongate.front.dispatch.FrontProtocol`` as the
per-connection protocol (ALPN / preface -> HTTP/1.1 or HTTP/2, then per stream by content-type). grpc.aio
runs cleartext on loopback behind it; TLS is terminated once, by uvicorn's SSL context.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from regiongate.front.dispatch import front_protocol, remember_sni
from regiongate.front.h2server import FrontEnv
from regiongate.grpc.server import ConnectionsCollector, GrpcHandle, start_inner
from regiongate.objects.services import StatefulServices


def parse_listen(listen: str) -> tuple[str, int]:
    """``:443`` (every IPv4 address), ``127.0.0.1:8443``, ``[::]:443``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT or :PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _ssl_factory(config: object, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    ctx = default()
    remember_sni(ctx)
    return ctx


async def start_one_port(runtime: StatefulServices, port: int, tls: bool) -> tuple[GrpcHandle, dict[str, Any]]:
    """Start the internal gRPC server and return it with the uvicorn settings (``http=`` protocol class and,
    with TLS, the SSL context factory) that make uvicorn's listener the one port for everything."""
    grpc_server, conns, inner_port = await start_inner(runtime, None, None)  # cleartext: TLS ends in uvicorn
    runtime.metrics.registry.register(ConnectionsCollector(lambda: len(conns)))
    protocol: dict[str, Any] = {"http": front_protocol(FrontEnv(grpc_port=inner_port, conns=conns))}
    if tls:
        protocol["ssl_context_factory"] = _ssl_factory
    return GrpcHandle(port, inner_port, grpc_server, None, conns), protocol
