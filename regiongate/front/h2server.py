"""The server side of one client HTTP/2 connection: every stream goes where its ``content-type`` says.

``application/grpc`` (and ``application/grpc+proto`` etc.) streams are relayed to grpc.aio
(``grpc_relay``); every other stream is a request to the REST app (``rest_stream``). A stream whose
``:authority`` differs from the TLS server name is refused before it reaches either. Draining sends GOAWAY:
streams already open finish, newer ones are refused, and the connection closes once the last one is done.

The ``[edge]`` limits HTTP/1.1 has apply here too: the header list is capped at ``max_header_bytes`` (the
SETTINGS value h2 enforces), and a connection over ``max_connections`` gets its first request answered
``too_many_connections`` (503 / gRPC UNAVAILABLE, as HTTP/1.1 answers it) with a GOAWAY naming that stream,
so the client opens no more on it and the connection closes once that answer is out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, cast

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from regiongate.asgi import REFUSED, ASGIApp
from regiongate.front.edge import EdgeLimits
from regiongate.front.goaway import DrainableH2Connection, h2_config
from regiongate.front.grpc_relay import GrpcRelay
from regiongate.front.h2side import Headers, Side
from regiongate.front.hosts import misdirected, refusal_message
from regiongate.front.rest_stream import RestStream, scope_for
from regiongate.grpc.front import Connections, ConnInfo
from regiongate.rest.app import too_many_connections

log = logging.getLogger("regiongate.front")
STREAM_WINDOW = 256 * 1024
CONN_WINDOW = 1 << 21
MAX_STREAMS = 256
LINGER_S = 2.0  # after our last frame, how long late client frames are read and dropped before closing


@dataclass(frozen=True, slots=True)
class FrontEnv:
    """What every front connection needs besides the REST app: the internal gRPC server and the registry
    the servicer reads each call's connection from."""

    grpc_port: int  # 0: no gRPC on this port (gRPC streams get UNIMPLEMENTED)
    conns: Connections


def is_grpc(content_type: bytes | None) -> bool:
    return content_type is not None and content_type.startswith(b"application/grpc")


