"""Token counts for an answer whose backend reported none, so usage is never silently zero (docs/backends.md).

A stream whose backend ignores ``stream_options.include_usage`` (llama-cpp-python) or an answer without
``usage`` is counted here instead, and the record says so (``estimated``). There is no tokenizer of the
model in the gateway, so the counts are a documented estimate:

- prompt tokens: four characters a token over the text of the messages (or prompt, input, instructions),
  plus one a message (``upstream.simulated.count_prompt_tokens``: what token rate limits charge up front);
- completion tokens, stream: ``max(delta events, ceil(chars / 4))``: vLLM, SGLang and llama.cpp send about
  one token per content delta, and a server that batches tokens into fewer events still gets its text's
  share;
- completion tokens, whole answer: ``ceil(chars / 4)`` of its text (content, reasoning, tool-call names and
  arguments; Responses ``output`` text; Anthropic ``content`` text), at least 1 when it has any.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from regiongate.upstream.simulated import count_prompt_tokens

CHARS_PER_TOKEN = 4
# The routes whose answers are metered in tokens (not /tokenize, images, ...).
COUNTED = frozenset({"/chat/completions", "/completions", "/responses", "/messages", "/embeddings"})


def reported(usage: dict[str, Any] | None) -> bool:
    """The backend's usage has both counts (chat completions' names or the Responses / Anthropic ones)."""
    if not usage:
        return False
    p = usage.get("prompt_tokens", usage.get("input_tokens"))
    c = usage.get("completion_tokens", usage.get("output_tokens"))
    return isinstance(p, int) and isinstance(c, int)


def estimated(
    payload: dict[str, Any], completion: int, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A usage dict flagged ``estimated``; a count the backend did report is kept."""
    out: dict[str, Any] = {
        "prompt_tokens": count_prompt_tokens(payload),
        "completion_tokens": completion,
        "estimated": True,
    }
    for ours, theirs in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
        v = (usage or {}).get(ours, (usage or {}).get(theirs))
        if isinstance(v, int):
            out[ours] = v
    return out


def of_chars(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def for_stream(
    payload: dict[str, Any], deltas: int, chars: int, usage: dict[str, Any] | None
) -> dict[str, Any]:
    return estimated(payload, max(deltas, of_chars(chars)), usage)


def for_answer(
    payload: dict[str, Any], answer: dict[str, Any] | None, usage: dict[str, Any] | None
) -> dict[str, Any]:
    chars = _chars(answer) if answer is not None else 0
    return estimated(payload, max(of_chars(chars), 1) if chars else 0, usage)


def usage_event(first: dict[str, Any] | None, usage: dict[str, Any]) -> bytes:
    """The usage chunk a client asked for (``stream_options.include_usage``) and the backend never sent:
    the estimate, flagged ``estimated``, in the stream's own id, model and object."""
    base = first or {}
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    obj: dict[str, Any] = {
        **{k: base[k] for k in ("id", "object", "created", "model") if k in base},
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "estimated": True,
        },
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chars(answer: dict[str, Any]) -> int:
    n = 0
    for c in answer.get("choices") or ():  # chat and legacy completions
        if not isinstance(c, dict):
            continue
        n += _text_len(c.get("text"))
        msg = c.get("message")
        if isinstance(msg, dict):
            n += _text_len(msg.get("content")) + _text_len(msg.get("reasoning_content"))
            for call in msg.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    n += _text_len(fn.get("name")) + _text_len(fn.get("arguments"))
    for item in answer.get("output") or ():  # Responses
        if isinstance(item, dict):
            n += sum(_text_len(p.get("text")) for p in item.get("content") or () if isinstance(p, dict))
            n += _text_len(item.get("arguments"))
    if answer.get("type") == "message":  # Anthropic Messages
        n += sum(_text_len(p.get("text")) for p in answer.get("content") or () if isinstance(p, dict))
    return n


def _text_len(v: object) -> int:
    return len(v) if isinstance(v, str) else 0
