"""Server-sent events as the OpenAI API frames them: ``data: <json>\\n\\n`` ... ``data: [DONE]\\n\\n``.

``SseRelay`` passes upstream bytes through event by event, without re-encoding, while it picks up the
``usage`` object and, when the gateway asked the backend for usage that the client did not ask for, drops
the usage-only chunk (or the ``usage`` key) so the client sees exactly what it requested.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
# The Responses API's and Anthropic's Messages streams have no [DONE]: one of these events is their last.
STREAM_END = frozenset({"response.completed", "response.incomplete", "response.failed", "message_stop"})


def event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _split(buf: bytes) -> tuple[list[bytes], bytes]:
    events: list[bytes] = []
    start = 0
    while True:
        end = buf.find(b"\n\n", start)
        if end < 0:
            return events, buf[start:]
        events.append(buf[start : end + 2])
        start = end + 2


def data_of(ev: bytes) -> bytes | None:
    """The payload of a ``data:`` event (multi-line data joined), or None for comments and other fields."""
    out = []
    for line in ev.strip(b"\r\n").split(b"\n"):
        line = line.rstrip(b"\r")
        if line.startswith(b"data:"):
            out.append(line[5:].lstrip(b" "))
    return b"\n".join(out) if out else None


def iter_json_events(raw: bytes) -> Iterator[dict[str, Any]]:
    """Decode complete events (for adapters that translate, like gRPC)."""
    events, _ = _split(raw.replace(b"\r\n", b"\n"))
    for ev in events:
        data = data_of(ev)
        if data and data != b"[DONE]":
            obj = orjson.loads(data)
            if isinstance(obj, dict):
                yield obj


class SseRelay:
    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.errored = False
        self._buf = b""
        self._crlf = False

    def feed(self, chunk: bytes) -> bytes:
        # Fast path, the common read: whole events that need no change pass through as the same bytes.
        if (
            not self._buf
            and not self._crlf
            and chunk.endswith(b"\n\n")
            and b'"usage"' not in chunk
            and b'"error"' not in chunk
            and b"[DONE]" not in chunk
            and b'"message_stop"' not in chunk
            and b"\r" not in chunk
        ):
            return chunk
        if self._crlf or b"\r" in chunk:
            self._crlf = True
            chunk = chunk.replace(b"\r\n", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        events, self._buf = _split(buf)
        if not events:
            return b""
        if len(events) == 1:
            return self._one(events[0])
        return b"".join(self._one(ev) for ev in events)

    def _one(self, ev: bytes) -> bytes:
        if ev.startswith(DONE):
            self.done = True
            return ev
        if b'"usage"' not in ev and b'"error"' not in ev and b'"message_stop"' not in ev:
            return ev
        data = data_of(ev)
        if not data or data == b"[DONE]":
            return ev
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return ev
        if not isinstance(obj, dict):
            return ev
        if "error" in obj:
            self.errored = True
        kind = obj.get("type")
        if isinstance(kind, str) and kind in STREAM_END:  # such a stream ends with its final event
            self.done = True
            self.errored = self.errored or kind == "response.failed"
            final = obj.get("response")
            if isinstance(final, dict) and isinstance(final.get("usage"), dict):
                self.usage = final["usage"]
            return ev
        if kind == "error":
            self.errored = True
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            if self.strip_usage:
                if not obj.get("choices"):
                    return b""
                obj.pop("usage")
                return event(obj)
        return ev

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest
