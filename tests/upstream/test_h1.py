"""The pooled HTTP/1.1 upstream client against raw servers on loopback: every way a response can be framed,
connection reuse, a pooled connection the server closed, garbage, and header injection."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from regiongate.upstream.base import TimedChunks, UpstreamCall, UpstreamFailure
from regiongate.upstream.h1 import PAUSE_AT, H1Pool, H1Response
from regiongate.upstream.http import HttpUpstream
from tests.support.certs import make_certs

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


class Server:
    """A loopback server whose handler is the test's; counts connections and keeps every request head."""

    def __init__(self, respond: Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]) -> None:
        self.respond = respond  # returns False to close the connection after answering
        self.connections = 0
        self.heads: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                try:
                    head, _ = await read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.heads.append(head)
                if not await self.respond(head, writer):
                    return
        finally:
            writer.close()


Respond = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Respond], Awaitable[tuple[Server, str]]]]:
    servers: list[tuple[Server, asyncio.Server]] = []

    async def start(respond: Respond) -> tuple[Server, str]:
        s = Server(respond)
        srv = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        servers.append((s, srv))
        return s, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1"

    yield start
    for s, srv in servers:
        for w in s.writers:
            w.transport.abort()
        srv.close()
        await srv.wait_closed()


Serve = Callable[[Respond], Awaitable[tuple[Server, str]]]


def call(stream: bool = False, request_id: str = "rid-1") -> UpstreamCall:
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return UpstreamCall("/chat/completions", orjson.dumps(payload), payload, stream, request_id)


OK = b'{"id":"x","object":"chat.completion","choices":[]}'


def fixed(body: bytes = OK, status: int = 200, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (status, ctype, len(body)) + body
    )


async def test_content_length_responses_reuse_one_connection(serve: Serve) -> None:
    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(fixed())
        return True

    server, url = await serve(respond)
    up = HttpUpstream("b", url, api_key="sk-upstream")
    for _ in range(5):
        resp = await up.send(call())
        assert resp.status == 200 and resp.body == OK and resp.parsed == orjson.loads(OK)
    assert server.connections == 1, "keep-alive: five requests, one connection"
    head = server.heads[0].decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert "authorization: Bearer sk-upstream\r\n" in head and "x-request-id: rid-1\r\n" in head
    await up.aclose()


async def test_chunked_stream_arrives_in_pieces_and_connection_is_reused(serve: Serve) -> None:
    go = asyncio.Event()

    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(3):
            data = b'data: {"n":%d}\n\n' % i
            w.write(b"%x\r\n%s\r\n" % (len(data), data))
            await w.drain()
            if i == 0:
                await go.wait()  # the client must see the first event before the rest exists
        w.write(b"0\r\n\r\n")
        return True

    server, url = await serve(respond)
    up = HttpUpstream("b", url)
    resp = await up.send(call(stream=True))
    assert resp.status == 200 and resp.chunks is not None
    first = await anext(resp.chunks)
    assert first == b'data: {"n":0}\n\n'
    go.set()
    rest = b"".join([c async for c in resp.chunks])
    assert rest == b'data: {"n":1}\n\ndata: {"n":2}\n\n'
    again = await up.send(call(stream=True))
    assert again.chunks is not None and b"".join([c async for c in again.chunks]).count(b"data:") == 3
    assert server.connections == 1
    await up.aclose()


async def test_body_delimited_by_connection_close(serve: Serve) -> None:
    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n" + OK)
        return False

    server, url = await serve(respond)
    up = HttpUpstream("b", url)
    assert (await up.send(call())).body == OK
    assert (await up.send(call())).body == OK
    assert server.connections == 2, "a connection the server closes is never reused"
    await up.aclose()


async def test_interim_100_continue_is_skipped(serve: Serve) -> None:
    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n" + fixed())
        return True

    _, url = await serve(respond)
    up = HttpUpstream("b", url)
    resp = await up.send(call())
    assert resp.status == 200 and resp.body == OK
    await up.aclose()


async def test_pooled_connection_closed_by_server_is_retried_on_a_fresh_one(serve: Serve) -> None:
    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(fixed())
        return True

    server, url = await serve(respond)
    pool = H1Pool(url)
    up = HttpUpstream("b", url)
    up._pool = pool
    assert (await up.send(call())).status == 200
    # The server drops the idle connection, and the client has not noticed yet when it takes it: its
    # request is written to a dead socket and must go out again on a new connection.
    server.writers[0].transport.abort()
    resp = await up.send(call())
    assert resp.status == 200 and resp.body == OK
    assert server.connections == 2
    await up.aclose()


