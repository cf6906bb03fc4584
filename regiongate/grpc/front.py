"""The gRPC front: a byte pipe on the public port that learns which host each connection dialled.

grpc.aio does not expose a call's ``:authority`` (nor the TLS server name), yet the endpoint (global, zone,
region) must come from exactly that, as ``Host`` does for REST. So the public port is this small asyncio
listener. For each client connection it opens a loopback connection to the internal grpc.aio server and
pipes bytes both ways; while doing so it reads, from the client's bytes only:

- cleartext h2c: every request header block (HPACK-decoded), so ``:authority`` is known before the request
  is forwarded;
- TLS: the ClientHello's server name (the name the certificate is checked against); the TLS session itself
  is terminated by grpc core inside the internal server, so the front never decrypts anything.

The facts are recorded in ``Connections`` under the local port of the loopback connection, which is what the
servicer sees as ``context.peer()``. HTTP/2 lets one connection carry requests for several hosts; gRPC clients
send one authority per channel (so per connection), and when a connection ever mixes two, the front marks it
and the servicer refuses its new calls instead of guessing. grpc core still does all of HTTP/2, deadlines,
cancellation, keepalive and flow control: the front only forwards bytes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import cast

from regiongate.grpc.sniff import ClientHelloSni, H2Authorities, SniffError

log = logging.getLogger("regiongate.grpc")
HIGH_WATER = 256 * 1024


@dataclass(slots=True)
class ConnInfo:
    """What the front learned about one client connection."""

    client: tuple[str, int] | None  # the real peer (the internal server only sees the front)
    authority: str | None = None  # first :authority (h2c) or the TLS server name; None when not sent
    mixed: str | None = None  # a second, different authority seen on the same connection

    def saw(self, authority: str) -> None:
        """A request on this connection named ``authority``: the first one counts, a different later one
        marks the connection as mixed."""
        if self.authority is None:
            self.authority = authority
        elif authority.lower() != self.authority.lower() and self.mixed is None:
            self.mixed = authority


class Connections:
    """Loopback local port -> ConnInfo, for the connections the front has open to the internal server."""

    def __init__(self) -> None:
        self._by_port: dict[int, ConnInfo] = {}

    def add(self, port: int, info: ConnInfo) -> None:
        self._by_port[port] = info

    def remove(self, port: int, info: ConnInfo) -> None:
        if self._by_port.get(port) is info:  # the port may already belong to a newer connection
            del self._by_port[port]

    def for_peer(self, peer: str) -> ConnInfo | None:
        """The connection behind a grpc peer string such as ``ipv4:127.0.0.1:40122``."""
        _, _, port = peer.rpartition(":")
        return self._by_port.get(int(port)) if port.isdigit() else None

    def __len__(self) -> int:
        return len(self._by_port)


class _Inner(asyncio.Protocol):
    """The loopback side: bytes from the internal grpc server go to the client."""

    def __init__(self, outer: _Outer) -> None:
        self.outer = outer
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        out = self.outer.transport
        if out is not None:
            out.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.outer.inner_lost()

    def pause_writing(self) -> None:
        if self.outer.transport is not None:
            self.outer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.outer.transport is not None:
            self.outer.transport.resume_reading()


class _Outer(asyncio.Protocol):
    """The client side: inspects the client's bytes, then forwards them to the internal server."""

    def __init__(self, front: GrpcFront) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.inner: _Inner | None = None
        self.info = ConnInfo(None)
        self.port = 0
        self.pending: list[bytes] = []  # client bytes that arrived before the loopback connection
        self.h2: H2Authorities | None = None if front.tls else H2Authorities()
        self.hello: ClientHelloSni | None = ClientHelloSni() if front.tls else None
        self.closed = False
        self.connecting: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.transport.set_write_buffer_limits(HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.info.client = (str(peer[0]), int(peer[1])) if peer else None
        self.front.open.add(self)
        if len(self.front.open) > self.front.max_connections:
            log.warning("grpc front refused a connection: at [edge].grpc_max_connections")
            self.close()
            return
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.front.handshake_timeout_s, self._handshake_expired)
        self.connecting = loop.create_task(self._connect())

    def _handshake_expired(self) -> None:
        """A client that has not sent its HTTP/2 preface (h2c) or ClientHello (TLS) by now never will."""
        began = self.h2.started if self.h2 is not None else self.hello is None
        if not began:
            self.close()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            tr, inner = await loop.create_connection(lambda: _Inner(self), "127.0.0.1", self.front.inner_port)
        except OSError as e:
            log.warning("grpc front cannot reach the internal server", extra={"error": str(e)})
            self.close()
            return
        if self.closed:
            tr.close()
            return
        tr.set_write_buffer_limits(HIGH_WATER)
        self.inner = inner
        self.port = int(tr.get_extra_info("sockname")[1])
        self.front.conns.add(self.port, self.info)  # before any request byte reaches the server
        if self.pending:
            tr.write(b"".join(self.pending))
            self.pending.clear()

    def data_received(self, data: bytes) -> None:
        try:
            if self.h2 is not None:
                for authority in self.h2.feed(data):
                    self.info.saw(authority)
            elif self.hello is not None:
                done, name = self.hello.feed(data)
                if done:
                    self.info.authority, self.hello = name, None
        except SniffError as e:
            log.info("grpc front dropped a connection", extra={"reason": str(e)})
            self.close()
            return
        inner = self.inner
        if inner is not None and inner.transport is not None:
            inner.transport.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        inner = self.inner
        if inner is not None and inner.transport is not None and inner.transport.can_write_eof():
            inner.transport.write_eof()
            return True  # keep our write side open for the server's remaining bytes
        return False

    def pause_writing(self) -> None:
        inner = self.inner
        if inner is not None and inner.transport is not None:
            inner.transport.pause_reading()

    def resume_writing(self) -> None:
        inner = self.inner
        if inner is not None and inner.transport is not None:
            inner.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def inner_lost(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        self.front.open.discard(self)
        if self.port:
            self.front.conns.remove(self.port, self.info)
        if self.transport is not None:
            self.transport.close()
        inner = self.inner
        if inner is not None and inner.transport is not None:
            inner.transport.close()
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()


class GrpcFront:
    """The public listener. ``tls`` says whether clients speak TLS (the internal server then terminates it)."""

    def __init__(
        self,
        conns: Connections,
        inner_port: int,
        tls: bool,
        *,
        max_connections: int = 4096,
        handshake_timeout_s: float = 10.0,
    ) -> None:
        self.max_connections = max_connections
        self.handshake_timeout_s = handshake_timeout_s
        self.conns = conns
        self.inner_port = inner_port
        self.tls = tls
        self.open: set[_Outer] = set()
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.server = await loop.create_server(
            lambda: _Outer(self),
            host,
            port,
            family=family,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=2048,
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    def close_all(self) -> None:
        for outer in list(self.open):
            outer.close()
