"""The service tier of one request: read from what the client sent, resolved against its key and team,
and written back into the answer (``service_tier`` field and header). The admission rules themselves are
pure and live in ``regiongate.core.tiers``; this is the adapter half shared by REST and gRPC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from regiongate.core import ClientError, Tier
from regiongate.core.request import Access
from regiongate.core.tiers import CLIENT_VALUES, resolve

TIER_HEADER = "x-regiongate-service-tier"  # the tier a request ran at; gRPC: also how a client asks for flex
# The answers whose API defines a tier in them: OpenAI's chat completion and Response objects
# (``service_tier``; its legacy completion object has none) and Anthropic's message (``usage.service_tier``)
STAMPED_PATHS = frozenset({"/chat/completions", "/responses", "/messages"})
# Anthropic's own request values: "standard_only" keeps a request off priority capacity
_ANTHROPIC_ASKED = {"standard_only": "default"}


def requested(payload: dict[str, Any], path: str = "") -> str | None:
    """The client's ``service_tier``, validated (400 ``invalid_value`` naming the field otherwise)."""
    value = payload.get("service_tier")
    if value is None:
        return None
    if path == "/messages" and isinstance(value, str):
        value = _ANTHROPIC_ASKED.get(value, value)
    if not isinstance(value, str) or value not in CLIENT_VALUES:
        raise ClientError(
            f"Field 'service_tier' must be one of {', '.join(CLIENT_VALUES)}; got {_shown(value)}.",
            code="invalid_value",
            param="service_tier",
        )
    return value


def tier_of(payload: dict[str, Any], access: Access, path: str = "") -> Tier:
    """The tier the request runs at: what it asked (``auto`` or nothing: the key's default), or 403 when
    the team may not use it."""
    asked = requested(payload, path)
    tier = resolve(asked, access.tier, access.tiers)
    if tier is None:
        allowed = ", ".join(sorted(access.tiers or ())) or "none"
        why = "this key's default" if asked in (None, "auto") else "asked for"
        raise ClientError(
            f"Service tier '{asked if asked not in (None, 'auto') else access.tier}' ({why}) is not allowed "
            f"for this team; allowed: {allowed}.",
            code="service_tier_not_allowed",
            status=403,
            type="permission_error",
            param="service_tier",
        )
    return tier


def anthropic_tier(tier: Tier) -> str:
    """Anthropic's ``usage.service_tier`` for a tier: ``priority`` (it may take the reserve) or ``standard``
    (Anthropic's API has no flex; the header says which regiongate tier it was)."""
    return "priority" if tier is Tier.PRIORITY else "standard"


def stamp(
    body: bytes, tier: Tier, path: str = "/chat/completions", parsed: dict[str, Any] | None = None
) -> bytes:
    """``body`` (a JSON object answer) with its tier set to the one it ran at, where its API defines it:
    ``service_tier`` (OpenAI) or ``usage.service_tier`` (Anthropic's messages); left as it is when it
    already says so or is not a JSON object. ``parsed``: ``body`` already parsed, when the caller has it
    (the HTTP backend validates every answer): a top-level member it lacks is then added as the object's
    last, the answer's own bytes kept, instead of parsing and encoding it all again."""
    value = anthropic_tier(tier) if path == "/messages" else tier.value
    said = b'"service_tier":"' + value.encode() + b'"'
    if said in body:
        return body
    if parsed is not None and path != "/messages" and "service_tier" not in parsed:
        head = body.rstrip()
        if head.endswith(b"}"):
            head = head[:-1].rstrip()
            return head + (b"" if head.endswith(b"{") else b",") + said + b"}"
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(obj, dict):
        return body
    if path == "/messages":
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            return body
        usage["service_tier"] = value
    else:
        obj["service_tier"] = value
    return orjson.dumps(obj)


def event_stamper(path: str, tier: Tier, asked: bool) -> Callable[[bytes], bytes] | None:
    """How a stream's events get the tier, as each API streams it, or None: every chat completions
    chunk (only when the client asked for a tier, as OpenAI does), the ``response`` object of the
    Responses API's lifecycle events (``response.created`` ... ``response.completed``), the
    ``message.usage`` of Anthropic's ``message_start``. A byte substitution in events that do not already
    say a tier, never a re-encoding."""
    if path == "/chat/completions":
        if not asked:
            return None
        field = b'"service_tier":"' + tier.encode() + b'",'

        def chat(chunk: bytes) -> bytes:
            if b'"service_tier"' in chunk:
                return chunk
            # Only where a data line begins, the chunk's start or after a newline (the relay hands whole
            # events): inside a JSON string "data: {" is text the model wrote, and a newline is escaped.
            for data in (b"data: {", b"data:{"):
                chunk = chunk.replace(b"\n" + data, b"\n" + data + field)
                if chunk.startswith(data):
                    chunk = data + field + chunk[len(data) :]
            return chunk

        return chat
    if path == "/responses":
        field = b'"response":{"service_tier":"' + tier.encode() + b'",'

        def responses(chunk: bytes) -> bytes:
            if b'"response":{' not in chunk or b'"service_tier"' in chunk:
                return chunk
            return chunk.replace(b'"response":{', field)

        return responses
    if path == "/messages":
        usage = b'"usage":{"service_tier":"' + anthropic_tier(tier).encode() + b'",'

        def messages(chunk: bytes) -> bytes:
            if b'"message_start"' not in chunk or b'"service_tier"' in chunk:
                return chunk
            lines = chunk.split(b"\n")  # only message_start's usage: message_delta's has no tier
            for k, line in enumerate(lines):
                if b'"message_start"' in line:
                    lines[k] = line.replace(b'"usage":{', usage, 1)
            return b"\n".join(lines)

        return messages
    return None


async def stamp_events(
    chunks: AsyncIterator[bytes], stamper: Callable[[bytes], bytes]
) -> AsyncIterator[bytes]:
    """A stream with each chunk passed through ``stamper`` (``event_stamper``)."""
    try:
        async for chunk in chunks:
            yield stamper(chunk)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _shown(value: object) -> str:
    text = (
        orjson.dumps(value).decode() if isinstance(value, str | int | float | bool) else type(value).__name__
    )
    return text[:40]
