"""A raw capture backend and a raw client, for the edge tests and the fuzz run (``bench/fuzz.py``).

``CaptureBackend`` is an HTTP/1.1 server on loopback that keeps exactly the bytes each connection sent
and parses them with httptools, strictly, as a real engine would. Every request it sees is checked:
one method and path from the forwarded set, one ``Host``, a ``Content-Length`` that matches the body,
header names that are tokens and values without control characters. A non-streaming POST is answered with
a chat completion whose content is the ``marker`` the client put in its first message, so a client can tell
its own answer from someone else's (a desynchronised pool answers the wrong client).

``RawClient`` speaks HTTP/1.1 over a plain socket, keep-alive, and sends whatever bytes it is given.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import BinaryIO

import httptools
import orjson

FORWARDED = re.compile(rb"^/v1/(chat/completions|completions|embeddings|responses|messages|models)$")
TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass
class Captured:
    """One request as the backend parsed it."""

    conn: int  # which backend connection carried it
    method: str
    url: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    problems: list[str] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


def marker_of(body: bytes) -> str:
    try:
        obj = orjson.loads(body)
        return str(obj["messages"][0]["content"])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return ""


def _stream_answer(marker: str) -> bytes:
    chunk = {
        "id": "cmpl-capture",
        "object": "chat.completion.chunk",
        "created": 1752019200,
        "model": "capture",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": marker}, "finish_reason": "stop"}],
    }
    usage = {**chunk, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    body = b"data: " + orjson.dumps(chunk) + b"\n\ndata: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n"
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _answer(req: Captured) -> bytes:
    marker = marker_of(req.body)
    if b'"stream":true' in req.body.replace(b" ", b""):
        return _stream_answer(marker)
    obj = {
        "id": "cmpl-capture",
        "object": "chat.completion",
        "created": 1752019200,
        "model": "capture",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": marker}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    body = orjson.dumps(obj)
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class _Conn(asyncio.Protocol):
    def __init__(self, backend: CaptureBackend) -> None:
        self.backend = backend
        self.id = backend._next_conn()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._begin()

    def _begin(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.backend._open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend._open.discard(self)

    def data_received(self, data: bytes) -> None:
        self.backend.raw.setdefault(self.id, bytearray()).extend(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.backend.problems.append(f"conn {self.id}: unparseable bytes: {e}")
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self._begin()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        req = Captured(self.id, method, self.url, self.headers, self.body)
        req.problems = _check(req)
        self.backend.requests.append(req)
        assert self.transport is not None
        if method == "POST" and FORWARDED.match(self.url):
            self.transport.write(_answer(req))
        else:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")


def _check(req: Captured) -> list[str]:
    out = []
    if req.method not in ("POST", "GET"):
        out.append(f"method {req.method}")
    if not FORWARDED.match(req.url):
        out.append(f"path {req.url!r} outside the forwarded set")
    hosts = [v for k, v in req.headers if k.lower() == b"host"]
    if len(hosts) != 1:
        out.append(f"{len(hosts)} Host headers")
    for k, v in req.headers:
        if not TOKEN.match(k):
            out.append(f"header name {k!r}")
        if BAD_VALUE.search(v):
            out.append(f"header value {v!r}")
    lengths = [v for k, v in req.headers if k.lower() == b"content-length"]
    if req.method == "POST" and (len(lengths) != 1 or int(lengths[0]) != len(req.body)):
        out.append(f"content-length {lengths} for a body of {len(req.body)}")
    if any(k.lower() == b"transfer-encoding" for k, _ in req.headers):
        out.append("transfer-encoding sent upstream")
    return out


class CaptureBackend:
    """Serves on 127.0.0.1 from its own thread and event loop (usable from sync tests and hypothesis)."""

    def __init__(self) -> None:
        self.requests: list[Captured] = []
        self.raw: dict[int, bytearray] = {}
        self.problems: list[str] = []  # bytes that did not parse as HTTP/1.1 at all
        self._conns = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = asyncio.Event()
        self._open: set[_Conn] = set()
        self.port = 0

    def _next_conn(self) -> int:
        self._conns += 1
        return self._conns

    @property
    def connections(self) -> int:
        return self._conns

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> CaptureBackend:
        self._thread = threading.Thread(target=self._run, name="capture-backend", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("capture backend did not start")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def serve() -> None:
            self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stopping.wait()
            self._server.close()
            for conn in list(self._open):
                if conn.transport is not None:
                    conn.transport.close()
            await asyncio.sleep(0)  # let the transports finish closing before the loop does
            await self._server.wait_closed()

        try:
            loop.run_until_complete(serve())
        finally:
            loop.close()

    def stop(self) -> None:
        """Close the listener and every connection, and wait for the thread to end."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    def reset(self) -> None:
        """Forget what was captured (between tests sharing one backend)."""
        self.requests.clear()
        self.raw.clear()
        self.problems.clear()

    def bad(self) -> list[str]:
        """Every problem seen so far: unparseable bytes and malformed requests."""
        out = list(self.problems)
        for r in self.requests:
            out.extend(f"conn {r.conn}: {p}" for p in r.problems)
        return out


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def content(self) -> str | None:
        """The chat completion's content (the backend's echo of the marker), when there is one."""
        try:
            if self.body.startswith(b"data:"):  # an event stream: the first chunk carries it
                first = self.body.split(b"\n\n", 1)[0][5:]
                return str(orjson.loads(first)["choices"][0]["delta"]["content"])
            return str(orjson.loads(self.body)["choices"][0]["message"]["content"])
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return None


