"""``asgi.stream_response``: the stream is sent whole, a client that leaves stops it even while the source is
silent, a cancellation from outside still cancels, and ``aclose`` runs every time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from regiongate.asgi import stream_response


class Client:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.leave = asyncio.Event()
        self.closed = 0
        self.first_chunk = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)
        if msg.get("body"):
            self.first_chunk.set()

    async def aclose(self) -> None:
        self.closed += 1


async def source(silent: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    yield b"a"
    if silent is not None:
        await silent.wait()
    yield b"b"


async def test_a_whole_stream_is_sent_and_the_caller_goes_on_uncancelled() -> None:
    c = Client()
    await stream_response(c.receive, c.send, [], source(), c.aclose)
    assert [m.get("body") for m in c.sent] == [None, b"a", b"b", b""] and c.closed == 1
    c.leave.set()  # the disconnect that follows every response cancels nothing any more
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_a_client_leaving_while_the_source_is_silent_stops_the_stream_at_once() -> None:
    c = Client()
    silent = asyncio.Event()  # never set: only the disconnect can end this stream
    chunks = source(silent)
    task = asyncio.ensure_future(stream_response(c.receive, c.send, [], chunks, c.aclose))
    await c.first_chunk.wait()
    c.leave.set()
    await task  # returns, as after a finished stream
    assert [m.get("body") for m in c.sent] == [None, b"a"] and c.closed == 1
    assert not task.cancelled()
    with pytest.raises(StopAsyncIteration):
        await anext(chunks)  # the source was closed


async def test_a_cancellation_from_outside_still_cancels_and_closes() -> None:
    c = Client()
    task = asyncio.ensure_future(stream_response(c.receive, c.send, [], source(asyncio.Event()), c.aclose))
    await c.first_chunk.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert c.closed == 1
