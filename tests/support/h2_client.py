"""A small blocking HTTP/2 client over one socket (h2's state machine), for tests that must see frames:
several streams on one connection, a reset of one of them, flow-control windows, GOAWAY."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes, Settings

from regiongate.front.goaway import DrainableH2Connection


@dataclass
class Reply:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    ended: bool = False
    reset: int | None = None
    chunks: int = 0  # DATA frames received

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2Client:
    def __init__(
        self,
        port: int,
        *,
        sni: str | None = None,
        ctx: ssl.SSLContext | None = None,
        window: int = 65535,
        auto_ack: bool = True,
    ) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if ctx is not None:
            ctx.set_alpn_protocols(["h2"])
            self.sock: socket.socket = ctx.wrap_socket(raw, server_hostname=sni)
            assert isinstance(self.sock, ssl.SSLSocket)
            assert self.sock.selected_alpn_protocol() == "h2"
        else:
            self.sock = raw
        self.conn = DrainableH2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.local_settings = Settings(client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.initiate_connection()
        self.auto_ack = auto_ack
        self.replies: dict[int, Reply] = {}
        self.goaway: ConnectionTerminated | None = None
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        path: str,
        authority: str,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        method: str = "POST",
        end: bool = True,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        head = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            *(headers or []),
        ]
        self.conn.send_headers(sid, head, end_stream=end and not body)
        if body:
            self.conn.send_data(sid, body, end_stream=end)
        self.replies[sid] = Reply()
        self.flush()
        return sid

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid, error_code=8)  # CANCEL
        self.flush()

    def ack(self, sid: int, n: int) -> None:
        self.conn.acknowledge_received_data(n, sid)
        self.flush()

    def pump(self, until: Callable[[], bool], timeout: float = 30.0) -> None:
        """Read and handle frames until ``until()`` holds (or fail after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while not until():
            if self.closed:
                raise ConnectionError("server closed the connection")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("condition not met in time")
            self.sock.settimeout(min(left, 1.0))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                self.closed = True
                continue
            for ev in self.conn.receive_data(data):
                self._event(ev)
            self.flush()

    def _event(self, ev: object) -> None:
        if isinstance(ev, ResponseReceived):
            self.replies[ev.stream_id].headers = dict(ev.headers)
        elif isinstance(ev, DataReceived):
            r = self.replies[ev.stream_id]
            r.data += ev.data
            r.chunks += 1
            if self.auto_ack:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, TrailersReceived):
            self.replies[ev.stream_id].trailers = dict(ev.headers)
        elif isinstance(ev, StreamEnded):
            self.replies[ev.stream_id].ended = True
        elif isinstance(ev, StreamReset):
            self.replies[ev.stream_id].reset = ev.error_code
        elif isinstance(ev, ConnectionTerminated):
            self.goaway = ev

    def close(self) -> None:
        self.sock.close()


def grpc_frame(message: bytes) -> bytes:
    """One length-prefixed gRPC message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message
