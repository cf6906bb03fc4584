"""A transport whose writes of one event-loop iteration leave in one ``write``.

uvicorn writes a response's head and its body separately, so every plain response cost two system calls
(and the client two wake-ups); a stream relayed from one upstream read that carried several events cost one
write per event. Wrapped in ``JoinedWrites``, what the protocol writes while it handles one event is
buffered and written once, right after (``loop.call_soon``): the head and the body of a response leave in
one segment. Everything else is the wrapped transport's; ``close`` and ``write_eof`` send what is buffered
first, ``abort`` drops it.
"""

from __future__ import annotations

import asyncio
from typing import Any


class JoinedWrites:
    __slots__ = ("_buf", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._buf: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._buf:
            self._loop.call_soon(self.flush)
        self._buf.append(bytes(data))

    def write_now(self, data: bytes) -> None:
        """``data`` at once, after what is buffered: for the last write of a response, which nothing of
        this iteration joins (saves the deferred flush)."""
        if self._buf:
            self._buf.append(data)
            self.flush()
        elif not self.transport.is_closing():
            self.transport.write(data)

    def writelines(self, lines: list[bytes]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._buf:
            data = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
            self._buf.clear()
            if not self.transport.is_closing():
                self.transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + sum(map(len, self._buf))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self._buf.clear()
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, ...
        return getattr(self.transport, name)
