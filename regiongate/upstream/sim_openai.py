"""The simulated engine's OpenAI dialects: ``/v1/chat/completions`` and legacy ``/v1/completions``.

Each reads its request into an ``Ask`` and renders a ``Turn`` as the API does: the completion object, or its
stream as ``data:`` events, one blob per decode step (the engine paces the blobs), ending ``data: [DONE]``.
Chat: ``n`` choices (a stream carries every index), ``stop``, ``logprobs`` / ``top_logprobs``, tool calls
(streamed as the API streams them: id, type and name once in the first delta, the arguments in pieces) and
``response_format``. Legacy: ``choices[].text``, object ``text_completion``, one or several prompts (``n``
choices each, indexed prompt by prompt), ``stop`` and ``logprobs`` (an integer: how many alternatives).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson

from regiongate.upstream.sim_reply import (
    DEFAULT_MAX_TOKENS,
    Ask,
    BadRequest,
    Choice,
    Turn,
    chat_logprobs,
    choose_tool,
    last_user_text,
    legacy_logprobs,
    positive_int,
    seed_of,
    stops_of,
    tools_of,
)

DONE = b"data: [DONE]\n\n"
MAX_TOP_LOGPROBS = 20
MAX_LEGACY_LOGPROBS = 5


def openai_error(
    message: str, param: str | None, code: str | None = "invalid_value", type: str = "invalid_request_error"
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _include_usage(payload: dict[str, Any]) -> bool:
    opts = payload.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


def _n(payload: dict[str, Any]) -> int:
    return positive_int(payload, "n") or 1


def _bounded(payload: dict[str, Any], name: str, high: int) -> int | None:
    v = payload.get(name)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= high:
        raise BadRequest(f"'{name}' must be an integer from 0 to {high}.", name)
    return v


def _head(turn: Turn, prefix: str, kind: str) -> dict[str, Any]:
    """The fields a completion and each of its stream's chunks open with."""
    return {
        "id": prefix + uuid.uuid4().hex[:24],
        "object": kind,
        "created": turn.created,
        "model": turn.ask.model,
        "system_fingerprint": turn.fingerprint,
    }


def _usage(turn: Turn) -> dict[str, Any]:
    prompt, completion = turn.prompt_tokens, turn.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "text_tokens": prompt, "image_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


class Chat:
    path = "/chat/completions"

    @staticmethod
    def error(message: str, param: str | None) -> dict[str, Any]:
        return openai_error(message, param)

    @staticmethod
    def ask(payload: dict[str, Any]) -> Ask:
        messages = payload.get("messages")
        msgs = messages if isinstance(messages, list) else []
        ask = Ask(
            str(payload.get("model", "")),
            seed_of(messages),
            positive_int(payload, "max_completion_tokens", "max_tokens") or DEFAULT_MAX_TOKENS,
            _n(payload),
            stops_of(payload.get("stop")),
            logprobs=Chat._top(payload),
        )
        if "tools" in payload or "response_format" in payload:  # the common request skips all of this
            ask.tools = tools_of(payload.get("tools"), "tools", "name", "parameters", inner="function")
            raw = payload.get("tool_choice", "auto")
            named = None
            if isinstance(raw, dict):
                fn = raw.get("function")
                named = fn.get("name") if isinstance(fn, dict) else None
                if not isinstance(named, str):
                    raise BadRequest("'tool_choice' must name a function.", "tool_choice")
            answered = bool(msgs) and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "tool"
            ask.tool_choice = choose_tool(str(raw), named, ask.tools, answered, "tool_choice")
            ask.json = _json_format(payload.get("response_format"))
            ask.last_user_text = last_user_text(msgs)
        return ask

    @staticmethod
    def _top(payload: dict[str, Any]) -> int | None:
        """How many alternatives per token (0 for logprobs alone), or None without logprobs."""
        top = _bounded(payload, "top_logprobs", MAX_TOP_LOGPROBS)
        return (top or 0) if payload.get("logprobs") is True else None

    @staticmethod
    def body(turn: Turn) -> dict[str, Any]:
        top = turn.ask.logprobs
        choices = []
        for i, c in enumerate(turn.choices):
            msg: dict[str, Any] = {
                "role": "assistant",
                "content": None if c.call else c.text,
                "refusal": None,
            }
            if c.call is not None:
                fn = {"name": c.call.name, "arguments": c.call.arguments}
                msg["tool_calls"] = [{"id": c.call.id, "type": "function", "function": fn}]
            lp = chat_logprobs(c.tokens, top) if top is not None and c.call is None else None
            choices.append({"index": i, "message": msg, "logprobs": lp, "finish_reason": c.finish})
        return {**_head(turn, "chatcmpl-", "chat.completion"), "choices": choices, "usage": _usage(turn)}

    @staticmethod
    def events(turn: Turn) -> Iterator[bytes]:
        top = turn.ask.logprobs
        head = _head(turn, "chatcmpl-", "chat.completion.chunk")

        pre, post = _frame(head)
        steps = turn.steps
        if len(turn.choices) == 1 and turn.choices[0].call is None and top is None and steps > 1:
            # The common stream (one text choice, no logprobs): each chunk framed without building a dict.
            c = turn.choices[0]
            yield pre + orjson.dumps(_chat_choice(c, 0, 0, None)) + post
            for tok in c.tokens[1:-1]:
                yield pre + _CONTENT % (0, orjson.dumps(tok)) + post
            end = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": c.finish}
            yield (
                pre
                + _CONTENT % (0, orjson.dumps(c.tokens[-1]))
                + post
                + pre
                + orjson.dumps(end)
                + post
                + _tail(head, turn)
            )
            return
        for step in range(steps):
            out = []
            for i, c in enumerate(turn.choices):
                if step >= len(c.tokens):
                    continue
                tok = c.tokens[step]
                if step and c.call is None and top is None:
                    out.append(pre + _CONTENT % (i, orjson.dumps(tok)) + post)
                else:
                    out.append(pre + orjson.dumps(_chat_choice(c, i, step, top)) + post)
                if step == len(c.tokens) - 1:
                    end = {"index": i, "delta": {}, "logprobs": None, "finish_reason": c.finish}
                    out.append(pre + orjson.dumps(end) + post)
            if step == steps - 1:
                out.append(_tail(head, turn))
            yield b"".join(out)
        if not steps:
            yield _tail(head, turn)


