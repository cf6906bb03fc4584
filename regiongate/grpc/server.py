"""Starting and stopping the gRPC listener: the public front plus the internal grpc.aio server behind it.

    client --TCP/TLS--> front (public host:port) --loopback TCP--> grpc.aio (127.0.0.1:<random>)

With ``--tls-cert/--tls-key`` the internal server terminates TLS (grpc core), and the front reads only the
ClientHello's server name; without them both hops are cleartext h2c and the front reads ``:authority``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from regiongate.config import EdgeConfig
from regiongate.grpc.front import Connections, GrpcFront
from regiongate.grpc.servicer import XaiServices, service_handlers
from regiongate.objects.services import StatefulServices

log = logging.getLogger("regiongate.grpc")
MIB = 1024 * 1024


def server_options(edge: EdgeConfig, max_message: int) -> list[tuple[str, Any]]:
    """PROTOCOL.md 1.6: accept the SDK's 30 s keepalive pings (also idle) and its 20 MiB messages; the
    rest are the [edge] limits (metadata size, streams per connection, idle connections)."""
    return [
        ("grpc.max_receive_message_length", max_message),
        ("grpc.max_send_message_length", max_message),
        ("grpc.max_metadata_size", edge.grpc_max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", edge.grpc_max_metadata_bytes),
        ("grpc.max_concurrent_streams", edge.grpc_max_concurrent_streams),
        ("grpc.max_connection_idle_ms", int(edge.grpc_idle_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_time_ms", int(edge.grpc_keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(edge.grpc_keepalive_timeout_s * 1000)),
        ("grpc.so_reuseport", 0),
    ]


class ConnectionsCollector(Collector):
    """Open gRPC client connections, read when /metrics is scraped."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "regiongate_grpc_connections", "Open gRPC client connections", value=self.count()
        )


def _credentials(cert: str, key: str) -> Any:
    """Read once at start-up (a blocking read is fine here)."""
    return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])


class ByPath:
    """Every method of every service xai-sdk ships, found by its full path in one dict lookup (a
    ``grpc.GenericRpcHandler``: grpc checks for ``service``, not the class).

    Not ``add_registered_method_handlers``: grpc.aio keeps one pending request task per registered method
    and, for every call it accepts, waits on all of them (``asyncio.wait``): with xai-sdk's 52 methods, 52
    done-callbacks added and removed per call. Nor one generic handler per service, which grpc.aio asks in
    turn until one knows the method."""

    def __init__(self, services: dict[str, dict[str, Any]]) -> None:
        self.by_path = {f"/{svc}/{name}": h for svc, methods in services.items() for name, h in methods.items()}

    def service(self, handler_call_details: Any) -> Any:
        return self.by_path.get(handler_call_details.method)


@dataclass
class GrpcHandle:
    port: int  # the public port
    inner_port: int
    server: Any  # grpc.aio.Server
    front: GrpcFront | None  # None on the one-port listener (regiongate/front/), which relays streams itself
    conns: Connections

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, let running calls finish for ``grace`` seconds, then drop every connection."""
        if self.front is not None:
            await self.front.stop_accepting()
        await self.server.stop(grace)
        if self.front is not None:
            self.front.close_all()


async def start_inner(
    runtime: StatefulServices, tls_cert: str | None, tls_key: str | None
) -> tuple[Any, Connections, int]:
    """The grpc.aio server on ``127.0.0.1:<random>``: (server, connection registry, port). With a certificate
    it terminates TLS itself (the separate-port front then only reads the ClientHello)."""
    cfg = runtime.config
    max_message = cfg.edge.grpc_max_message_bytes or max(20 * MIB, cfg.gateway.max_body_bytes)
    tracing = runtime.tracing
    server = grpc.aio.server(
        options=server_options(cfg.edge, max_message),
        interceptors=tracing.grpc_interceptors() if tracing else None,
    )
    conns = Connections()
    services = XaiServices(runtime, conns)
    server.add_generic_rpc_handlers((ByPath(service_handlers(services)),))
    if tls_cert and tls_key:
        inner_port = server.add_secure_port("127.0.0.1:0", _credentials(tls_cert, tls_key))
    else:
        inner_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, conns, inner_port


async def start_grpc(
    runtime: StatefulServices,
    host: str,
    port: int,
    tls_cert: str | None,
    tls_key: str | None,
    *,
    reuse_port: bool = False,
) -> GrpcHandle:
    """Serve the xAI gRPC API on ``host:port`` (0 picks a free port; see ``GrpcHandle.port``)."""
    server, conns, inner_port = await start_inner(runtime, tls_cert, tls_key)
    tls = bool(tls_cert and tls_key)
    cfg = runtime.config
    front = GrpcFront(
        conns,
        inner_port,
        tls,
        max_connections=cfg.edge.grpc_max_connections,
        handshake_timeout_s=cfg.edge.header_timeout_s,
    )
    try:
        public = await front.start(host, port, reuse_port=reuse_port)
    except BaseException:
        await server.stop(None)
        raise
    runtime.metrics.registry.register(ConnectionsCollector(lambda: len(front.open)))
    log.info("grpc listening", extra={"grpc": f"{host}:{public}", "tls": tls})
    return GrpcHandle(public, inner_port, server, front, conns)
