"""Which requests share a prompt prefix: the key under which the affinity table (``state.affinity``)
remembers where a prefix was served, and that table's use around one request.

The key is, in this order: the client's ``prompt_cache_key`` (OpenAI's field), a conversation id header
(``x-grok-conv-id``, as xAI's API takes it, or ``x-regiongate-conversation``), the ``user`` field, or else
a hash of the leading messages (the system prompt and the first user turn, which every later turn of the
conversation repeats). It is always scoped to the team and the model: one team's prefixes never steer
another's requests, and no prompt text is kept (only a digest).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

CONVERSATION_HEADERS = ("x-grok-conv-id", "x-regiongate-conversation")
CONVERSATION_HEADERS_RAW = tuple(h.encode() for h in CONVERSATION_HEADERS)  # as the REST listener reads them
_MAX_ID = 256  # longer client ids are hashed like the rest; nothing client-sized is stored as is


def prefix_key(
    path: str, payload: dict[str, Any], team: str, model: str, conversation: str | None
) -> str | None:
    """The affinity key of one request, or None when nothing in it names or repeats a prefix."""
    kind, value = _source(path, payload, conversation)
    if kind is None:
        return None
    h = hashlib.blake2b(digest_size=16)
    for part in (team, model, kind):
        h.update(part.encode())
        h.update(b"\0")
    h.update(value)
    return h.hexdigest()


def _source(path: str, payload: dict[str, Any], conversation: str | None) -> tuple[str | None, bytes]:
    explicit = payload.get("prompt_cache_key")
    if isinstance(explicit, str) and explicit:
        return "key", explicit[:_MAX_ID].encode()
    if conversation:
        return "conv", conversation[:_MAX_ID].encode()
    user = payload.get("user")
    if isinstance(user, str) and user:
        return "user", user[:_MAX_ID].encode()
    lead = _leading(path, payload)
    if lead is None:
        return None, b""
    try:
        return "lead", orjson.dumps(lead)
    except TypeError:
        return None, b""


def _leading(path: str, payload: dict[str, Any]) -> list[Any] | None:
    """The messages up to and including the first user turn (with Anthropic's ``system`` first)."""
    if path == "/responses":
        msgs = payload.get("input")
        head: list[Any] = [payload.get("instructions")] if payload.get("instructions") else []
    elif path == "/messages":
        msgs = payload.get("messages")
        head = [payload.get("system")] if payload.get("system") else []
    elif path == "/chat/completions":
        msgs = payload.get("messages")
        head = []
    else:
        return None
    if not isinstance(msgs, list) or len(msgs) < 1:
        return None
    for i, m in enumerate(msgs):
        if isinstance(m, dict) and m.get("role") == "user":
            return head + msgs[: i + 1]
    return None
