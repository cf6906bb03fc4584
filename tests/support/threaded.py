"""An asyncio TCP server on a thread and loop of its own, for the test upstreams (the stand-ins, the fault
server): the test's thread scripts it while the gateway under test talks to it on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Protocol


class LoopServer(Protocol):
    port: int
    _loop: asyncio.AbstractEventLoop | None
    _server: asyncio.Server | None
    _thread: threading.Thread | None

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None: ...


def start_in_thread(s: LoopServer, name: str, setup: Callable[[], None] | None = None) -> None:
    """Listen on a free loopback port (``s.port``) and serve ``s._conn`` until ``stop``; ``setup`` runs on
    the server's loop first."""
    ready = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        s._loop = loop

        async def main() -> None:
            if setup is not None:
                setup()
            s._server = await asyncio.start_server(s._conn, "127.0.0.1", 0)
            s.port = s._server.sockets[0].getsockname()[1]
            ready.set()
            async with s._server:
                with contextlib.suppress(asyncio.CancelledError):
                    await s._server.serve_forever()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    s._thread = threading.Thread(target=run, name=name, daemon=True)
    s._thread.start()
    if not ready.wait(10):
        raise RuntimeError(f"{name} did not start")


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    """One HTTP/1.1 request off a keep-alive connection: method, path, headers (lower-case names), body;
    None when the client closed the connection between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, path, headers, body


def stop_thread(s: LoopServer) -> None:
    """Close the server, cancel what runs on its loop and wait for the thread."""
    loop, server = s._loop, s._server
    if loop is not None and server is not None and not loop.is_closed():

        def shut() -> None:
            server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(shut)
    if s._thread is not None:
        s._thread.join(10)
