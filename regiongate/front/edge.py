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

The request cycle is ours too (``EdgeCycle``, uvicorn's ``RequestResponseCycle`` contract): the ASGI glue
measured at most of the listener's per-request CPU (uvicorn's parsing, ``data_received``, a tenth of it), so
the scope is built in one dict, a body already complete is handed over without waiting on an event, the
response headers are checked with two regex searches instead of two per header, and a response whose length is
known leaves head and body in one ``write``. Everything else (parsing, pipelining, flow control, keep-alive,
WebSocket upgrades) is uvicorn's.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from regiongate.asgi import REFUSED
from regiongate.config import EdgeConfig
from regiongate.front.joined import JoinedWrites
from regiongate.upstream.deadline import LazyDeadline


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


_NAME_OK = bytes(b for b in range(256) if not HEADER_RE.match(bytes([b])))
_VALUE_OK = bytes(b for b in range(256) if not HEADER_VALUE_RE.match(bytes([b])))


class EdgeCycle(RequestResponseCycle):
    """One request and its response: uvicorn's cycle (``run_asgi``, the 500 answer, the attributes the
    protocol reads) with a cheaper ``receive`` and ``send``. The head of a response with a length waits for
    its body and both leave in one write; a chunked head is written at once (a stream's first event may be
    far off)."""

    def __init__(self, proto: EdgeProtocol, scope: dict[str, Any], keep_alive: bool) -> None:
        self.scope = scope  # type: ignore[assignment]
        self.transport: JoinedWrites = cast(JoinedWrites, proto.transport)  # type: ignore[assignment]
        self.flow = proto.flow
        self.logger = proto.logger
        self.access_logger = proto.access_logger
        self.access_log = proto.access_log
        self.default_headers = proto.server_state.default_headers
        self.message_event = asyncio.Event()
        self.on_response = proto.on_response_complete
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = proto.expect_100_continue
        self.chunks: list[bytes] = []  # request body received and not yet handed to the app
        self.size = 0
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding: bool | None = None
        self.expected_content_length = 0
        self.head: bytes | None = None  # a response head held back for its body

    async def receive(self) -> Any:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            event = self.message_event
            if not event.is_set():  # nothing new yet: read on, and wait
                self.flow.resume_reading()
                await event.wait()
            event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        chunks = self.chunks
        body = b"" if not chunks else chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.size = 0
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self.response_started = True
            self.waiting_for_100_continue = False
            self._start(message["status"], message.get("headers", ()))
            return
        if self.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
            data = b""
        elif self.chunked_encoding:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more:
                data += b"0\r\n\r\n"
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            data = body
        if self.head is not None:
            data = self.head + data
            self.head = None
        if data:
            if more:
                self.transport.write(data)
            else:  # the whole response or its end: nothing of this iteration can follow it
                self.transport.write_now(data)
        if not more:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _start(self, status: int, headers: Any) -> None:
        if self.default_headers:
            headers = [*self.default_headers, *headers]
        scope = self.scope
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(scope),
                scope["method"],
                get_path_with_query_string(scope),
                scope["http_version"],
                status,
            )
        content = [STATUS_LINE[status]]
        names: list[bytes] = []
        values: list[bytes] = []
        closing = False
        for name, value in headers:
            name = name.lower()
            names.append(name)
            values.append(value)
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection" and b"close" in [t.lower().strip() for t in value.split(b",")]:
                self.keep_alive = False
                closing = True
            content.extend((name, b": ", value, b"\r\n"))
        # uvicorn's two patterns, as byte sets: deleting every allowed byte leaves the refused ones. One pass
        # over all the names and one over all the values (a regex per header was 10% of this layer).
        if b"".join(names).translate(None, _NAME_OK):
            raise RuntimeError("Invalid HTTP header name.")
        if b"".join(values).translate(None, _VALUE_OK):
            raise RuntimeError("Invalid HTTP header value.")
        if not self.keep_alive and not closing:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        head = b"".join(content)
        if self.chunked_encoding:
            self.transport.write(head)
        else:
            self.head = head


class EdgeProtocol(HttpToolsProtocol):
    limits: ClassVar[EdgeLimits] = EdgeLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._deadline = LazyDeadline(self.loop, self._expired)
        self._idle = False  # the deadline is the keep-alive one
        self._refused = False
        self._too_large = False
        self._head_size = 0  # request line and header bytes of the head being parsed

    # --- timers ------------------------------------------------------------------------------------
    # One deadline per connection (the head, the body, or the idle wait between requests: uvicorn's
    # keep-alive timeout) on one lazily moved loop timer (``LazyDeadline``): a request then costs no
    # timer of its own instead of three scheduled and three cancelled.
    def _arm(self, delay: float, idle: bool = False) -> None:
        self._deadline.set(self.loop.time() + delay)
        self._idle = idle

    def _disarm(self) -> None:
        self._deadline.at = None

    def _unset_keepalive_if_required(self) -> None:  # uvicorn calls it on every read
        if self._idle:
            self._deadline.at = None
            self._idle = False

    def _expired(self) -> None:
        if self.transport.is_closing():
            return
        if self._idle:  # kept alive and nothing sent: closed as uvicorn's keep-alive timeout does
            self.transport.close()
        elif self._in_head and self._idle_between_responses():
            msg = b"The request head did not arrive within %gs." % self.limits.header_timeout_s
            close_with(self.transport, b"408 Request Timeout", msg)
        else:  # a body too slow (the app gets a disconnect), or a pipelined head behind a response
            self.transport.close()

    def _idle_between_responses(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def on_response_complete(self) -> None:
        """uvicorn's, with the idle wait on the connection's one timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # the next pipelined request, in order
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._deadline.at is None:  # else the next head has begun and its own deadline stands
            self._arm(self.timeout_keep_alive, idle=True)

    # --- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, JoinedWrites(transport)))  # head + body: one write
        self._refused = len(self.connections) > self.limits.max_connections
        self._arm(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.close()
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
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._head_size = 0
        if self._deadline.at is None:  # a new request on a kept-alive connection: its head is timed anew
            self._arm(self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._head_size > self.limits.max_header_bytes:  # a whole head that arrived in one read
            self._refuse_head()
            return  # no request cycle: the app never sees it
        parser = self.parser
        version = parser.get_http_version()
        url = httptools.parse_url(self.url)
        raw_path: bytes = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        if self.root_path:
            path = self.root_path + path
            raw_path = self.root_path.encode("ascii") + raw_path
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
            "method": parser.get_method().decode("ascii"),
            "path": path,
            "raw_path": raw_path,
            "query_string": url.query or b"",
        }
        if self._refused:
            scope[REFUSED] = True
        self.scope = scope  # type: ignore[assignment]
        self._arm(self.limits.body_timeout_s)
        if parser.should_upgrade() and self._should_upgrade():
            return  # a WebSocket: uvicorn's upgrade takes the connection over
        previous = self.cycle
        self.cycle = cycle = EdgeCycle(self, scope, version != "1.0" and parser.should_keep_alive())
        if previous is None or previous.response_complete:
            self._start_asgi_task(cycle, self.app)
        else:  # pipelined behind a response still running: queued, in order
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        cycle = cast(EdgeCycle, self.cycle)
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.chunks.append(body)
        cycle.size += len(body)
        if cycle.size > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        if self._too_large:
            return
        super().on_message_complete()
        self._disarm()
        self._in_head = True


def edge_protocol(limits: EdgeLimits) -> type[EdgeProtocol]:
    """The protocol class uvicorn instantiates per connection, with ``limits`` bound."""
    return type("EdgeProtocol", (EdgeProtocol,), {"limits": limits})
