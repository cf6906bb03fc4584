"""The service tier of one request: read from what the client sent, resolved against its key and team,
and written back into the answer (``service_tier`` field and header). The admission rules themselves are
pure and live in ``regiongate.core.tiers``; this is the adapter half shared by REST and gRPC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from regiongate.core import ClientError, Tier
from regiongate.core.request import Access
from regiongate.core.tiers import CLIENT_VALUES, resolve

TIER_HEADER = "x-regiongate-service-tier"  # the tier a request ran at; gRPC: also how a client asks for flex
# The answers that carry ``service_tier`` in their body, as OpenAI's do.
STAMPED_PATHS = frozenset({"/chat/completions", "/completions", "/responses"})


def requested(payload: dict[str, Any]) -> str | None:
    """The client's ``service_tier``, validated (400 ``invalid_value`` naming the field otherwise)."""
    value = payload.get("service_tier")
    if value is None:
        return None
    if not isinstance(value, str) or value not in CLIENT_VALUES:
        raise ClientError(
            f"Field 'service_tier' must be one of {', '.join(CLIENT_VALUES)}; got {_shown(value)}.",
            code="invalid_value",
            param="service_tier",
        )
    return value


def tier_of(payload: dict[str, Any], access: Access) -> Tier:
    """The tier the request runs at: what it asked (``auto`` or nothing: the key's default), or 403 when
    the team may not use it."""
    asked = requested(payload)
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


def stamp(body: bytes, tier: Tier) -> bytes:
    """``body`` (a JSON object answer) with ``service_tier`` set to the tier it ran at, as OpenAI answers;
    left as it is when it already says so or is not a JSON object."""
    if b'"service_tier":"' + tier.encode() + b'"' in body:
        return body
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(obj, dict):
        return body
    obj["service_tier"] = tier.value
    return orjson.dumps(obj)


async def stamp_events(chunks: AsyncIterator[bytes], tier: Tier) -> AsyncIterator[bytes]:
    """A chat completions stream with ``service_tier`` in every chunk that lacks it, as OpenAI streams it:
    a byte substitution at the start of each event's JSON, never a re-encoding."""
    field = b'"service_tier":"' + tier.encode() + b'",'
    try:
        async for chunk in chunks:
            if b'"service_tier"' not in chunk:
                chunk = chunk.replace(b"data: {", b"data: {" + field).replace(b"data:{", b"data:{" + field)
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _shown(value: object) -> str:
    text = orjson.dumps(value).decode() if isinstance(value, str | int | float | bool) else type(value).__name__
    return text[:40]