_CONTENT = b'{"index":%d,"delta":{"content":%b},"logprobs":null,"finish_reason":null}'


def _frame(head: dict[str, Any]) -> tuple[bytes, bytes]:
    """The bytes around one choice of a chunk: the chunk's fixed fields are encoded once per stream."""
    return b"data: " + orjson.dumps(head)[:-1] + b',"choices":[', b"]}\n\n"


def _chat_choice(c: Choice, i: int, step: int, top: int | None) -> dict[str, Any]:
    """One chunk's choice: the first carries the role (and a tool call's id, type and name), later ones
    a piece of the text or of the arguments."""
    tok = c.tokens[step]
    delta: dict[str, Any]
    if c.call is not None:
        call: dict[str, Any] = {"index": 0, "function": {"arguments": tok}}
        if step == 0:
            fn = {"name": c.call.name, "arguments": tok}
            call = {"index": 0, "id": c.call.id, "type": "function", "function": fn}
            delta = {"role": "assistant", "content": None, "tool_calls": [call]}
        else:
            delta = {"tool_calls": [call]}
    else:
        delta = {"role": "assistant", "content": tok} if step == 0 else {"content": tok}
    lp = chat_logprobs([tok], top) if top is not None and c.call is None else None
    return {"index": i, "delta": delta, "logprobs": lp, "finish_reason": None}


def _tail(head: dict[str, Any], turn: Turn) -> bytes:
    """The usage chunk when the client asked for it, then the end of the stream."""
    if not _include_usage(turn.payload):
        return DONE
    usage = _usage(turn) if head["object"] == "chat.completion.chunk" else _legacy_usage(turn)
    return b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n" + DONE


def _json_format(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {}
    if kind == "json_schema":
        spec = raw.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest(
                "'response_format.json_schema.schema' must be a JSON schema object.", "response_format"
            )
        return schema or {"type": "object"}
    raise BadRequest(
        "'response_format.type' must be 'text', 'json_object' or 'json_schema'.", "response_format"
    )


# --- legacy completions -------------------------------------------------------------------------------------
def prompts_of(payload: dict[str, Any]) -> list[Any]:
    """The prompts of a legacy request: a string, strings, a token array or token arrays."""
    raw = payload.get("prompt")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(p, str) for p in raw):
            return list(raw)
        if all(isinstance(t, int) for t in raw):
            return [raw]
        if all(isinstance(p, list) and p for p in raw):
            return list(raw)
    raise BadRequest("'prompt' must be a string, an array of strings or of token arrays.", "prompt")


def _legacy_usage(turn: Turn) -> dict[str, Any]:
    prompt, completion = turn.prompt_tokens, turn.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Legacy:
    path = "/completions"
    error = staticmethod(Chat.error)

    @staticmethod
    def ask(payload: dict[str, Any]) -> Ask:
        prompts = prompts_of(payload)
        return Ask(
            str(payload.get("model", "")),
            seed_of(prompts[0]),
            positive_int(payload, "max_tokens") or 16,  # the legacy API's own default
            _n(payload) * len(prompts),
            stops_of(payload.get("stop")),
            logprobs=_bounded(payload, "logprobs", MAX_LEGACY_LOGPROBS),
        )

    @staticmethod
    def body(turn: Turn) -> dict[str, Any]:
        top = turn.ask.logprobs
        choices = [
            {
                "text": c.text,
                "index": i,
                "logprobs": legacy_logprobs(c.tokens, top) if top is not None else None,
                "finish_reason": c.finish,
            }
            for i, c in enumerate(turn.choices)
        ]
        return {**_head(turn, "cmpl-", "text_completion"), "choices": choices, "usage": _legacy_usage(turn)}

    @staticmethod
    def events(turn: Turn) -> Iterator[bytes]:
        top = turn.ask.logprobs
        head = _head(turn, "cmpl-", "text_completion")
        offsets = [0] * len(turn.choices)
        pre, post = _frame(head)

        def event(choice: dict[str, Any]) -> bytes:
            return pre + orjson.dumps(choice) + post

        for step in range(turn.steps):
            out = []
            for i, c in enumerate(turn.choices):
                if step >= len(c.tokens):
                    continue
                tok = c.tokens[step]
                lp = legacy_logprobs([tok], top, offsets[i]) if top is not None else None
                offsets[i] += len(tok)
                out.append(event({"text": tok, "index": i, "logprobs": lp, "finish_reason": None}))
                if step == len(c.tokens) - 1:
                    out.append(event({"text": "", "index": i, "logprobs": None, "finish_reason": c.finish}))
            if step == turn.steps - 1:
                out.append(_tail(head, turn))
            yield b"".join(out)
        if not turn.steps:
            yield _tail(head, turn)


__all__ = ["Chat", "Legacy", "openai_error", "prompts_of"]
