"""The Responses API over a backend that only speaks chat completions (``responses = "chat"``).

``chat_request`` turns a ``/v1/responses`` body into a ``/v1/chat/completions`` body (instructions, input
items: messages, function calls and their outputs; function tools; tool_choice; text.format; sampling;
max_output_tokens; reasoning.effort). ``response_of`` turns the chat completion back into a Response
object; ``ResponseStream`` turns the chat stream into the Responses stream events, ending with
``response.completed`` (or ``response.incomplete``) that carries the usage. Anything that would run inside
the provider's service (built-in tools such as web or file search) is refused with 400, not dropped.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from regiongate.core.errors import ClientError
from regiongate.pipeline.sse import data_of
from regiongate.upstream.base import UpstreamResponse

# Fields of a Response object that echo the request (the OpenAI API returns them on every response).
_ECHO = (
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "previous_response_id",
    "reasoning",
    "store",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "truncation",
    "user",
)


def _rid(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"


def _bad(message: str, param: str) -> ClientError:
    return ClientError(message, code="invalid_value", param=param)


def _text_of(content: Any, param: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad("Message content must be a string or a list of content parts.", param)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            url: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("auto", "low", "high"):
                url["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": url})
        elif kind == "refusal":
            continue
        else:
            raise _bad(
                f"Content part type {kind!r} is not supported by this backend (chat completions).",
                f"{param}[{j}]",
            )
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def chat_messages(payload: dict[str, Any]) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    instructions = payload.get("instructions")
    if isinstance(instructions, str) and instructions:
        msgs.append({"role": "system", "content": instructions})
    raw = payload.get("input")
    items = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise _bad("Field 'input' must be a string or a list of input items.", "input")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _bad("Each input item must be an object.", f"input[{i}]")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(
                    "A message's role must be user, assistant, system or developer.", f"input[{i}].role"
                )
            msgs.append({"role": role, "content": _text_of(item.get("content"), f"input[{i}].content")})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            last = msgs[-1] if msgs else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls of one turn are one assistant message
            else:
                msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out = item.get("output")
            msgs.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": out if isinstance(out, str) else orjson.dumps(out).decode(),
                }
            )
        elif kind == "reasoning":
            continue  # the model's own reasoning summary: nothing a chat backend can take back in
        else:
            raise _bad(
                f"Input item type {kind!r} is not supported by this backend (chat completions).",
                f"input[{i}]",
            )
    if not msgs:
        raise _bad("Field 'input' must not be empty.", "input")
    return msgs


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise _bad("Field 'tools' must be a list.", "tools")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else None
            raise ClientError(
                f"Tool type {kind!r} runs inside a provider's service; this backend takes function tools only.",
                code="unsupported_tool",
                param=f"tools[{i}]",
            )
        fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}
        out.append({"type": "function", "function": fn})
    return out


def chat_request(payload: dict[str, Any]) -> dict[str, Any]:
    chat: dict[str, Any] = {"model": payload.get("model"), "messages": chat_messages(payload)}
    for k in ("temperature", "top_p", "parallel_tool_calls", "user", "stream"):
        if k in payload:
            chat[k] = payload[k]
    if payload.get("stream"):
        chat["stream_options"] = {"include_usage": True}
    if isinstance(payload.get("max_output_tokens"), int):
        chat["max_tokens"] = payload["max_output_tokens"]
    if payload.get("tools"):
        chat["tools"] = _tools(payload["tools"])
    choice = payload.get("tool_choice")
    if isinstance(choice, str):
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    fmt = payload.get("text", {}).get("format") if isinstance(payload.get("text"), dict) else None
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            chat["response_format"] = {
                "type": "json_schema",
                "json_schema": {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt},
            }
        elif fmt.get("type") == "json_object":
            chat["response_format"] = {"type": "json_object"}
    reasoning = payload.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]
    return chat


def usage_of(u: Any) -> dict[str, Any] | None:
    if not isinstance(u, dict):
        return None
    p, c = u.get("prompt_tokens", 0), u.get("completion_tokens", 0)
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    reasoning = (u.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    return {
        "input_tokens": p,
        "input_tokens_details": {"cached_tokens": cached or 0},
        "output_tokens": c,
        "output_tokens_details": {"reasoning_tokens": reasoning or 0},
        "total_tokens": u.get("total_tokens", p + c),
    }


def _message_item(text: str, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id or _rid("msg"),
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _call_item(call: dict[str, Any], item_id: str | None = None) -> dict[str, Any]:
    fn = call.get("function") or {}
    return {
        "type": "function_call",
        "id": item_id or _rid("fc"),
        "call_id": call.get("id") or _rid("call"),
        "name": fn.get("name", ""),
        "arguments": fn.get("arguments", ""),
        "status": "completed",
    }


def response_shell(payload: dict[str, Any], status: str, created: int | None = None) -> dict[str, Any]:
    shell: dict[str, Any] = {
        "id": _rid("resp"),
        "object": "response",
        "created_at": created or int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": payload.get("model"),
        "output": [],
        "usage": None,
    }
    defaults: dict[str, Any] = {
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "truncation": "disabled",
        "text": {"format": {"type": "text"}},
    }
    for k in _ECHO:
        shell[k] = payload.get(k, defaults.get(k))
    return shell


def _finish(resp: dict[str, Any], finish: str | None) -> None:
    if finish == "length":
        resp["status"] = "incomplete"
        resp["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish == "content_filter":
        resp["status"] = "incomplete"
        resp["incomplete_details"] = {"reason": "content_filter"}
    else:
        resp["status"] = "completed"


def response_of(payload: dict[str, Any], chat: dict[str, Any]) -> dict[str, Any]:
    resp = response_shell(
        payload, "completed", chat.get("created") if isinstance(chat.get("created"), int) else None
    )
    choices = chat.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    if isinstance(msg.get("content"), str) and msg["content"]:
        resp["output"].append(_message_item(msg["content"]))
    for call in msg.get("tool_calls") or []:
        if isinstance(call, dict):
            resp["output"].append(_call_item(call))
    _finish(resp, choice.get("finish_reason"))
    resp["usage"] = usage_of(chat.get("usage"))
    return resp


def _sse(obj: dict[str, Any]) -> bytes:
    return b"event: " + str(obj["type"]).encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


class ResponseStream:
    """Chat completion chunks in, Responses stream events out (one output text item, then function calls)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.resp = response_shell(payload, "in_progress")
        self.seq = 0
        self.text: str | None = None  # None until the first text delta opens the message item
        self.msg_id = _rid("msg")
        self.calls: dict[
            int, dict[str, Any]
        ] = {}  # tool call index -> {id, call_id, name, arguments, output_index}
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.started = False
        self.failed = False  # an error event was sent: no response.completed may follow it
        self._buf = b""

    def _ev(self, obj: dict[str, Any]) -> bytes:
        obj["sequence_number"] = self.seq
        self.seq += 1
        return _sse(obj)

    def _start(self) -> bytes:
        self.started = True
        snapshot = dict(self.resp)
        return self._ev({"type": "response.created", "response": snapshot}) + self._ev(
            {"type": "response.in_progress", "response": snapshot}
        )

    def feed(self, chunk: bytes) -> bytes:
        buf = self._buf + chunk.replace(b"\r\n", b"\n")
        out = [b""] if self.started else [self._start()]
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            ev, buf = buf[: end + 2], buf[end + 2 :]
            data = data_of(ev)
            if not data or data == b"[DONE]":
                continue
            obj = orjson.loads(data)
            if isinstance(obj, dict):
                out.append(self._chunk(obj))
        self._buf = buf
        return b"".join(out)

    def _chunk(self, obj: dict[str, Any]) -> bytes:
        if "error" in obj:  # an in-band error: pass it on as a Responses error event, which ends the stream
            self.failed = True
            # The OpenAI spec's ResponseErrorEvent: code and param string or null, message a string.
            err = obj["error"] if isinstance(obj["error"], dict) else {}
            code, message = err.get("code"), err.get("message")
            return self._ev(
                {
                    "type": "error",
                    "code": code if isinstance(code, str) else None,
                    "message": message if isinstance(message, str) else "the backend reported an error",
                    "param": None,
                }
            )
        if isinstance(obj.get("usage"), dict):
            self.usage = usage_of(obj["usage"])
        out = []
        for choice in obj.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.text is None:
                    self.text = ""
                    item = _message_item("", self.msg_id, "in_progress")
                    item["content"] = []
                    out.append(
                        self._ev({"type": "response.output_item.added", "output_index": 0, "item": item})
                    )
                    out.append(
                        self._ev(
                            {
                                "type": "response.content_part.added",
                                "item_id": self.msg_id,
                                "output_index": 0,
                                "content_index": 0,
                                "part": {"type": "output_text", "text": "", "annotations": []},
                            }
                        )
                    )
                self.text += text
                out.append(
                    self._ev(
                        {
                            "type": "response.output_text.delta",
                            "item_id": self.msg_id,
                            "output_index": 0,
                            "content_index": 0,
                            "delta": text,
                            "logprobs": [],
                        }
                    )
                )
            for tc in delta.get("tool_calls") or []:
                idx = tc.get("index", 0)
                fn = tc.get("function") or {}
                call = self.calls.get(idx)
                if call is None:
                    call = {
                        "id": _rid("fc"),
                        "call_id": tc.get("id") or _rid("call"),
                        "name": fn.get("name", ""),
                        "arguments": "",
                        "output_index": (1 if self.text is not None else 0) + len(self.calls),
                    }
                    self.calls[idx] = call
                    item = {
                        "type": "function_call",
                        "id": call["id"],
                        "call_id": call["call_id"],
                        "name": call["name"],
                        "arguments": "",
                        "status": "in_progress",
                    }
                    out.append(
                        self._ev(
                            {
                                "type": "response.output_item.added",
                                "output_index": call["output_index"],
                                "item": item,
                            }
                        )
                    )
                args = fn.get("arguments")
                if isinstance(args, str) and args:
                    call["arguments"] += args
                    out.append(
                        self._ev(
                            {
                                "type": "response.function_call_arguments.delta",
                                "item_id": call["id"],
                                "output_index": call["output_index"],
                                "delta": args,
                            }
                        )
                    )
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return b"".join(out)

    def close(self) -> bytes:
        """The closing events, once the chat stream has ended (with [DONE] or without)."""
        out = [b""] if self.started else [self._start()]
        output = []
        if self.text is not None:
            part = {"type": "output_text", "text": self.text, "annotations": []}
            out.append(
                self._ev(
                    {
                        "type": "response.output_text.done",
                        "item_id": self.msg_id,
                        "output_index": 0,
                        "content_index": 0,
                        "text": self.text,
                        "logprobs": [],
                    }
                )
            )
            out.append(
                self._ev(
                    {
                        "type": "response.content_part.done",
                        "item_id": self.msg_id,
                        "output_index": 0,
                        "content_index": 0,
                        "part": part,
                    }
                )
            )
            item = _message_item(self.text, self.msg_id)
            out.append(self._ev({"type": "response.output_item.done", "output_index": 0, "item": item}))
            output.append(item)
        for call in self.calls.values():
            out.append(
                self._ev(
                    {
                        "type": "response.function_call_arguments.done",
                        "item_id": call["id"],
                        "output_index": call["output_index"],
                        "arguments": call["arguments"],
                    }
                )
            )
            item = {
                "type": "function_call",
                "id": call["id"],
                "call_id": call["call_id"],
                "name": call["name"],
                "arguments": call["arguments"],
                "status": "completed",
            }
            out.append(
                self._ev(
                    {"type": "response.output_item.done", "output_index": call["output_index"], "item": item}
                )
            )
            output.append(item)
        self.resp["output"] = output
        self.resp["usage"] = self.usage
        _finish(self.resp, self.finish)
        kind = "response.completed" if self.resp["status"] == "completed" else "response.incomplete"
        out.append(self._ev({"type": kind, "response": self.resp}))
        return b"".join(out)


async def _events(payload: dict[str, Any], chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    conv = ResponseStream(payload)
    ended = False
    async for chunk in chunks:
        ended = ended or b"[DONE]" in chunk
        out = conv.feed(chunk)
        if out:
            yield out
    # A chat stream cut before [DONE] must not look complete (the gateway reports the break), nor one whose
    # backend reported an error (that error event was its last).
    if ended and not conv.failed:
        yield conv.close()


def translate_response(payload: dict[str, Any], resp: UpstreamResponse) -> UpstreamResponse:
    """The backend's chat answer to a translated Responses request, as the Responses API answers."""
    if resp.status != 200:
        return resp
    if resp.chunks is not None:
        return UpstreamResponse(
            200, "text/event-stream", chunks=_events(payload, resp.chunks), closer=resp.aclose
        )
    chat = resp.parsed if resp.parsed is not None else orjson.loads(resp.body)
    obj = response_of(payload, chat if isinstance(chat, dict) else {})
    return UpstreamResponse(200, "application/json", body=orjson.dumps(obj), parsed=obj)
