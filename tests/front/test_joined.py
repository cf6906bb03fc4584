"""JoinedWrites: what a protocol writes while handling one event leaves in one write, over a real loopback
connection (the head and body of a response arrive together), and close / abort keep their meaning."""

from __future__ import annotations

import asyncio
import socket
from typing import cast

from regiongate.front.joined import JoinedWrites


class _Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0


async def test_writes_of_one_iteration_leave_as_one() -> None:
    rec = _Recorder()
    t = JoinedWrites(cast(asyncio.Transport, rec))
    t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    t.write(b"ok")
    assert rec.writes == [] and t.get_write_buffer_size() == 40
    await asyncio.sleep(0)
    assert rec.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    t.write(b"next")
    await asyncio.sleep(0)
    assert rec.writes[1:] == [b"next"]  # a later iteration: its own write


async def test_close_sends_what_is_buffered_and_abort_drops_it() -> None:
    rec = _Recorder()
    t = JoinedWrites(cast(asyncio.Transport, rec))
    t.write(b"last words")
    t.close()
    assert rec.writes == [b"last words"] and rec.closed
    rec2 = _Recorder()
    t2 = JoinedWrites(cast(asyncio.Transport, rec2))
    t2.write(b"never")
    t2.abort()
    await asyncio.sleep(0)
    assert rec2.writes == [] and rec2.aborted
    assert t2.is_closing()  # everything else is the wrapped transport's


async def test_a_response_arrives_in_one_segment_on_loopback() -> None:
    loop = asyncio.get_running_loop()

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = JoinedWrites(cast(asyncio.Transport, transport))

        def data_received(self, data: bytes) -> None:
            self.t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            self.t.write(b"hello")

    server = await loop.create_server(Server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setblocking(False)
        await loop.sock_sendall(s, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        first = await asyncio.wait_for(loop.sock_recv(s, 4096), 5)
    server.close()
    await server.wait_closed()
    assert first.endswith(b"\r\n\r\nhello")  # head and body in the first read: one write
