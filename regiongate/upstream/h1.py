"""A pooled HTTP/1.1 client for upstream calls: an asyncio ``Protocol`` feeding httptools' response parser.

Why not aiohttp's client: on this machine it cost ~270 µs of CPU per proxied request, the largest single
share of the gateway's CPU, against ~20 µs for a Protocol that feeds httptools (the parser uvicorn uses);
see ``docs/bench/compare-client.md``. A gateway needs a narrow slice of HTTP/1.1 (a request head and body
in one write, keep-alive, responses framed by content-length, chunked encoding or the connection's end,
bodies streamed with backpressure, TLS) and that slice is this module; parsing stays in httptools.

A connection taken from the pool may have been closed by the server just as it was taken. Such a reused
connection that fails before a single response byte arrived is tried once more on a new connection only
when the failure proves the server never read the request: the connection was already lost when the
request was written, or within ``STALE_GRACE_S`` after (the server's close crossed our write). A server
that read the request, kept silent and then closed may be running it: that is a failure for the gateway's
failover rules, never a silent second send of a completion.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import cast
from urllib.parse import urlsplit

import httptools

from regiongate.upstream.base import TimedChunks
from regiongate.upstream.deadline import LazyDeadline

PAUSE_AT = 1 << 18  # stop reading from a streaming upstream when this many bytes wait for the client
KEEPALIVE_S = 30.0  # close pooled connections idle for longer (servers commonly drop them after 60-75 s)
MAX_IDLE = 256  # pooled connections kept per backend
STALE_GRACE_S = 0.2  # a reused connection lost this soon after the write had been closed before it


def retry_after_s(value: bytes, unit: float) -> float | None:
    """A Retry-After value in seconds (``unit`` 1) or retry-after-ms (``unit`` 0.001); an HTTP date or
    garbage gives None. Bounded, so a hostile value cannot take a backend out for days."""
    try:
        v = float(value) * unit
    except ValueError:
        return None
    return min(v, 3600.0) if v >= 0 and v == v else None


class UpstreamHttpError(ConnectionError):
    """The connection failed, or the upstream spoke something other than HTTP/1.x."""


class _Conn(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.lost_at: float | None = None  # loop time the connection was lost
        self.idle_since = 0.0
        self._loop = asyncio.get_running_loop()
        # The exchange's deadline: one timer per connection, not one per request (``LazyDeadline``).
        self.deadline = LazyDeadline(self._loop, self._expired)
        self._begin()

    def _begin(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.content_type = ""
        self.retry_after_s: float | None = None  # Retry-After / retry-after-ms of the answer
        self.framed = False  # content-length or chunked: else the body ends with the connection
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.got_bytes = False
        self.error: BaseException | None = None
        self._parts: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.deadline.at = None

    # --- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamHttpError(f"malformed HTTP response: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost_at = self._loop.time()
        self.deadline.close()
        if self.head_done and not self.framed and not self.complete and exc is None:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        elif not self.complete:
            self._fail(UpstreamHttpError(f"connection closed{f': {exc}' if exc else ''}"))

    # --- httptools callbacks -------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname == b"content-type":
            self.content_type = value.decode("latin-1")
        elif lname == b"content-length" or (lname == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True
        elif lname == b"retry-after-ms" or (lname == b"retry-after" and self.retry_after_s is None):
            self.retry_after_s = retry_after_s(value, 0.001 if lname == b"retry-after-ms" else 1.0)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:  # an interim 1xx: the real head follows
            self.content_type, self.framed = "", False
            return
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.status < 200:
            return
        self._parts.append(body)
        self._buffered += len(body)
        if self._buffered > PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status < 200:
            return  # the end of an interim 1xx; the parser goes on to the final response
        self.keep_alive = self.parser.should_keep_alive()  # only meaningful while the message is current
        self.complete = True
        self._wake()

    # --- reading -------------------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        w = self._waiter
        if w is not None and not w.done():
            w.set_exception(exc)

    def _expired(self) -> None:
        self._fail(TimeoutError())

    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def head(self) -> None:
        while not self.head_done:
            await self._wait()

    async def chunk(self, within_s: float | None = None) -> bytes | None:
        """The body bytes received since the last call (None at the end of the body); a wait for them
        that lasts ``within_s`` raises ``TimeoutError`` (the connection's one timer, armed only while
        waiting: time the caller spends between two calls is not counted)."""
        if not self._parts:
            if within_s is not None and not self.complete:
                self.deadline.set(self._loop.time() + within_s)
            try:
                while not self._parts:
                    if self.complete:
                        return None
                    await self._wait()
            finally:
                if within_s is not None:
                    self.deadline.at = None
        parts = self._parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def body(self) -> bytes:
        while not self.complete:
            await self._wait()
        return b"".join(self._parts)

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class H1Response:
    """A response whose head has arrived. Read the body with ``read`` or ``stream``; ``release`` hands the
    connection back to the pool when the body was read to its end, and closes it otherwise."""

    __slots__ = ("_conn", "_pool", "content_type", "retry_after_s", "status")

    def __init__(self, conn: _Conn, pool: H1Pool) -> None:
        self._conn: _Conn | None = conn
        self._pool = pool
        self.status = conn.status
        self.content_type = conn.content_type
        self.retry_after_s = conn.retry_after_s

    async def read(self) -> bytes:
        assert self._conn is not None
        try:
            return await self._conn.body()
        finally:
            self.release()

    def stream(self, deadline: float | None = None) -> H1Chunks:
        """The body as it arrives; ``deadline`` (``loop.time()``) bounds the whole body, in place of the
        request's (from this call on), and each wait for more is bounded by the iterator's ``within_s``."""
        conn = self._conn
        assert conn is not None
        conn.deadline.at = None
        return H1Chunks(self, conn, deadline)

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.put(conn)


class H1Chunks(TimedChunks):
    """A response body as it arrives, the connection handed back once it ends (or closed if it did not):
    each wait for more bytes is bounded by the connection's one timer (``within_s``), not a timer of its
    own."""

    __slots__ = ("_conn", "_deadline", "_loop", "_resp")

    def __init__(self, resp: H1Response, conn: _Conn, deadline: float | None) -> None:
        super().__init__()
        self._resp = resp
        self._conn: _Conn | None = conn
        self._deadline = deadline
        self._loop = conn._loop

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            if self._deadline is not None and self._loop.time() > self._deadline:
                raise UpstreamHttpError("the response outlasted its total time limit")
            while not (data := await conn.chunk(self.within_s)):
                if data is None:
                    raise StopAsyncIteration
        except BaseException:
            self._end()
            raise
        return data

    async def aclose(self) -> None:
        self._end()

    def _end(self) -> None:
        if self._conn is not None:
            self._conn = None
            self._resp.release()


class H1Pool:
    """Keep-alive connections to one origin (scheme, host, port); most recently used first."""

    def __init__(self, url: str, *, connect_timeout_s: float = 2.0) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if u.scheme == "https" else None
        default_port = self.port == (443 if u.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = host if default_port else f"{host}:{self.port}"
        self.path_prefix = u.path.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[_Conn] = []

    async def _connect(self, deadline: float | None = None) -> _Conn:
        loop = asyncio.get_running_loop()
        limit = self.connect_timeout_s
        left = None if deadline is None else deadline - loop.time()
        ours = left is not None and left < limit  # the exchange's deadline comes first
        try:
            async with asyncio.timeout(left if ours else limit):
                _, conn = await loop.create_connection(
                    _Conn, self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None
                )
        except TimeoutError:
            if ours:
                raise  # the exchange's own time ran out, not the connect's
            raise UpstreamHttpError(f"connect timed out after {self.connect_timeout_s:g}s") from None
        except OSError as e:
            raise UpstreamHttpError(f"connect failed: {e.strerror or e}") from None
        return conn

    def _take(self) -> _Conn | None:
        now = time.monotonic()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE_S:
                return conn
            conn.close()
        return None

    def put(self, conn: _Conn) -> None:
        if conn.reusable and len(self._idle) < MAX_IDLE:
            conn._begin()
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    async def request(self, head: bytes, body: bytes = b"", deadline: float | None = None) -> H1Response:
        """Send ``head`` (the request line and headers, ending in a blank line) and ``body`` in one write;
        return once the response head has arrived. Cancel it and the connection is closed. ``deadline``
        (``loop.time()``) bounds the exchange until the body is read or ``H1Response.stream`` begins:
        past it, what waits raises ``TimeoutError`` and the connection is closed."""
        fresh = False
        loop = asyncio.get_running_loop()
        while True:
            conn = None if fresh else self._take()
            reused = conn is not None
            if conn is None:
                conn = await self._connect(deadline)
            written = loop.time()
            if deadline is not None:
                conn.deadline.set(deadline)
            try:
                assert conn.transport is not None
                conn.transport.write(head + body if body else head)
                await conn.head()
            except UpstreamHttpError:
                conn.close()
                lost = conn.lost_at
                if reused and not conn.got_bytes and lost is not None and lost - written <= STALE_GRACE_S:
                    fresh = True  # the server had closed this idle connection: it never saw the request
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return H1Response(conn, self)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
