"""The HTTP/1.1 protocol of every listener: uvicorn's httptools protocol with the limits a public endpoint
needs (``[edge]``). The REST port, the region ports, the admin listener and the one-port listener's
HTTP/1.1 connections (``front.dispatch``) all run it; this is the one home of those limits.

Measured on uvicorn 0.54 / httptools 0.9 before this module: the httptools protocol has no bound on the size
of a request head (a 200 MB header took 66 s and 518 MB of memory, and stalled every other request
meanwhile), and no timer until a first response was sent, so an idle, slow-header or slow-body connection
stayed open for ever. ``timeout_keep_alive`` only covers the wait *between* requests, and
``limit_concurrency`` answers a plain-text 503 without saying what to do. This subclass adds, per
connection, in the order a request arrives:

- ``header_timeout_s``: from the connection's first moment (or a new request's first byte) until its head
  is complete; past it a 408 and the connection is closed (a slowloris client is closed within it);
- ``max_header_bytes``: the request line and headers together; past it a 431 and the connection is closed,
  after reading at most one socket read more than the limit;
- ``body_timeout_s``: from the end of the head to the end of the body; past it the connection is closed
  (the app sees a disconnect);
- ``max_connections``: a connection beyond this many on this worker is answered 503 in the OpenAI error
  shape (``too_many_connections``) and closed, by the app (``REFUSED`` in the scope).

Everything else (parsing, pipelining, flow control, keep-alive) is uvicorn's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from regiongate.asgi import REFUSED
from regiongate.config import EdgeConfig
from regiongate.front.joined import JoinedWrites


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_header_bytes: int = 32 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 4096

    @classmethod
    def of(cls, edge: EdgeConfig) -> EdgeLimits:
        return cls(edge.max_header_bytes, edge.header_timeout_s, edge.body_timeout_s, edge.max_connections)


def close_with(transport: asyncio.Transport, status: bytes, message: bytes) -> None:
    body = b'{"error":{"message":"' + message + b'","type":"invalid_request_error","param":null,"code":null}}'
    transport.write(
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    transport.close()


class EdgeProtocol(HttpToolsProtocol):
    limits: ClassVar[EdgeLimits] = EdgeLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._too_large = False
        self._head_size = 0  # request line and header bytes of the head being parsed

    # --- timers ------------------------------------------------------------------------------------
    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_between_responses(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._in_head and self._idle_between_responses():
            msg = b"The request head did not arrive within %gs." % self.limits.header_timeout_s
            close_with(self.transport, b"408 Request Timeout", msg)
        else:  # a body too slow (the app gets a disconnect), or a pipelined head behind a response
            self.transport.close()

    # --- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, JoinedWrites(transport)))  # head + body: one write
        self._refused = len(self.connections) > self.limits.max_connections
        self._arm(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # A head still incomplete after this read: everything read since it began is head.
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse_head()

    def _refuse_head(self) -> None:
        self._too_large = True
        if self.transport.is_closing():
            return
        if self._idle_between_responses():
            msg = b"The request line and headers exceed %d bytes." % self.limits.max_header_bytes
            close_with(self.transport, b"431 Request Header Fields Too Large", msg)
        else:
            self.transport.close()

    # --- httptools callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0
        if self._timer is None:  # a new request on a kept-alive connection: its head is timed anew
            self._arm(self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._head_size > self.limits.max_header_bytes:  # a whole head that arrived in one read
            self._refuse_head()
            return  # no request cycle: the app never sees it
        if self._refused:
            cast(dict[str, Any], self.scope)[REFUSED] = True
        super().on_headers_complete()
        self._arm(self.limits.body_timeout_s)

    def on_body(self, body: bytes) -> None:
        if not self._too_large:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._too_large:
            return
        super().on_message_complete()
        self._disarm()
        self._in_head = True


def edge_protocol(limits: EdgeLimits) -> type[EdgeProtocol]:
    """The protocol class uvicorn instantiates per connection, with ``limits`` bound."""
    return type("EdgeProtocol", (EdgeProtocol,), {"limits": limits})
