"""The upstream seam: one protocol that every backend kind implements (like httpx's transports).

The gateway hands a backend an ``UpstreamCall`` (OpenAI-shaped JSON, the lingua franca inside) and gets an
``UpstreamResponse`` back once the backend has answered with a status. A failure the gateway may fail over
(refused, timed out, 5xx, 429) raises ``UpstreamFailure``; any other non-2xx is a final answer to relay.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson


class UpstreamFailure(Exception):
    """The backend did not answer usefully before its first byte; another candidate may be tried.

    ``transient``: a 5xx or a connection reset, worth one more try on the same backend when it is the only
    one the request may use; ``busy_s``: it answered 429 asking not to be sent anything for that long
    (``Retry-After`` / ``retry-after-ms``), which is not a health failure; ``message``: the error message of
    a 5xx answer's body, shown to the client when no backend answers, never logged (it may quote the
    prompt)."""

    def __init__(
        self,
        backend: str,
        reason: str,
        *,
        status: int | None = None,
        transient: bool = False,
        busy_s: float | None = None,
        message: str | None = None,
    ) -> None:
        super().__init__(f"{backend}: {reason}")
        self.backend = backend
        self.reason = reason
        self.message = message  # what the backend said (its error body's message), for the client only
        self.status = status
        self.transient = transient
        self.busy_s = busy_s


@dataclass(slots=True)
class UpstreamCall:
    path: str  # below /v1, e.g. "/chat/completions"
    body: bytes  # the JSON body to send as is
    payload: dict[str, Any]  # the same body parsed (the simulated engine reads it; HTTP forwards ``body``)
    stream: bool
    request_id: str
    headers: list[tuple[str, str]] = field(default_factory=list)  # extra headers worth forwarding
    first_byte_s: float | None = None  # this call's budget for the first byte (default: the backend's)


class TimedChunks(AsyncIterator[bytes]):
    """A streaming answer's chunks whose waits the iterator bounds itself: a wait for the next bytes that
    lasts ``within_s`` (set before each ``__anext__``; None: unbounded) raises ``TimeoutError``. An adapter
    whose connection keeps a timer anyway (``upstream.h1``) bounds them with it, so the gateway needs no
    ``asyncio.timeout`` per chunk (about 3.7k instructions each); other iterators are bounded by the
    caller (``next_chunk``)."""

    __slots__ = ("within_s",)

    def __init__(self) -> None:
        self.within_s: float | None = None

    async def aclose(self) -> None:  # pragma: no cover - each adapter frees its connection
        raise NotImplementedError


async def next_chunk(chunks: AsyncIterator[bytes], within_s: float) -> bytes:
    """The next chunk of ``chunks``, waited for at most ``within_s`` (``TimeoutError`` past it;
    ``StopAsyncIteration`` at the end of the body)."""
    if isinstance(chunks, TimedChunks):
        chunks.within_s = within_s
        return await chunks.__anext__()
    async with asyncio.timeout(within_s):
        return await anext(chunks)


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    content_type: str
    body: bytes = b""  # non-streaming answer
    chunks: AsyncIterator[bytes] | None = None  # streaming answer: raw SSE bytes as they arrive
    closer: Any = None  # awaitable factory that frees the upstream connection
    parsed: dict[str, Any] | None = None  # the body already parsed by the backend adapter, when it had to

    async def aclose(self) -> None:
        if self.chunks is not None:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        if self.closer is not None:
            closer, self.closer = self.closer, None
            await closer()


MESSAGE_MAX = 500  # characters of a backend's error message passed on


def error_message(body: bytes) -> str | None:
    """The message of an error body as OpenAI (``{"error": {"message"}}``), vLLM and SGLang (``{"object":
    "error", "message"}``) or FastAPI (``{"detail"}``) write it, else its text; one line, bounded."""
    text: object = None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace")
    else:
        if isinstance(obj, dict):
            err = obj.get("error")
            text = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None
            if text is None:
                text = obj.get("message", obj.get("detail"))
        if text is not None and not isinstance(text, str):
            text = orjson.dumps(text).decode()
    if not isinstance(text, str):
        return None
    line = " ".join(text.split())  # no CR/LF or control runs reach a header or a log line
    return (line[:MESSAGE_MAX] + "…" if len(line) > MESSAGE_MAX else line) or None


class Upstream(Protocol):
    id: str
    first_byte_timeout_s: float  # the ceiling of a stream's first-byte budget
    first_byte_floor_s: float
    first_byte_factor: float
    idle_timeout_s: float

    @property
    def base_url(self) -> str | None:
        """Where a remote backend answers; None for an engine in this process."""
        ...

    async def send(self, call: UpstreamCall) -> UpstreamResponse: ...

    async def probe(self, path: str, timeout_s: float) -> bool | None:
        """True when the backend answered ``GET <path>`` in time (an in-process engine always does), None
        when it did not answer in time, False when it failed."""
        ...

    def metrics_text(self, model: str) -> str | None:
        """An in-process engine's load as Prometheus text; None for a remote backend, whose load is read
        from its own metrics URL."""
        ...

    async def aclose(self) -> None: ...
