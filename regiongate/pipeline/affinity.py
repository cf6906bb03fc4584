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
# Bytes of each leading message that enter its key (with its full length): a long system prompt costs
# no more to key than a short one, and two prompts alike in both share a cache prefix anyway.
_HEAD = 2048


def prefix_key(
    path: str, payload: dict[str, Any], team: str, model: str, conversation: str | None
) -> tuple[str, bool] | None:
    """The affinity key of one request and whether to look it up, or None when nothing in it names or
    repeats a prefix. A request keyed by its leading messages that does not go on past them is a first
    turn: no earlier turn can have left its prefix anywhere, so it is only remembered, never looked up
    (single-turn traffic costs the shared table no read)."""
    found = _source(path, payload, conversation)
    if found is None:
        return None
    kind, value, later = found
    scope = f"{team}\0{model}\0{kind}\0".encode()
    return hashlib.blake2b(scope + value, digest_size=16).hexdigest(), later


def _source(path: str, payload: dict[str, Any], conversation: str | None) -> tuple[str, bytes, bool] | None:
    explicit = payload.get("prompt_cache_key")
    if isinstance(explicit, str) and explicit:
        return "key", explicit[:_MAX_ID].encode(), True
    if conversation:
        return "conv", conversation[:_MAX_ID].encode(), True
    user = payload.get("user")
    if isinstance(user, str) and user:
        return "user", user[:_MAX_ID].encode(), True
    lead = _leading(path, payload)
    if lead is None:
        return None
    parts: list[bytes] = []
    for m in lead[0]:  # each message's role, length and first _HEAD bytes: distinct enough, bounded cost
        content = m.get("content") if isinstance(m, dict) else m
        role = m.get("role") if isinstance(m, dict) else None
        text = content.encode() if isinstance(content, str) else orjson.dumps(content, default=str)
        parts.append(f"{role}\0{len(text)}\0".encode() + text[:_HEAD])
    return "lead", b"\0".join(parts), lead[1]


def _leading(path: str, payload: dict[str, Any]) -> tuple[list[Any], bool] | None:
    """The messages up to and including the first user turn (with Anthropic's ``system`` or the Responses
    API's ``instructions`` first), and whether more messages follow them."""
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
            return head + msgs[: i + 1], len(msgs) > i + 1
    return None