class RawClient:
    """One keep-alive connection to a gateway, reopened when the gateway closed it."""

    def __init__(self, port: int, timeout: float = 30.0, reset: bool = False) -> None:
        self.port = port
        self.timeout = timeout
        self.reset = reset  # close with a RST: many short connections leave no TIME_WAIT behind
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return sock

    def send(self, raw: bytes) -> Answer | None:
        """Send ``raw`` (one request) and read one response; None when the gateway closed without one."""
        if self.sock is None:
            self.sock = self._connect()
        try:
            self.sock.sendall(raw)
            answer, keep = _read_response(self.sock.makefile("rb"))
        except (OSError, ValueError):
            answer, keep = None, False
        if not keep:
            self.close()
        return answer

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _read_response(f: BinaryIO) -> tuple[Answer | None, bool]:
    """One response from ``f`` (content-length, chunked or until the close) and whether to keep the
    connection. Parsed by hand: the test process then has no C parser of its own in play."""
    status = b"100"
    while status.startswith(b"1"):  # skip interim responses (100 Continue)
        status_line = f.readline(65536)
        if not status_line:
            return None, False
        version, status, *_ = status_line.split(b" ", 2)
        headers = []
        while (line := f.readline(65536)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
    answer = Answer(int(status), headers, b"")
    conn = (answer.header(b"connection") or b"").lower()
    keep = conn != b"close" and not (version == b"HTTP/1.0" and conn != b"keep-alive")
    length = answer.header(b"content-length")
    if length is not None:
        answer.body = f.read(int(length))
    elif (answer.header(b"transfer-encoding") or b"").lower() == b"chunked":
        parts = []
        while size := int(f.readline(1024).split(b";")[0].strip() or b"0", 16):
            parts.append(f.read(size))
            f.readline(16)
        f.readline(16)
        answer.body = b"".join(parts)
    else:
        answer.body, keep = f.read(), False
    return answer, keep


def raw_post(
    path: bytes, body: bytes, host: bytes = b"localhost", key: str = "", extra: bytes = b""
) -> bytes:
    """A raw POST of ``body`` (any bytes) with a correct content-length; ``extra`` is more header lines."""
    head = [
        b"POST " + path + b" HTTP/1.1",
        b"host: " + host,
        b"authorization: Bearer " + key.encode(),
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
    ]
    return b"\r\n".join(head) + b"\r\n" + extra + b"\r\n" + body


def chat_request(
    path: bytes, marker: str, host: bytes = b"localhost", key: str = "", extra: bytes = b""
) -> bytes:
    """A raw POST whose first message is ``marker``."""
    body = orjson.dumps({"model": "grok-4", "messages": [{"role": "user", "content": marker}]})
    return raw_post(path, body, host, key, extra)
