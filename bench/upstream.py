"""A fast fake OpenAI-compatible upstream for the benchmark: a raw asyncio Protocol HTTP/1.1 server on uvloop
with precomputed responses, so that it is never the bottleneck of what it measures.

    python -m bench.upstream --port 9100 [--gap soon|burst|<ms>]

``POST .../chat/completions`` answers from the request body:

- ``model``: ``*-<N>ms`` (e.g. ``bench-50ms``) waits N ms before the first byte (the upstream's own latency);
- ``stream``: true sends an SSE stream of ``max_tokens`` content chunks (default 20), a finish chunk, a usage
  chunk when ``stream_options.include_usage`` is true, and ``data: [DONE]``; false sends one JSON completion;
- every chunk of a stream is its own write (``--gap soon``, as an engine emits tokens one by one), or the
  whole stream is one write (``--gap burst``), or chunks are ``--gap <ms>`` apart.

``GET /health`` (and anything else that is a GET) answers 200. Responses for a (model, chunks, usage) triple
are built once and cached. Only ``Content-Length`` request bodies are read (every proxy measured sends them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
from collections.abc import Callable

import orjson

CREATED = 1752019200
LATENCY_RE = re.compile(r"-(\d+)ms$")
DEFAULT_CHUNKS = 20
MAX_CHUNKS = 10_000
HEALTH = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{"status":"ok"}'
BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _completion(model: str, n: int) -> bytes:
    body = orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(["token"] * n)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n},
        }
    )
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _chunked(event: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(event), event)


def _stream(model: str, n: int, usage: bool) -> list[bytes]:
    """The stream as HTTP/1.1 chunked writes: [headers + first event, event, ..., last event + terminator]."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED, "model": model}
    events = []
    for i in range(n):
        # Distinct contents: LiteLLM cuts a stream that repeats one chunk 100 times (its loop guard).
        delta = {"role": "assistant", "content": "tok0"} if i == 0 else {"content": f" tok{i}"}
        events.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        events.append(
            {
                **base,
                "choices": [],
                "usage": {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n},
            }
        )
    writes = [_chunked(b"data: " + orjson.dumps(e) + b"\n\n") for e in events]
    writes[-1] += _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
    writes[0] = head + writes[0]
    return writes


class Answers:
    """Precomputed responses, built on first use per (model, stream, chunks, usage)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, bool, int, bool], tuple[float, list[bytes]]] = {}
        self._by_body: dict[bytes, tuple[float, list[bytes]]] = {}  # a benchmark repeats one body

    def get(self, body: bytes) -> tuple[float, list[bytes]] | None:
        hit = self._by_body.get(body)
        if hit is None:
            hit = self._parse(body)
            if hit is not None and len(self._by_body) < 1024:
                self._by_body[body] = hit
        return hit

    def _parse(self, body: bytes) -> tuple[float, list[bytes]] | None:
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(req, dict):
            return None
        model = str(req.get("model") or "bench")
        stream = req.get("stream") is True
        n = req.get("max_tokens") or req.get("max_completion_tokens") or DEFAULT_CHUNKS
        n = min(max(int(n), 1), MAX_CHUNKS) if isinstance(n, int) else DEFAULT_CHUNKS
        opts = req.get("stream_options")
        usage = stream and isinstance(opts, dict) and opts.get("include_usage") is True
        key = (model, stream, n, usage)
        hit = self._cache.get(key)
        if hit is None:
            m = LATENCY_RE.search(model)
            delay = int(m.group(1)) / 1000.0 if m else 0.0
            hit = (delay, _stream(model, n, usage) if stream else [_completion(model, n)])
            if len(self._cache) < 1024:
                self._cache[key] = hit
        return hit


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive with pipelining; requests on one connection are answered in order."""

    def __init__(self, answers: Answers, gap: str | float) -> None:
        self.answers = answers
        self.gap = gap
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a delayed or chunk-by-chunk answer is being written
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transport is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.busy:
            self._drain()

    def _drain(self) -> None:
        while self.transport is not None and not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            lower = head.lower()
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i + 2)
                length = int(lower[i + 17 : j if j >= 0 else len(lower)].strip())
            elif b"\r\ntransfer-encoding:" in lower:
                self.transport.write(BAD)
                self.transport.close()
                return
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = self.buf[end + 4 : total]
            self.buf = self.buf[total:]
            if head.startswith(b"POST"):
                answer = self.answers.get(body)
                if answer is None:
                    self.transport.write(BAD)
                    self.transport.close()
                    return
                self._answer(*answer)
            else:
                self.transport.write(HEALTH)

    def _answer(self, delay: float, writes: list[bytes]) -> None:
        t = self.transport
        assert t is not None
        if delay <= 0 and (len(writes) == 1 or self.gap == "burst"):
            t.write(writes[0] if len(writes) == 1 else b"".join(writes))
            return
        self.busy = True
        if delay > 0:
            self.loop.call_later(delay, self._write_from, writes, 0)
        else:
            self._write_from(writes, 0)

    def _write_from(self, writes: list[bytes], i: int) -> None:
        t = self.transport
        if t is None:
            return
        if self.gap == "burst":
            t.write(b"".join(writes[i:]))
            i = len(writes)
        else:
            t.write(writes[i])
            i += 1
        if i < len(writes):
            if isinstance(self.gap, float) and self.gap > 0:
                self.loop.call_later(self.gap, self._write_from, writes, i)
            else:
                self.loop.call_soon(self._write_from, writes, i)
            return
        self.busy = False
        if self.buf:
            self._drain()


async def serve(host: str, port: int, gap: str | float, ready: Callable[[int], None] | None = None) -> None:
    answers = Answers()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpProtocol(answers, gap), host, port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(bound)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def _gap(v: str) -> str | float:
    return v if v in ("soon", "burst") else float(v) / 1000.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--gap", default="soon", help="soon | burst | milliseconds between stream chunks")
    args = p.parse_args()
    import uvloop

    def ready(port: int) -> None:
        print(f"bench-upstream listening on {args.host}:{port} pid {os.getpid()}", flush=True)

    uvloop.run(serve(args.host, args.port, _gap(args.gap), ready))


if __name__ == "__main__":
    main()
