"""Small ASGI helpers: read a bounded body, send JSON and OpenAI-shaped errors. No framework on the hot
path: a raw ASGI callable measured fastest (see docs/bench/README.md, "Choosing the hot path's building blocks by measurement")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from regiongate.core import RouteError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = b"application/json"
REFUSED = "regiongate.refused"  # scope key set by the listener (front/edge.py): over the connection cap


class BodyTooLarge(Exception):
    pass


def header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


def headers_of(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    if declared is not None and declared > limit:
        raise BodyTooLarge
    chunks = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ConnectionError("client went away while sending the body")
        chunk = msg.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not msg.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, obj: Any, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_bytes(send, status, orjson.dumps(obj), JSON, extra)


def error_headers(err: RouteError, request_id: str) -> list[tuple[bytes, bytes]]:
    extra = [(b"x-request-id", request_id.encode())]
    extra.extend((k.encode(), v.encode()) for k, v in err.headers)
    if err.retry_after is not None:
        secs = max(1, round(err.retry_after))
        extra.append((b"retry-after", str(secs).encode()))
        extra.append((b"retry-after-ms", str(int(err.retry_after * 1000)).encode()))
    return extra


async def send_error(send: Send, err: RouteError, request_id: str) -> None:
    await send_json(send, err.status, err.body(), error_headers(err, request_id))


def client_error(
    status: int, message: str, code: str, param: str | None = None, type: str | None = None
) -> RouteError:
    from regiongate.core.errors import ClientError

    return ClientError(message, code=code, status=status, param=param, type=type)


async def stream_response(
    receive: Receive,
    send: Send,
    headers: list[tuple[bytes, bytes]],
    chunks: AsyncIterator[bytes],
    aclose: Callable[[], Awaitable[None]],
) -> None:
    """Send a 200 stream; a client that goes away cancels it at once, even while the source is silent,
    and ``aclose`` always runs (it frees the capacity lease or the engine's slot).

    The stream is pumped in the caller's task; one watcher task waits for the disconnect and cancels the
    pump (a cancellation it caused is taken back: the caller returns as after a finished stream). A task
    and a wait fewer per stream than pump and watcher as two tasks."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def disconnected() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        if not pumped:
            gone = True
            task.cancel()

    pumped = False
    watching = asyncio.ensure_future(disconnected())
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()  # the watcher's: the client left
    except Exception:
        pass  # the source or the client broke mid-stream: nothing more can be sent on it
    finally:
        pumped = True
        watching.cancel()
        try:
            await asyncio.gather(watching, return_exceptions=True)
        finally:
            await aclose()
