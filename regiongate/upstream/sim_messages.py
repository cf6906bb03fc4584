"""The simulated engine's Anthropic Messages dialect (``/v1/messages``).

A message holds one content block: ``text``, or ``tool_use`` (its ``input`` an object that satisfies the
tool's ``input_schema``) when a tool is called. ``stop_reason`` is ``end_turn``, ``max_tokens``,
``stop_sequence`` (with ``stop_sequence`` set) or ``tool_use``. The stream is Anthropic's event flow:
``message_start``, ``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta`` or
``input_json_delta``)..., ``content_block_stop``, ``message_delta`` (stop reason and output usage), and last
``message_stop``. Errors use Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson

from regiongate.upstream.sim_reply import (
    Ask,
    BadRequest,
    Choice,
    Turn,
    choose_tool,
    last_user_text,
    positive_int,
    seed_of,
    stops_of,
    tools_of,
)

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_MODES = {"auto": "auto", "any": "required", "none": "none"}


def _has_tool_result(msg: Any) -> bool:
    content = msg.get("content") if isinstance(msg, dict) else None
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


class Messages:
    path = "/messages"

    @staticmethod
    def error(message: str, param: str | None) -> dict[str, Any]:
        where = f"{param}: " if param else ""
        return {"type": "error", "error": {"type": "invalid_request_error", "message": where + message}}

    @staticmethod
    def ask(payload: dict[str, Any]) -> Ask:
        msgs = payload.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("'messages' must be a non-empty array.", "messages")
        limit = positive_int(payload, "max_tokens")
        if limit is None:
            raise BadRequest("'max_tokens' is required and must be a positive integer.", "max_tokens")
        ask = Ask(
            str(payload.get("model", "")),
            seed_of(msgs),
            limit,
            stop=stops_of(payload.get("stop_sequences"), "stop_sequences"),
        )
        ask.tools = tools_of(payload.get("tools"), "tools", "name", "input_schema")
        raw = payload.get("tool_choice") or {"type": "auto"}
        kind = raw.get("type") if isinstance(raw, dict) else None
        if kind not in ("auto", "any", "none", "tool"):
            raise BadRequest("'tool_choice.type' must be 'auto', 'any', 'tool' or 'none'.", "tool_choice")
        named = raw.get("name") if kind == "tool" else None
        if kind == "tool" and not isinstance(named, str):
            raise BadRequest("'tool_choice' of type 'tool' must give its 'name'.", "tool_choice")
        mode = _MODES.get(str(kind), "auto")
        ask.tool_choice = choose_tool(mode, named, ask.tools, _has_tool_result(msgs[-1]), "tool_choice")
        ask.last_user_text = last_user_text(msgs)
        return ask

    @staticmethod
    def body(turn: Turn) -> dict[str, Any]:
        c = turn.choices[0]
        msg = _message(turn, f"msg_{uuid.uuid4().hex[:24]}", [_block(c)])
        msg["stop_reason"], msg["stop_sequence"] = _stop_reason(c), c.stop_sequence
        msg["usage"]["output_tokens"] = turn.completion_tokens
        return msg

    @staticmethod
    def events(turn: Turn) -> Iterator[bytes]:
        c = turn.choices[0]

        def ev(kind: str, **fields: Any) -> bytes:
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"

        start = _message(turn, f"msg_{uuid.uuid4().hex[:24]}", [])
        start["usage"]["output_tokens"] = 1
        empty = {"type": "text", "text": ""} if c.call is None else {**_block(c), "input": {}}
        head = [
            ev("message_start", message=start),
            ev("content_block_start", index=0, content_block=empty),
            ev("ping"),
        ]
        last = len(c.tokens) - 1
        for step, tok in enumerate(c.tokens):
            out = head if step == 0 else []
            if c.call is None:
                delta = {"type": "text_delta", "text": tok}
            else:
                delta = {"type": "input_json_delta", "partial_json": tok}
            out.append(ev("content_block_delta", index=0, delta=delta))
            if step == last:
                reason = _stop_reason(c)
                out.append(ev("content_block_stop", index=0))
                out.append(
                    ev(
                        "message_delta",
                        delta={"stop_reason": reason, "stop_sequence": c.stop_sequence},
                        usage={"output_tokens": turn.completion_tokens},
                    )
                )
                out.append(ev("message_stop"))
            yield b"".join(out)


def _stop_reason(c: Choice) -> str:
    return "stop_sequence" if c.stop_sequence is not None else _STOP[c.finish]


def _block(c: Choice) -> dict[str, Any]:
    if c.call is None:
        return {"type": "text", "text": c.text}
    try:
        value = orjson.loads(c.call.arguments)
    except orjson.JSONDecodeError:  # cut by max_tokens: what was generated is not an object yet
        value = {}
    return {"type": "tool_use", "id": "toolu_" + c.call.id[5:], "name": c.call.name, "input": value}


def _message(turn: Turn, mid: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": turn.ask.model,
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": turn.prompt_tokens,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