async def test_5xx_and_refused_are_failures_to_fail_over(serve: Serve) -> None:
    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(fixed(b'{"error":{"message":"busy"}}', status=503))
        return True

    _, url = await serve(respond)
    up = HttpUpstream("b", url)
    with pytest.raises(UpstreamFailure, match="answered HTTP 503"):
        await up.send(call())
    await up.aclose()

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = HttpUpstream("b", f"http://127.0.0.1:{port}/v1")
    with pytest.raises(UpstreamFailure, match="connection failed"):
        await refused.send(call())


async def test_garbage_and_truncated_answers_are_failures(serve: Serve) -> None:
    answers = iter([b"SSH-2.0-OpenSSH_9.2\r\n", b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"id":'])

    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(next(answers))
        return False

    _, url = await serve(respond)
    up = HttpUpstream("b", url)
    with pytest.raises(UpstreamFailure, match=r"malformed HTTP response|connection"):
        await up.send(call())
    with pytest.raises(UpstreamFailure, match="body not received"):
        await up.send(call())
    await up.aclose()


async def test_silent_server_times_out_and_its_connection_is_dropped(serve: Serve) -> None:
    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        await asyncio.Event().wait()
        return False

    _, url = await serve(respond)
    up = HttpUpstream("b", url, first_byte_timeout_s=0.2)
    with pytest.raises(UpstreamFailure, match=r"no response within 0\.2s"):
        await up.send(call())
    assert up._pool._idle == []
    await up.aclose()


async def test_a_body_that_stalls_after_its_head_fails_within_the_first_byte_time(serve: Serve) -> None:
    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        await asyncio.Event().wait()
        return False

    _, url = await serve(respond)
    up = HttpUpstream("b", url, first_byte_timeout_s=0.2)
    with pytest.raises(UpstreamFailure, match="body not received: TimeoutError"):
        await up.send(call())
    assert up._pool._idle == []
    await up.aclose()


async def test_a_stream_may_outlast_the_first_byte_time_and_its_connection_serves_the_next(
    serve: Serve,
) -> None:
    """The first-byte deadline covers the head only: a stream whose events come after it has passed is
    relayed whole, and its kept-alive connection then answers a plain request under a new deadline."""
    go = asyncio.Event()

    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        if b"stream" not in head:
            w.write(fixed())
            return True
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        w.write(b"6\r\nfirst\n\r\n")
        await go.wait()
        w.write(b"5\r\nlate\n\r\n0\r\n\r\n")
        return True

    server, url = await serve(respond)
    up = HttpUpstream("b", url, first_byte_timeout_s=0.05)
    deadline = asyncio.get_running_loop().time() + 0.05
    resp = await up._pool.request(b"POST /stream HTTP/1.1\r\nhost: x\r\n\r\n", b"", deadline)
    chunks = resp.stream()
    assert await anext(chunks) == b"first\n"
    await asyncio.sleep(0.1)  # the request's deadline has passed (its timer ran before this wake-up)
    go.set()
    assert [x async for x in chunks] == [b"late\n"]
    assert len(up._pool._idle) == 1
    answer = await up.send(call())
    assert answer.status == 200 and server.connections == 1
    await up.aclose()


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def open_stream(url: str) -> tuple[H1Pool, H1Response, TimedChunks]:
    """A streamed response's pool, response and chunks, its waits bounded by the connection's timer."""
    pool = H1Pool(url)
    resp = await pool.request(b"POST /stream HTTP/1.1\r\nhost: x\r\n\r\n")
    chunks = resp.stream()
    assert isinstance(chunks, TimedChunks)
    return pool, resp, chunks


async def test_a_stream_that_stalls_mid_body_is_cut_by_the_connections_timer(serve: Serve) -> None:
    """``within_s`` bounds each wait for more of a stream with the connection's one timer (no
    ``asyncio.timeout`` per chunk): a body that goes silent after its first event raises TimeoutError and
    its connection is dropped, not pooled."""

    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(SSE_HEAD + b"6\r\nfirst\n\r\n")
        await asyncio.Event().wait()
        return False

    _, url = await serve(respond)
    pool, _, chunks = await open_stream(url)
    chunks.within_s = 0.05
    assert await anext(chunks) == b"first\n"
    with pytest.raises(TimeoutError):
        await anext(chunks)
    assert pool._idle == []
    with pytest.raises(StopAsyncIteration):  # ended: the connection is gone
        await anext(chunks)


async def test_a_streams_wait_is_timed_only_while_waiting(serve: Serve) -> None:
    """The time a caller spends between two chunks (writing to a slow client) is not the backend's
    silence: a wait's deadline is dropped once bytes arrive, and the next wait arms its own."""
    go = asyncio.Event()

    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(SSE_HEAD)
        await go.wait()
        w.write(b"6\r\nfirst\n\r\n")
        go.clear()
        await go.wait()
        w.write(b"5\r\nlate\n\r\n0\r\n\r\n")
        return True

    _, url = await serve(respond)
    pool, resp, chunks = await open_stream(url)
    conn = resp._conn
    assert conn is not None and conn.deadline.at is None  # the request's first-byte deadline ended with the head
    chunks.within_s = 30.0
    asyncio.get_running_loop().call_soon(go.set)  # the first event arrives while the wait is armed
    assert await anext(chunks) == b"first\n"
    assert conn.deadline.at is None and conn.error is None  # not waiting: nothing to cut
    go.set()
    assert [x async for x in chunks] == [b"late\n"]
    assert len(pool._idle) == 1  # the body ended: the connection serves the next request
    pool.close()


async def test_crlf_in_a_forwarded_value_cannot_inject_a_header(serve: Serve) -> None:
    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(fixed())
        return True

    server, url = await serve(respond)
    up = HttpUpstream("b", url)
    await up.send(call(request_id="abc\r\nx-injected: 1"))
    assert b"\r\nx-injected" not in server.heads[0]
    await up.aclose()


async def test_a_slow_reader_pauses_the_upstream_instead_of_buffering_everything(serve: Serve) -> None:
    total = 64 << 20  # more than loopback socket buffers hold, so an unpaused client would take it all

    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % total)
        piece = b"x" * (1 << 20)
        for _ in range(total // len(piece)):
            w.write(piece)
            await w.drain()  # blocks while the client has stopped reading
        return True

    _, url = await serve(respond)
    pool = H1Pool(url)
    resp = await pool.request(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    conn = resp._conn
    assert conn is not None
    deadline = asyncio.get_running_loop().time() + 30
    while not conn._paused:  # nobody reads: the client must stop reading from the socket
        assert asyncio.get_running_loop().time() < deadline, "never paused"
        await asyncio.sleep(0.001)
    held = conn._buffered
    for _ in range(100):
        await asyncio.sleep(0)
    assert conn._buffered == held and held < PAUSE_AT + (4 << 20), "paused: nothing more is buffered"
    got = sum([len(c) async for c in resp.stream()])
    assert got == total
    pool.close()


async def test_https_upstream_is_verified_against_trusted_cas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Providers' regional endpoints are HTTPS: the certificate is checked (here against a test CA given in
    SSL_CERT_FILE, as an operator would for a private CA), and an untrusted one is a failure to fail over."""
    ca, cert, key = make_certs(tmp_path, ("localhost",))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head, _ = await read_request(reader)
            assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost:")
            writer.write(fixed())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://localhost:{srv.sockets[0].getsockname()[1]}/v1"
    try:
        untrusted = HttpUpstream("b", url)  # the system CAs do not know the test CA
        with pytest.raises(UpstreamFailure, match="connection failed"):
            await untrusted.send(call())
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        trusted = HttpUpstream("b", url)
        resp = await trusted.send(call())
        assert resp.status == 200 and resp.body == OK
        await trusted.aclose()
    finally:
        srv.close()
        await srv.wait_closed()


async def test_a_request_the_server_read_is_never_sent_twice(serve: Serve) -> None:
    """The server reads the second request on the reused connection, holds it in silence, then closes:
    it had read it (a GPU-costly completion may be running), so the client must not send it again."""
    n = 0

    async def respond(head: bytes, w: asyncio.StreamWriter) -> bool:
        nonlocal n
        n += 1
        if n == 1:
            w.write(fixed())
            return True
        await asyncio.sleep(0.5)
        return False  # closes without a byte of answer

    server, url = await serve(respond)
    up = HttpUpstream("b", url)
    assert (await up.send(call())).status == 200
    with pytest.raises(UpstreamFailure, match="connection"):
        await up.send(call())
    assert len(server.heads) == 2 and server.connections == 1  # sent once, on the reused connection
    await up.aclose()
