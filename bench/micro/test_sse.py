"""SSE chunk relay (``SseRelay.feed``) over chunks shaped like an OpenAI-compatible engine's."""

from __future__ import annotations

import orjson
from pytest_benchmark.fixture import BenchmarkFixture

from regiongate.pipeline.sse import SseRelay

BASE = {"id": "chatcmpl-8f3a", "object": "chat.completion.chunk", "created": 1752019200, "model": "grok-4"}


def _event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def stream(n: int = 200) -> list[bytes]:
    """n content chunks, the finish chunk, the usage-only chunk the gateway asked for, [DONE]: one event per
    read, as engines flush them token by token."""
    out = [
        _event({**BASE, "choices": [{"index": 0, "delta": {"content": " token"}, "finish_reason": None}]})
    ] * n
    out.append(_event({**BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    usage = {"prompt_tokens": 30, "completion_tokens": n, "total_tokens": 30 + n}
    out.append(_event({**BASE, "choices": [], "usage": usage}))
    out.append(b"data: [DONE]\n\n")
    return out


CHUNKS = stream()


def _relay_all(chunks: list[bytes], strip_usage: bool) -> int:
    relay = SseRelay(strip_usage=strip_usage)
    n = 0
    for c in chunks:
        n += len(relay.feed(c))
    return n + len(relay.flush())


def test_feed_one_chunk(benchmark: BenchmarkFixture) -> None:
    """One content event: the per-chunk cost on the hot path."""
    relay = SseRelay(strip_usage=True)
    out = benchmark(relay.feed, CHUNKS[0])
    assert out == CHUNKS[0]


def test_stream_200_events_one_per_read(benchmark: BenchmarkFixture) -> None:
    """A whole 200-chunk stream, usage chunk stripped (the client did not ask for it)."""
    size = benchmark(_relay_all, CHUNKS, True)
    # Without the usage chunk and [DONE] (the gateway ends the stream itself).
    assert size == sum(map(len, CHUNKS)) - len(CHUNKS[-2]) - len(CHUNKS[-1])


def test_stream_200_events_coalesced(benchmark: BenchmarkFixture) -> None:
    """The same stream arriving in 4 KiB reads that split events (a busy proxy reads several at once)."""
    blob = b"".join(CHUNKS)
    reads = [blob[i : i + 4096] for i in range(0, len(blob), 4096)]
    size = benchmark(_relay_all, reads, True)
    assert size == len(blob) - len(CHUNKS[-2]) - len(CHUNKS[-1])


def test_stream_200_events_crlf(benchmark: BenchmarkFixture) -> None:
    """An engine that frames events with CRLF (normalised to LF on the way through)."""
    crlf = [c.replace(b"\n", b"\r\n") for c in CHUNKS]
    assert benchmark(_relay_all, crlf, True) > 0
