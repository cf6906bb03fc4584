"""The edge protocol's request cycle (``front.edge.EdgeCycle``) under a real uvicorn server on loopback, seen
from a raw socket: head and body in one write, keep-alive, pipelined order, ``Expect: 100-continue``, a
chunked head sent before its first event, a body bigger than the read window, HEAD, and response headers an
app must not be able to inject into."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from regiongate.front.edge import EdgeLimits, edge_protocol

Scope = dict[str, Any]


class Gate:
    event: asyncio.Event  # the "/wait" and "/stream" routes hold on it; one per test (per loop)


gate = Gate()


async def app(scope: Scope, receive: Any, send: Any) -> None:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    path = scope["path"]
    if path == "/wait":
        await gate.event.wait()
    if path == "/stream":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await gate.event.wait()
        await send({"type": "http.response.body", "body": b"event", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/inject":
        headers = [(b"x-a", b"ok\r\nx-injected: yes")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/bad-name":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x a", b"1")]})
        await send({"type": "http.response.body", "body": b""})
        return
    out = b"%s %s %d" % (scope["method"].encode(), path.encode(), len(body))
    headers = [(b"content-length", str(len(out)).encode()), (b"x-path", path.encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async for p in serve(EdgeLimits()):
        yield p


@pytest.fixture
async def quick_head_port() -> AsyncIterator[int]:
    async for p in serve(EdgeLimits(header_timeout_s=0.5)):
        yield p


async def serve(limits: EdgeLimits) -> AsyncIterator[int]:
    gate.event = asyncio.Event()
    config = uvicorn.Config(app, http=edge_protocol(limits), lifespan="off", log_config=None)
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)  # "off", as app.sites sets it
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await server.startup(sockets=[sock])
    try:
        yield sock.getsockname()[1]
    finally:
        await server.shutdown(sockets=[sock])


async def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    return s


async def read_until(s: socket.socket, end: bytes, have: bytes = b"") -> bytes:
    loop = asyncio.get_running_loop()
    while end not in have:
        data = await asyncio.wait_for(loop.sock_recv(s, 65536), 10)
        assert data, f"closed after {have!r}"
        have += data
    return have


def request(path: str, body: bytes = b"", method: str = "POST", extra: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n".encode() + extra
    return head + b"\r\n" + body


async def test_head_and_body_leave_in_one_write_and_the_connection_stays(port: int) -> None:
    loop = asyncio.get_running_loop()
    with await connect(port) as s:
        for n in (1, 2):
            await loop.sock_sendall(s, request(f"/a{n}", b"xyz"))
            first = await asyncio.wait_for(loop.sock_recv(s, 65536), 10)
            assert first.startswith(b"HTTP/1.1 200 OK\r\n")
            assert first.endswith(b"\r\n\r\nPOST /a%d 3" % n)  # the whole response in the first read


async def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    loop = asyncio.get_running_loop()
    with await connect(port) as s:
        await loop.sock_sendall(s, request("/wait") + request("/second") + request("/third"))
        await asyncio.sleep(0.05)  # let the server read all three while the first still waits
        gate.event.set()
        got = await read_until(s, b"POST /third 0")
    assert got.index(b"POST /wait 0") < got.index(b"POST /second 0") < got.index(b"POST /third 0")


async def test_expect_100_continue_is_answered_before_the_body_is_sent(port: int) -> None:
    loop = asyncio.get_running_loop()
    with await connect(port) as s:
        await loop.sock_sendall(
            s, request("/up", b"", extra=b"expect: 100-continue\r\n").replace(b"length: 0", b"length: 5")
        )
        interim = await read_until(s, b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await loop.sock_sendall(s, b"hello")
        got = await read_until(s, b"POST /up 5")
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_a_chunked_head_is_sent_before_its_first_event(port: int) -> None:
    with await connect(port) as s:
        await asyncio.get_running_loop().sock_sendall(s, request("/stream"))
        head = await read_until(s, b"\r\n\r\n")  # the app is still waiting on the gate
        assert b"transfer-encoding: chunked" in head
        gate.event.set()
        rest = await read_until(s, b"0\r\n\r\n", head)
    assert rest.endswith(b"\r\n\r\n5\r\nevent\r\n0\r\n\r\n")


async def test_a_body_larger_than_the_read_window_arrives_whole(port: int) -> None:
    body = b"x" * (3 * 65536 + 17)
    with await connect(port) as s:
        await asyncio.get_running_loop().sock_sendall(s, request("/big", body))
        got = await read_until(s, b"POST /big %d" % len(body))
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_head_gets_the_head_alone(port: int) -> None:
    loop = asyncio.get_running_loop()
    with await connect(port) as s:
        await loop.sock_sendall(s, request("/h", method="HEAD") + request("/after"))
        got = await read_until(s, b"POST /after 0")
    first, _, rest = got.partition(b"\r\n\r\n")
    assert b"content-length: 9" in first and rest.startswith(b"HTTP/1.1 200 OK\r\n")  # no body between


@pytest.mark.parametrize("path", ["/inject", "/bad-name"])
async def test_an_app_cannot_inject_response_headers(port: int, path: str) -> None:
    """As under uvicorn's own cycle: the head is refused before anything is written and the connection
    closed (the response had started, so no 500 can follow)."""
    with await connect(port) as s:
        await asyncio.get_running_loop().sock_sendall(s, request(path))
        got = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(s, 65536), 10)
    assert got == b""


async def test_a_pipelined_head_trickling_in_after_a_response_still_gets_its_408(
    quick_head_port: int,
) -> None:
    """The next head began while a response ran: the idle wait that follows the response must not replace
    its deadline, and the bytes that trickle in must not clear it (a slowloris behind a pipelined request)."""
    loop = asyncio.get_running_loop()
    with await connect(quick_head_port) as s:
        await loop.sock_sendall(s, request("/wait") + b"POST /next HTTP/1.1\r\nhost: x\r\n")
        gate.event.set()
        got = await read_until(s, b"POST /wait 0")

        async def trickle() -> None:
            for _ in range(200):
                await loop.sock_sendall(s, b"x-slow: 1\r\n")
                await asyncio.sleep(0.05)

        sending = asyncio.ensure_future(trickle())
        try:
            got = await read_until(s, b"did not arrive within", got)
        finally:
            sending.cancel()
    assert b"HTTP/1.1 408 Request Timeout" in got