class H2Server(asyncio.Protocol):
    def __init__(
        self,
        env: FrontEnv,
        limits: EdgeLimits,
        app: ASGIApp,
        sni: str | None,
        server_state: Any,
        app_state: Any,
    ) -> None:
        self.env = env
        self.limits = limits
        self.refused = False  # over [edge].max_connections: its first request is answered, then GOAWAY
        self.lingering = False  # half-closed: reading only to drop what still arrives
        self.app = app
        self.sni = sni
        self.server_state = server_state
        self.app_state = app_state
        self.side = Side(DrainableH2Connection(h2_config(client_side=False)))
        self.rest: dict[int, RestStream] = {}
        self.grpc: set[int] = set()
        self.relay: GrpcRelay | None = None
        self.draining: int | None = None  # last stream id announced in our GOAWAY
        self.scheme = "https" if sni is not None else "http"
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None

    # --- asyncio ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = cast(asyncio.Transport, transport)
        self.side.transport = tr
        if tr.get_extra_info("ssl_object") is not None:
            self.scheme = "https"
        peer, sock = tr.get_extra_info("peername"), tr.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if peer else None
        self.server = (str(sock[0]), int(sock[1])) if sock else None
        conn = self.side.conn
        conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_HEADER_LIST_SIZE: self.limits.max_header_bytes,
            },
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(CONN_WINDOW)
        self.side.write()
        connections = self.server_state.connections
        self.refused = len(connections) >= self.limits.max_connections
        connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        side = self.side
        try:
            events = side.conn.receive_data(data)
        except ProtocolError as e:
            log.info("HTTP/2 client broke the protocol", extra={"reason": type(e).__name__})
            side.write_now()  # h2 queued a GOAWAY
            self._close()
            return
        for ev in events:
            if isinstance(ev, RequestReceived):
                self._request(ev.stream_id, ev.headers, ev.stream_ended is not None)
            elif isinstance(ev, DataReceived):
                self._data(ev.stream_id, ev.data, ev.flow_controlled_length)
            elif isinstance(ev, StreamEnded):
                self._ended(ev.stream_id)
            elif isinstance(ev, StreamReset):
                self._reset(ev.stream_id, ev.error_code)
            elif isinstance(ev, WindowUpdated):
                if ev.stream_id:
                    side.flush(ev.stream_id)
                else:
                    side.flush_all()
            elif isinstance(ev, RemoteSettingsChanged):
                side.flush_all()
            elif isinstance(ev, ConnectionTerminated):
                if self.draining is None:
                    self.draining = side.conn.highest_inbound_stream_id
                self._maybe_close()
        side.write()

    def connection_lost(self, exc: Exception | None) -> None:
        for st in self.rest.values():
            st.lost()
        self.rest.clear()
        self.grpc.clear()
        if self.relay is not None:
            self.relay.close()
        self.server_state.connections.discard(self)

    def pause_writing(self) -> None:
        self.side.writable.clear()
        relay = self.relay
        if relay is not None and relay.up.transport is not None:
            relay.up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.side.writable.set()
        relay = self.relay
        if relay is not None and relay.up.transport is not None:
            relay.up.transport.resume_reading()

    def shutdown(self) -> None:
        """Drain (uvicorn calls this on SIGTERM): GOAWAY now, close when the open streams are done."""
        if self.draining is not None:
            self._maybe_close()
            return
        conn = self.side.conn
        self.draining = conn.highest_inbound_stream_id
        conn.close_connection(last_stream_id=self.draining)
        self.side.write()
        self._maybe_close()

    # --- streams ---------------------------------------------------------------------------------------
    def _request(self, sid: int, headers: Headers, ended: bool) -> None:
        if self.draining is not None and sid > self.draining:
            self.side.reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        content_type = authority = None
        for k, v in headers:
            if k == b"content-type":
                content_type = v
            elif k == b":authority" or (k == b"host" and authority is None):
                authority = v
        host = authority.decode("latin-1") if authority is not None else None
        if self.refused:  # this stream is the last: GOAWAY now, the answer below closes the connection
            self.draining = sid
            self.side.conn.close_connection(last_stream_id=sid)
            if is_grpc(content_type):
                self._grpc_refuse(sid, 14, too_many_connections().message, "too_many_connections")
                self._maybe_close()
                return
        elif is_grpc(content_type):
            self._grpc(sid, headers, ended, host)
            return
        scope = scope_for(headers, self.scheme, self.client, self.server, self.app_state)
        if self.refused:
            scope[REFUSED] = True  # the REST app answers it, as it does for HTTP/1.1
        st = RestStream(self.side, sid, scope, ended)
        self.rest[sid] = st
        task = asyncio.get_running_loop().create_task(st.run(self.app))
        st.task = task
        tasks = self.server_state.tasks
        tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            tasks.discard(t)
            self._rest_done(sid)

        task.add_done_callback(done)

    def _grpc(self, sid: int, headers: Headers, ended: bool, host: str | None) -> None:
        if self.sni is not None and misdirected(self.sni, host):
            self._grpc_refuse(sid, 9, refusal_message(self.sni, host), "misdirected_request")
            return
        if not self.env.grpc_port:
            self._grpc_refuse(sid, 12, "gRPC is not served on this port.", "grpc_disabled")
            return
        if self.relay is None:
            info = ConnInfo(self.client, self.sni)
            self.relay = GrpcRelay(self.side, self.env.grpc_port, self.env.conns, info, self._grpc_done)
        self.grpc.add(sid)
        # Over TLS every authority was just checked against the server name, which is the connection's
        # authority; only in cleartext does the first :authority count (and a second one mark it mixed).
        self.relay.open(sid, headers, ended, None if self.sni is not None else host)

    def _grpc_refuse(self, sid: int, status: int, message: str, code: str) -> None:
        """A trailers-only gRPC answer for a call that must not reach the gRPC server at all."""
        head = [
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", str(status).encode()),
            (b"grpc-message", _percent(message)),
            (b"x-regiongate-error-code", code.encode()),
        ]
        with contextlib.suppress(ProtocolError):  # the client reset it first
            self.side.conn.send_headers(sid, head, end_stream=True)
        self.side.write()

    def _data(self, sid: int, data: bytes, flow: int) -> None:
        st = self.rest.get(sid)
        if st is not None:
            st.data(data, flow)
        elif sid in self.grpc and self.relay is not None:
            self.relay.data(sid, data, flow)
        else:
            self.side.ack(sid, flow)  # a refused or finished stream: give the window back

    def _ended(self, sid: int) -> None:
        st = self.rest.get(sid)
        if st is not None:
            st.end()
        elif sid in self.grpc and self.relay is not None:
            self.relay.end(sid)

    def _reset(self, sid: int, code: int) -> None:
        st = self.rest.get(sid)
        if st is not None:
            st.lost()  # this stream's request sees http.disconnect; the other streams go on
        elif sid in self.grpc and self.relay is not None:
            self.relay.reset(sid, code)

    def _rest_done(self, sid: int) -> None:
        self.rest.pop(sid, None)
        self._maybe_close()

    def _grpc_done(self, sid: int) -> None:
        self.grpc.discard(sid)
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.draining is not None and not self.rest and not self.grpc:
            loop = asyncio.get_running_loop()
            loop.call_soon(self._close_when_flushed)

    def _close_when_flushed(self) -> None:
        if self.rest or self.grpc:
            return
        if self.side.queued():  # answers still waiting for the client's window: look again shortly
            asyncio.get_running_loop().call_later(0.05, self._close_when_flushed)
            return
        self.side.write_now()
        self._close()

    def _close(self) -> None:
        tr = self.side.transport
        if tr is not None and not tr.is_closing():
            if tr.can_write_eof() and not self.lingering:
                # Closing with the client's late frames (a SETTINGS ack, a window update) unread makes the
                # kernel reset the connection, which can destroy our last answer before the client reads
                # it: half-close, drop what still comes, close after LINGER_S (or when the client does).
                self.lingering = True
                tr.write_eof()  # asyncio sends what is buffered first
                asyncio.get_running_loop().call_later(LINGER_S, tr.close)
            else:
                tr.close()  # asyncio sends what is buffered first
        # Nothing more to wait for: a drain need not sit out the TLS close_notify exchange with the peer.
        self.server_state.connections.discard(self)


def _percent(message: str) -> bytes:
    """grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2, "Responses")."""
    out = bytearray()
    for b in message.encode("utf-8"):
        out += bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
    return bytes(out)
