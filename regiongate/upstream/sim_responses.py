"""The simulated engine's Responses API dialect (``/v1/responses``).

A response is an object ``response`` whose ``output`` holds one item: a ``message`` with one ``output_text``
part, or a ``function_call`` when a tool is called. Its stream is the documented sequence of named events,
each with a growing ``sequence_number``: ``response.created``, ``response.in_progress``,
``response.output_item.added``, (``response.content_part.added``, ``response.output_text.delta``...,
``response.output_text.done``, ``response.content_part.done``) or (``response.function_call_arguments.delta``...,
``response.function_call_arguments.done``), ``response.output_item.done``, and last ``response.completed``
(``response.incomplete`` when ``max_output_tokens`` cut it). There is no ``[DONE]``.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

from regiongate.upstream.sim_openai import openai_error
from regiongate.upstream.sim_reply import (
    DEFAULT_MAX_TOKENS,
    Ask,
    BadRequest,
    Choice,
    Turn,
    choose_tool,
    last_user_text,
    positive_int,
    seed_of,
    tools_of,
)


def _format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {}
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        return fmt["schema"] or {"type": "object"}
    raise BadRequest(
        "'text.format' must be of type 'text', 'json_object' or 'json_schema' with a 'schema'.", "text.format"
    )


class Responses:
    path = "/responses"

    @staticmethod
    def error(message: str, param: str | None) -> dict[str, Any]:
        return openai_error(message, param)

    @staticmethod
    def ask(payload: dict[str, Any]) -> Ask:
        items = payload.get("input")
        if not isinstance(items, str | list) or not items:
            raise BadRequest("'input' must be a non-empty string or array of input items.", "input")
        ask = Ask(
            str(payload.get("model", "")),
            seed_of([payload.get("instructions"), items]),
            positive_int(payload, "max_output_tokens") or DEFAULT_MAX_TOKENS,
        )
        ask.tools = tools_of(payload.get("tools"), "tools", "name", "parameters")
        raw = payload.get("tool_choice", "auto")
        named = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(raw, dict) and not isinstance(named, str):
            raise BadRequest("'tool_choice' must name a function.", "tool_choice")
        last = items[-1] if isinstance(items, list) else None
        answered = isinstance(last, dict) and last.get("type") == "function_call_output"
        ask.tool_choice = choose_tool(str(raw), named, ask.tools, answered, "tool_choice")
        ask.json = _format(payload.get("text"))
        ask.last_user_text = last_user_text(items)
        return ask

    @staticmethod
    def body(turn: Turn) -> dict[str, Any]:
        c = turn.choices[0]
        return _response(turn, f"resp_{uuid.uuid4().hex}", _status(c), [_item(c, _item_id(c), _status(c))])

    @staticmethod
    def events(turn: Turn) -> Iterator[bytes]:
        c = turn.choices[0]
        rid, iid, status = f"resp_{uuid.uuid4().hex}", _item_id(c), _status(c)
        seq = itertools.count()

        def ev(kind: str, **fields: Any) -> bytes:
            data = orjson.dumps({"type": kind, "sequence_number": next(seq), **fields})
            return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

        at = {"item_id": iid, "output_index": 0}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        head = [
            ev("response.created", response=_response(turn, rid, "in_progress", [])),
            ev("response.in_progress", response=_response(turn, rid, "in_progress", [])),
            ev("response.output_item.added", output_index=0, item=_item(c, iid, "in_progress", empty=True)),
        ]
        if c.call is None:
            head.append(ev("response.content_part.added", **at, content_index=0, part=part))
        last = len(c.tokens) - 1
        for step, tok in enumerate(c.tokens):
            out = head if step == 0 else []
            if c.call is None:
                out.append(ev("response.output_text.delta", **at, content_index=0, delta=tok, logprobs=[]))
            else:
                out.append(ev("response.function_call_arguments.delta", **at, delta=tok))
            if step == last:
                item = _item(c, iid, status)
                if c.call is None:
                    out.append(
                        ev("response.output_text.done", **at, content_index=0, text=c.text, logprobs=[])
                    )
                    out.append(
                        ev("response.content_part.done", **at, content_index=0, part={**part, "text": c.text})
                    )
                else:
                    out.append(
                        ev("response.function_call_arguments.done", **at, name=c.call.name, arguments=c.text)
                    )
                out.append(ev("response.output_item.done", output_index=0, item=item))
                final = "response.completed" if status == "completed" else "response.incomplete"
                out.append(ev(final, response=_response(turn, rid, status, [item])))
            yield b"".join(out)


def _status(c: Choice) -> str:
    return "incomplete" if c.finish == "length" else "completed"


def _item_id(c: Choice) -> str:
    return ("fc_" if c.call else "msg_") + uuid.uuid4().hex


def _item(c: Choice, iid: str, status: str, empty: bool = False) -> dict[str, Any]:
    text = "" if empty else c.text
    if c.call is not None:
        return {
            "type": "function_call",
            "id": iid,
            "call_id": c.call.id,
            "name": c.call.name,
            "arguments": text,
            "status": status,
        }
    content = [] if empty else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"type": "message", "id": iid, "status": status, "role": "assistant", "content": content}


def _response(turn: Turn, rid: str, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    p = turn.payload
    done = status != "in_progress"
    fmt = p.get("text") if isinstance(p.get("text"), dict) else {"format": {"type": "text"}}
    return {
        "id": rid,
        "object": "response",
        "created_at": turn.created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": p.get("instructions"),
        "max_output_tokens": p.get("max_output_tokens"),
        "model": turn.ask.model,
        "output": output,
        "parallel_tool_calls": p.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": p.get("temperature", 1.0),
        "text": fmt,
        "tool_choice": p.get("tool_choice", "auto"),
        "tools": p.get("tools", []),
        "top_p": p.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": _usage(turn) if done else None,
        "user": None,
        "metadata": p.get("metadata") or {},
    }


def _usage(turn: Turn) -> dict[str, Any]:
    prompt, out = turn.prompt_tokens, turn.completion_tokens
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + out,
    }
