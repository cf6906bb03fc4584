"""One HTTP/2 stream served by the REST app (ASGI 3, ``http_version = "2"``).

The request body is handed to the app as it arrives and its flow-control credit is returned only once the
app has taken it, so a client cannot make us buffer more than one window per stream. Response bodies are
queued on the connection's ``Side`` and ``send`` waits until they have left (windows and socket), which is
what makes an SSE stream paced by the client. A reset of this stream, or the connection going away, is an
``http.disconnect`` for this stream alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any
from urllib.parse import unquote

from h2.errors import ErrorCodes

from regiongate.asgi import ASGIApp, Message
from regiongate.front.h2side import Headers, Side

log = logging.getLogger("regiongate.front")
# Hop-by-hop headers HTTP/2 forbids (RFC 9113 8.2.2); an ASGI app written for HTTP/1.1 may still send them.
_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))


class RestStream:
    def __init__(self, side: Side, sid: int, scope: dict[str, Any], ended: bool) -> None:
        self.side = side
        self.sid = sid
        self.scope = scope
        self.body: deque[tuple[bytes, int]] = deque()  # (data, flow-controlled length to return)
        self.ended = ended  # END_STREAM received
        self.gone = False  # reset by the client or the connection lost
        self.done = False  # our response completed
        self.wake = asyncio.Event()
        self.status = 0
        self.headers: Headers = []
        self.started = False
        self.body_done = False  # the app has been given the last body chunk
        self.task: asyncio.Task[None] | None = None

    # --- events from the connection ----------------------------------------------------------------
    def data(self, data: bytes, flow: int) -> None:
        self.body.append((data, flow))
        self.wake.set()

    def end(self) -> None:
        self.ended = True
        self.wake.set()

    def lost(self) -> None:
        self.gone = True
        self.side.forget(self.sid)
        self.wake.set()

    # --- ASGI ----------------------------------------------------------------------------------------
    async def run(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
            if not self.done and not self.gone:
                if not self.started:
                    await self._plain(500, b'{"error":{"message":"no response","type":"server_error"}}')
                else:
                    self.side.reset(self.sid, ErrorCodes.INTERNAL_ERROR)
        except ConnectionError:
            pass  # the client reset the stream or went away: nobody to answer
        except Exception:
            log.exception("REST app failed on an HTTP/2 stream")
            if not self.gone:
                if not self.started:
                    await self._plain(500, b'{"error":{"message":"internal error","type":"server_error"}}')
                else:
                    self.side.reset(self.sid, ErrorCodes.INTERNAL_ERROR)

    async def receive(self) -> Message:
        while True:
            if self.gone:
                return {"type": "http.disconnect"}
            if self.body:
                data, flow = self.body.popleft()
                self.side.ack(self.sid, flow)
                last = self.ended and not self.body
                self.body_done = last
                return {"type": "http.request", "body": data, "more_body": not last}
            if self.ended and not self.body_done:
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self.body_done and self.done:
                return {"type": "http.disconnect"}
            self.wake.clear()
            await self.wake.wait()

    async def send(self, msg: Message) -> None:
        if self.gone:
            raise ConnectionError("the client reset the stream")
        kind = msg["type"]
        if kind == "http.response.start":
            self.status = int(msg["status"])
            self.headers = [(k.lower(), v) for k, v in msg.get("headers", ()) if k.lower() not in _HOP]
            return
        if kind != "http.response.body" or self.done:
            return
        body: bytes = msg.get("body", b"")
        more = bool(msg.get("more_body", False))
        side = self.side
        try:
            if not self.started:
                self.started = True
                head = [(b":status", str(self.status).encode()), *self.headers]
                side.conn.send_headers(self.sid, head, end_stream=not body and not more)
                side.write()
                if not body and not more:
                    return
            side.queue(self.sid, body, end=not more)
            await self._drained()
        finally:
            if not more:
                self.done = True
                self.wake.set()  # a receive() waiting for more body now sees the disconnect

    async def _drained(self) -> None:
        side = self.side
        while side.pending(self.sid) and not self.gone:
            o = side.out(self.sid)
            if o.drained is None:
                o.drained = asyncio.Event()
            o.drained.clear()
            await o.drained.wait()
        while not side.writable.is_set() and not self.gone:
            await side.writable.wait()  # the socket is backed up: wait for the kernel to take it
        if self.gone:
            raise ConnectionError("the client reset the stream")

    async def _plain(self, status: int, body: bytes) -> None:
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await self.send({"type": "http.response.body", "body": body})


def scope_for(
    headers: Headers,
    scheme: str,
    client: tuple[str, int] | None,
    server: tuple[str, int] | None,
    state: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ASGI scope of one HTTP/2 request. ``:authority`` becomes ``host`` (as HTTP/1.1 has it), so the
    app resolves the endpoint from the same header whichever version carried the request."""
    method = path = b""
    authority: bytes | None = None
    plain: Headers = []
    has_host = False
    for k, v in headers:
        if k[:1] == b":":
            if k == b":method":
                method = v
            elif k == b":path":
                path = v
            elif k == b":authority":
                authority = v
        else:
            if k == b"host":
                has_host = True
            plain.append((k, v))
    if authority is not None and not has_host:
        plain.insert(0, (b"host", authority))
    raw_path, _, query = path.partition(b"?")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "2",
        "method": method.decode("latin-1"),
        "scheme": scheme,
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": plain,
        "client": client,
        "server": server,
    }
    if state is not None:
        scope["state"] = state.copy()
    return scope
