"""One end of an HTTP/2 connection we hold (h2's state machine plus the socket), with per-stream output
queues that respect the peer's flow-control windows.

Both the client-facing connection and the loopback connection to grpc.aio are a ``Side``. Data for a
stream is queued; ``flush`` sends what the stream and connection windows allow and sends the rest when
the peer opens its window (``WindowUpdated``). ``on_sent`` tells the producer how many bytes left, so a
relay can hand flow-control credit back to its own peer only once the bytes are gone: the two hops'
windows stay coupled end to end, as grpc core expects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class _Out:
    data: bytearray = field(default_factory=bytearray)
    end: bool = False  # END_STREAM after the queued data
    trailers: Headers | None = None  # sent (with END_STREAM) after the queued data
    on_sent: Callable[[int], None] | None = None
    drained: asyncio.Event | None = None  # set whenever the queue is empty


class Side:
    """An ``H2Connection`` bound to a transport. ``write`` pushes h2's pending bytes to the socket."""

    def __init__(self, conn: H2Connection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self._out: dict[int, _Out] = {}
        self.writable = asyncio.Event()  # cleared while the socket's buffer is over its high-water mark
        self.writable.set()
        self._write_due = False

    def write(self) -> None:
        """Send h2's pending bytes, once per loop iteration: the events of one read (and the relay's answers to
        them) become one socket write instead of one per frame, which profiling showed as a large share."""
        if not self._write_due:
            self._write_due = True
            asyncio.get_running_loop().call_soon(self.write_now)

    def write_now(self) -> None:
        self._write_due = False
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def out(self, sid: int) -> _Out:
        o = self._out.get(sid)
        if o is None:
            o = self._out[sid] = _Out()
        return o

    def queue(self, sid: int, data: bytes = b"", end: bool = False, trailers: Headers | None = None) -> None:
        o = self.out(sid)
        if data:
            o.data += data
        o.end = o.end or end
        if trailers is not None:
            o.trailers = trailers
        self.flush(sid)

    def queued(self) -> bool:
        """Whether any stream still has bytes waiting for a window."""
        return any(o.data or o.end or o.trailers is not None for o in self._out.values())

    def pending(self, sid: int) -> int:
        o = self._out.get(sid)
        return len(o.data) if o is not None else 0

    def flush(self, sid: int) -> None:
        o = self._out.get(sid)
        if o is None:
            return
        conn = self.conn
        try:
            while o.data:
                n = min(len(o.data), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if n <= 0:
                    break
                chunk = bytes(o.data[:n])
                del o.data[:n]
                last = not o.data and o.end and o.trailers is None
                conn.send_data(sid, chunk, end_stream=last)
                if last:
                    o.end = False
                    self._out.pop(sid, None)
                if o.on_sent is not None:
                    o.on_sent(n)
            if not o.data:
                if o.trailers is not None:
                    conn.send_headers(sid, o.trailers, end_stream=True)
                    self._out.pop(sid, None)
                elif o.end:
                    conn.end_stream(sid)
                    self._out.pop(sid, None)
                if o.drained is not None:
                    o.drained.set()
        except ProtocolError:  # the stream was reset or closed meanwhile: nothing more to send on it
            self.forget(sid)
        self.write()

    def flush_all(self) -> None:
        for sid in list(self._out):
            self.flush(sid)

    def forget(self, sid: int) -> None:
        o = self._out.pop(sid, None)
        if o is not None and o.drained is not None:
            o.drained.set()

    def reset(self, sid: int, code: int = ErrorCodes.CANCEL) -> None:
        self.forget(sid)
        with contextlib.suppress(ProtocolError):  # already closed
            self.conn.reset_stream(sid, error_code=code)
        self.write()

    def ack(self, sid: int, n: int) -> None:
        """Give the peer back ``n`` bytes of window on ``sid`` (and on the connection)."""
        if n <= 0:
            return
        try:
            self.conn.acknowledge_received_data(n, sid)
        except ProtocolError:
            return
        self.write()
