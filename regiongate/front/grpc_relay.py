"""gRPC streams of one client HTTP/2 connection, relayed frame for frame to grpc.aio on loopback.

grpc.aio stays the gRPC server: it reads ``grpc-timeout`` (deadlines), ``grpc-encoding`` (compression), every
metadata header including ``-bin`` ones, and sees a client's RST_STREAM as a cancellation, because headers,
message bytes, trailers and resets are passed through unchanged, stream by stream. What the relay owns is
HTTP/2 hop state only: stream ids, HPACK, and flow control, which it keeps end to end by returning window
to one side only once the bytes were accepted by the other. PINGs are answered per hop (grpc core's
keepalive pings reach the relay, the client's reach us); grpc core's ping policing therefore applies to the
relay, which never pings it.

All of one client connection's gRPC streams share one loopback connection, so the servicer still finds the
client connection behind ``context.peer()`` in ``Connections`` (see ``regiongate/grpc/front.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from regiongate.front.goaway import DrainableH2Connection, h2_config
from regiongate.front.h2side import Headers, Side
from regiongate.grpc.front import Connections, ConnInfo

log = logging.getLogger("regiongate.front")
STREAM_WINDOW = 1 << 20  # loopback: large windows cost nothing and keep a fast stream from stalling
CONN_WINDOW = 1 << 22


class _Loopback(asyncio.Protocol):
    def __init__(self, relay: GrpcRelay) -> None:
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay.started(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.relay.from_upstream(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.upstream_lost()

    def pause_writing(self) -> None:
        self.relay.client.writable.clear()
        if self.relay.client.transport is not None:
            self.relay.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.relay.client.writable.set()
        if self.relay.client.transport is not None:
            self.relay.client.transport.resume_reading()


class GrpcRelay:
    def __init__(
        self,
        client: Side,
        inner_port: int,
        conns: Connections,
        info: ConnInfo,
        closed: Callable[[int], None],
    ) -> None:
        self.client = client
        self.inner_port = inner_port
        self.conns = conns
        self.info = info
        self.closed = closed  # told when a client stream is done with
        self.up = Side(DrainableH2Connection(h2_config(client_side=True)))
        self.port = 0
        self.c2u: dict[int, int] = {}
        self.u2c: dict[int, int] = {}
        self.backlog: list[Callable[[], None]] | None = None  # client events while the loopback connects
        self.connecting: asyncio.Task[None] | None = None
        self.refusing_above: int | None = None  # the loopback server sent GOAWAY
        self.ready = False  # the loopback connection is up and its preface sent

    # --- client events -------------------------------------------------------------------------------
    def open(self, sid: int, headers: Headers, ended: bool, authority: str | None) -> None:
        if authority is not None:
            self.info.saw(authority)
        if not self.ready:
            if self.backlog is None:
                self.backlog = []
                self.connecting = asyncio.get_running_loop().create_task(self._connect())
            self.backlog.append(lambda: self._open(sid, headers, ended))
            return
        self._open(sid, headers, ended)

    def data(self, sid: int, data: bytes, flow: int) -> None:
        """Request bytes; the end of the request comes as ``end`` (h2's StreamEnded), never here."""
        self.client.ack(sid, flow - len(data))  # padding: nobody downstream will consume it
        if self.backlog is not None:
            self.backlog.append(lambda: self._data(sid, data, False))
            return
        self._data(sid, data, False)

    def end(self, sid: int) -> None:
        if self.backlog is not None:
            self.backlog.append(lambda: self._data(sid, b"", True))
            return
        self._data(sid, b"", True)

    def reset(self, sid: int, code: int) -> None:
        """The client reset ``sid``: grpc core sees a cancellation."""
        if self.backlog is not None:
            self.backlog.append(lambda: self.reset(sid, code))
            return
        usid = self.c2u.pop(sid, None)
        self.client.forget(sid)
        if usid is not None:
            self.u2c.pop(usid, None)
            self.up.reset(usid, code or ErrorCodes.CANCEL)
        self.closed(sid)

    def _open(self, sid: int, headers: Headers, ended: bool) -> None:
        up = self.up
        if self.refusing_above is not None or up.transport is None:
            self.client.reset(sid, ErrorCodes.REFUSED_STREAM)  # the client may retry on a new connection
            self.closed(sid)
            return
        usid = up.conn.get_next_available_stream_id()
        self.c2u[sid], self.u2c[usid] = usid, sid
        up.conn.send_headers(usid, headers, end_stream=ended)
        client = self.client
        # Window goes back to the client only as its bytes leave for grpc core, and vice versa.
        up.out(usid).on_sent = lambda n: client.ack(sid, n)
        client.out(sid).on_sent = lambda n: up.ack(usid, n)
        up.write()

    def _data(self, sid: int, data: bytes, ended: bool) -> None:
        usid = self.c2u.get(sid)
        if usid is not None:
            self.up.queue(usid, data, end=ended)
        elif data:
            self.client.ack(sid, len(data))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _Loopback(self), "127.0.0.1", self.inner_port)
        except OSError as e:
            log.warning("front cannot reach the internal gRPC server", extra={"error": str(e)})
            self.refusing_above = 0  # every open waiting in the backlog is refused
        self.ready = True
        backlog, self.backlog = self.backlog or [], None
        for run in backlog:
            run()

    def started(self, tr: asyncio.Transport) -> None:
        """The loopback connection is up: register it and send our preface before anything else (grpc core
        sends its SETTINGS at once, and h2 answers them)."""
        up = self.up
        up.transport = tr
        self.port = int(tr.get_extra_info("sockname")[1])
        self.conns.add(self.port, self.info)  # before any request byte reaches the server
        up.conn.local_settings = Settings(
            client=True,
            initial_values={SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW, SettingCodes.ENABLE_PUSH: 0},
        )
        up.conn.initiate_connection()
        up.conn.increment_flow_control_window(CONN_WINDOW)
        up.write()

    # --- upstream (grpc.aio) events -----------------------------------------------------------------------
    def from_upstream(self, data: bytes) -> None:
        up, client = self.up, self.client
        try:
            events = up.conn.receive_data(data)
        except ProtocolError as e:
            log.warning("internal gRPC server broke HTTP/2", extra={"error": repr(e)}, exc_info=True)
            if up.transport is not None:
                up.transport.close()
            return
        for ev in events:
            if isinstance(ev, DataReceived):
                sid = self.u2c.get(ev.stream_id)
                up.ack(ev.stream_id, ev.flow_controlled_length - len(ev.data))
                if sid is None:
                    up.ack(ev.stream_id, len(ev.data))
                else:
                    client.queue(sid, ev.data)
            elif isinstance(ev, ResponseReceived):
                sid = self.u2c.get(ev.stream_id)
                if sid is not None:
                    ended = ev.stream_ended is not None  # trailers-only: grpc-status in the only HEADERS
                    self._send_headers(sid, ev.headers, ended)
                    if ended:
                        self._done(ev.stream_id)
            elif isinstance(ev, TrailersReceived):
                sid = self.u2c.get(ev.stream_id)
                if sid is not None:
                    client.queue(sid, trailers=list(ev.headers))
                    self._done(ev.stream_id)
            elif isinstance(ev, StreamEnded):
                sid = self.u2c.get(ev.stream_id)
                if sid is not None:  # DATA with END_STREAM (not the gRPC way, but valid HTTP/2)
                    client.queue(sid, end=True)
                    self._done(ev.stream_id)
            elif isinstance(ev, StreamReset):
                sid = self.u2c.pop(ev.stream_id, None)
                if sid is not None:
                    self.c2u.pop(sid, None)
                    client.reset(sid, ev.error_code or ErrorCodes.CANCEL)
                    self.closed(sid)
            elif isinstance(ev, WindowUpdated):
                if ev.stream_id:
                    up.flush(ev.stream_id)
                else:
                    up.flush_all()
            elif isinstance(ev, RemoteSettingsChanged):
                up.flush_all()
            elif isinstance(ev, ConnectionTerminated):
                self._upstream_goaway(ev.last_stream_id or 0)
        up.write()

    def _send_headers(self, sid: int, headers: Headers, ended: bool) -> None:
        try:
            self.client.conn.send_headers(sid, list(headers), end_stream=ended)
        except ProtocolError:
            return
        self.client.write()

    def _done(self, usid: int) -> None:
        """The response on ``usid`` is complete (its last bytes may still be queued toward the client)."""
        sid = self.u2c.pop(usid, None)
        if sid is not None:
            self.c2u.pop(sid, None)
            self.up.forget(usid)
            self.closed(sid)

    def _upstream_goaway(self, last: int) -> None:
        """grpc.aio is stopping: calls it accepted finish, the others are refused (the client may retry)."""
        self.refusing_above = last
        for usid in [u for u in self.u2c if u > last]:
            sid = self.u2c.pop(usid)
            self.c2u.pop(sid, None)
            self.client.reset(sid, ErrorCodes.REFUSED_STREAM)
            self.closed(sid)

    def upstream_lost(self) -> None:
        if self.port:
            self.conns.remove(self.port, self.info)
        for sid in list(self.u2c.values()):
            self.client.reset(sid, ErrorCodes.INTERNAL_ERROR)
            self.closed(sid)
        self.u2c.clear()
        self.c2u.clear()
        self.refusing_above = 0

    def close(self) -> None:
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()
        if self.up.transport is not None:
            self.up.transport.close()

    @property
    def active(self) -> int:
        return len(self.c2u)
