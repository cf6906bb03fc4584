"""xAI gRPC messages <-> the OpenAI-shaped JSON the gateway routes, using the messages xai-sdk ships.

In: ``GetCompletionsRequest`` -> a ``/chat/completions`` payload (fields the API shares; explicit-presence
fields only when set). Out: a chat completion -> ``GetChatCompletionResponse``; each stream event ->
``GetChatCompletionChunk``. The xAI SDK reads ``role`` to decide what text counts and takes id, model,
created, fingerprint and usage from the last chunk, so every output carries ROLE_ASSISTANT and every chunk
carries the stream's metadata and the latest usage (PROTOCOL.md 1.4).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from google.protobuf.timestamp_pb2 import Timestamp
from xai_sdk.proto import chat_pb2, image_pb2, sample_pb2, usage_pb2

from regiongate.core import RouteError
from regiongate.core.errors import ClientError

_ROLES = {
    chat_pb2.ROLE_USER: "user",
    chat_pb2.ROLE_ASSISTANT: "assistant",
    chat_pb2.ROLE_SYSTEM: "system",
    chat_pb2.ROLE_FUNCTION: "function",
    chat_pb2.ROLE_TOOL: "tool",
    chat_pb2.ROLE_DEVELOPER: "developer",
}
_DETAIL = {image_pb2.DETAIL_AUTO: "auto", image_pb2.DETAIL_LOW: "low", image_pb2.DETAIL_HIGH: "high"}
_TOOL_MODE = {
    chat_pb2.TOOL_MODE_AUTO: "auto",
    chat_pb2.TOOL_MODE_NONE: "none",
    chat_pb2.TOOL_MODE_REQUIRED: "required",
}
_EFFORT = {
    chat_pb2.EFFORT_LOW: "low",
    chat_pb2.EFFORT_MEDIUM: "medium",
    chat_pb2.EFFORT_HIGH: "high",
    chat_pb2.EFFORT_NONE: "none",
    chat_pb2.EFFORT_XHIGH: "xhigh",
}
_FINISH = {
    "stop": sample_pb2.REASON_STOP,
    "length": sample_pb2.REASON_MAX_LEN,
    "tool_calls": sample_pb2.REASON_TOOL_CALLS,
    "function_call": sample_pb2.REASON_TOOL_CALLS,
    "max_context": sample_pb2.REASON_MAX_CONTEXT,
    "time_limit": sample_pb2.REASON_TIME_LIMIT,
}
# Server-side tools and stateful features run inside xAI's service; a gateway in front of plain
# inference servers cannot honour them, so they are refused rather than silently dropped.
_SERVER_TOOLS = (
    "web_search",
    "x_search",
    "code_execution",
    "collections_search",
    "mcp",
    "attachment_search",
    "image_generation",
)


_TIER = {
    usage_pb2.ServiceTier.SERVICE_TIER_DEFAULT: "default",
    usage_pb2.ServiceTier.SERVICE_TIER_PRIORITY: "priority",
}


def _invalid(message: str, param: str) -> RouteError:
    return ClientError(message, code="invalid_value", param=param)


def _unsupported(what: str) -> RouteError:
    return ClientError(
        f"{what} is not supported by this gateway; it forwards chat completions to OpenAI-compatible "
        "inference servers.",
        code="unsupported_feature",
        status=501,
    )


def _content(msg: chat_pb2.Message, i: int) -> str | list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for c in msg.content:
        kind = c.WhichOneof("content")
        if kind == "text":
            parts.append({"type": "text", "text": c.text})
        elif kind == "image_url":
            img = c.image_url
            if img.WhichOneof("source") == "file_id":
                raise _unsupported("An image given by file_id")
            image: dict[str, Any] = {"url": img.image_url}
            if img.detail in _DETAIL:
                image["detail"] = _DETAIL[img.detail]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "file":
            f = c.file
            file: dict[str, Any] = {}
            if f.file_id:
                file["file_id"] = f.file_id
            elif f.data:
                mime = f.mime_type or "application/octet-stream"
                file["file_data"] = f"data:{mime};base64,{base64.b64encode(f.data).decode()}"
            else:
                raise _unsupported("A file given by URL")
            if f.filename:
                file["filename"] = f.filename
            parts.append({"type": "file", "file": file})
        else:
            raise _invalid(f"messages[{i}].content has an empty part.", "messages")
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _message(msg: chat_pb2.Message, i: int) -> dict[str, Any]:
    role = _ROLES.get(msg.role)
    if role is None:
        raise _invalid(f"messages[{i}].role must be set (user, assistant, system, tool, ...).", "messages")
    out: dict[str, Any] = {"role": role, "content": _content(msg, i) if msg.content else ""}
    if msg.name:
        out["name"] = msg.name
    if msg.HasField("reasoning_content"):
        out["reasoning_content"] = msg.reasoning_content
    if msg.tool_calls:
        out["tool_calls"] = [
            {
                "id": tc.id,
                "type": "function",
                "function": {"name": tc.function.name, "arguments": tc.function.arguments},
            }
            for tc in msg.tool_calls
        ]
    if msg.HasField("tool_call_id"):
        out["tool_call_id"] = msg.tool_call_id
    return out


def _json_text(text: str, param: str) -> Any:
    try:
        return orjson.loads(text) if text else {}
    except orjson.JSONDecodeError as e:
        raise _invalid(f"{param} must be JSON text: {e}.", param) from None


def _tools(req: chat_pb2.GetCompletionsRequest) -> list[dict[str, Any]]:
    tools = []
    for t in req.tools:
        kind = t.WhichOneof("tool")
        if kind != "function":
            raise _unsupported(f"The server-side tool '{kind}'" if kind in _SERVER_TOOLS else "An empty tool")
        fn: dict[str, Any] = {
            "name": t.function.name,
            "parameters": _json_text(t.function.parameters, "tools.function.parameters"),
        }
        if t.function.description:
            fn["description"] = t.function.description
        if t.function.strict:
            fn["strict"] = True
        tools.append({"type": "function", "function": fn})
    return tools


def chat_payload(req: chat_pb2.GetCompletionsRequest, stream: bool) -> dict[str, Any]:
    """The OpenAI ``/chat/completions`` body for ``req`` (RouteError 400/501 for what cannot be sent)."""
    if not req.model:
        raise _invalid("Field 'model' is required.", "model")
    if not req.messages:
        raise _invalid("Field 'messages' must not be empty.", "messages")
    if req.HasField("search_parameters"):
        raise _unsupported("Live search (search_parameters)")
    # store_messages / previous_response_id are regiongate's own (objects.completions), not the backend's
    p: dict[str, Any] = {"model": req.model, "messages": [_message(m, i) for i, m in enumerate(req.messages)]}
    for name in ("n", "max_tokens"):
        if req.HasField(name):
            v = getattr(req, name)
            if v < 1:
                raise _invalid(f"Field '{name}' must be a positive integer.", name)
            p[name] = v
    for name in ("seed", "temperature", "top_p", "top_logprobs", "frequency_penalty", "presence_penalty"):
        if req.HasField(name):
            p[name] = getattr(req, name)
    if req.stop:
        p["stop"] = list(req.stop)
    if req.logprobs:
        p["logprobs"] = True
    if req.user:
        p["user"] = req.user
    if req.HasField("safety_identifier"):
        p["safety_identifier"] = req.safety_identifier
    if req.service_tier in _TIER:  # the proto knows default and priority; flex comes as metadata
        p["service_tier"] = _TIER[req.service_tier]
    if req.tools:
        p["tools"] = _tools(req)
    if req.HasField("tool_choice"):
        tc = req.tool_choice
        if tc.WhichOneof("tool_choice") == "function_name":
            p["tool_choice"] = {"type": "function", "function": {"name": tc.function_name}}
        elif tc.mode in _TOOL_MODE:
            p["tool_choice"] = _TOOL_MODE[tc.mode]
    if req.HasField("parallel_tool_calls"):
        p["parallel_tool_calls"] = req.parallel_tool_calls
    if req.HasField("response_format"):
        p["response_format"] = _response_format(req.response_format)
    if req.HasField("reasoning_effort") and req.reasoning_effort in _EFFORT:
        p["reasoning_effort"] = _EFFORT[req.reasoning_effort]
    if stream:
        p["stream"] = True
        # The SDK expects usage in the stream; asking for it also keeps the gateway from stripping it.
        p["stream_options"] = {"include_usage": True}
    return p


def _response_format(rf: chat_pb2.ResponseFormat) -> dict[str, Any]:
    if rf.format_type == chat_pb2.FORMAT_TYPE_JSON_OBJECT:
        return {"type": "json_object"}
    if rf.format_type == chat_pb2.FORMAT_TYPE_JSON_SCHEMA:
        schema = _json_text(rf.schema, "response_format.schema")
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema, "strict": True}}
    return {"type": "text"}


# --- out -------------------------------------------------------------------------------------------
def _int(obj: Any, key: str) -> int:
    v = obj.get(key) if isinstance(obj, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def usage_proto(u: Any) -> usage_pb2.SamplingUsage | None:
    if not isinstance(u, dict):
        return None
    prompt = _int(u, "prompt_tokens")
    pd, cd = u.get("prompt_tokens_details"), u.get("completion_tokens_details")
    return usage_pb2.SamplingUsage(
        prompt_tokens=prompt,
        completion_tokens=_int(u, "completion_tokens"),
        total_tokens=_int(u, "total_tokens"),
        reasoning_tokens=_int(cd, "reasoning_tokens"),
        prompt_text_tokens=_int(pd, "text_tokens") or prompt,
        cached_prompt_text_tokens=_int(pd, "cached_tokens"),
        prompt_image_tokens=_int(pd, "image_tokens"),
    )


def _tool_calls(raw: Any) -> list[chat_pb2.ToolCall]:
    out = []
    for tc in raw if isinstance(raw, list) else ():
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict):
            continue
        out.append(
            chat_pb2.ToolCall(
                id=str(tc.get("id") or ""),
                type=chat_pb2.TOOL_CALL_TYPE_CLIENT_SIDE_TOOL,
                status=chat_pb2.TOOL_CALL_STATUS_COMPLETED,
                function=chat_pb2.FunctionCall(
                    name=str(fn.get("name") or ""), arguments=str(fn.get("arguments") or "")
                ),
            )
        )
    return out


def _logprobs(raw: Any) -> chat_pb2.LogProbs | None:
    content = raw.get("content") if isinstance(raw, dict) else None
    if not isinstance(content, list):
        return None

    def one(e: dict[str, Any], cls: Any) -> Any:
        b = e.get("bytes")
        return cls(
            token=str(e.get("token", "")),
            logprob=float(e.get("logprob") or 0.0),
            bytes=bytes(b) if isinstance(b, list) else b"",
        )

    out = chat_pb2.LogProbs()
    for e in content:
        if isinstance(e, dict):
            lp = one(e, chat_pb2.LogProb)
            for t in e.get("top_logprobs") or ():
                if isinstance(t, dict):
                    lp.top_logprobs.append(one(t, chat_pb2.TopLogProb))
            out.content.append(lp)
    return out


class Meta:
    """The fields every response / chunk repeats, taken from the OpenAI object. For streams it keeps a
    template chunk with them, rebuilt only when one changes: copying it is cheaper than building anew."""

    __slots__ = ("_template", "created", "fingerprint", "id", "model", "tier", "tools", "usage")

    def __init__(self, model: str, tier: str = "") -> None:
        self.tier = tier_proto(tier)  # the tier the gateway ran it at, on every chunk as xAI sends it
        self.tools: dict[int, dict[int, dict[str, str]]] = {}  # streamed tool-call fragments per output
        self.id = ""
        self.model = model
        self.created = Timestamp()
        self.fingerprint = ""
        self.usage: usage_pb2.SamplingUsage | None = None
        self._template: chat_pb2.GetChatCompletionChunk | None = None

    def update(self, obj: dict[str, Any]) -> None:
        old = (self.id, self.model, self.created.seconds, self.fingerprint)
        if obj.get("id"):
            self.id = str(obj["id"])
        if obj.get("model"):
            self.model = str(obj["model"])
        created = obj.get("created")
        if isinstance(created, int) and created != self.created.seconds:
            self.created = Timestamp(seconds=created)
        if obj.get("system_fingerprint"):
            self.fingerprint = str(obj["system_fingerprint"])
        usage = usage_proto(obj.get("usage"))
        if usage is not None:
            self.usage = usage
            self._template = None
        elif old != (self.id, self.model, self.created.seconds, self.fingerprint):
            self._template = None

    def chunk(self) -> chat_pb2.GetChatCompletionChunk:
        if self._template is None:
            self._template = chat_pb2.GetChatCompletionChunk(
                id=self.id,
                created=self.created,
                model=self.model,
                system_fingerprint=self.fingerprint,
                usage=self.usage,
                service_tier=self.tier,
            )
        msg = chat_pb2.GetChatCompletionChunk()
        msg.CopyFrom(self._template)
        return msg


def completion_response(obj: dict[str, Any], model: str) -> chat_pb2.GetChatCompletionResponse:
    meta = Meta(model)
    meta.update(obj)
    resp = chat_pb2.GetChatCompletionResponse(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        system_fingerprint=meta.fingerprint,
        usage=meta.usage,
        service_tier=tier_proto(obj.get("service_tier")),
    )
    for i, ch in enumerate(obj.get("choices") or ()):
        msg = ch.get("message") or {}
        # filled in place: a message built apart and passed to its parent is copied into it
        out = resp.outputs.add(
            index=_int(ch, "index") if "index" in ch else i,
            finish_reason=_FINISH.get(ch.get("finish_reason") or "", sample_pb2.REASON_INVALID),
        )
        m = out.message
        m.role = chat_pb2.ROLE_ASSISTANT
        m.content = msg.get("content") or ""
        m.reasoning_content = msg.get("reasoning_content") or ""
        if msg.get("tool_calls"):
            m.tool_calls.extend(_tool_calls(msg["tool_calls"]))
        if ch.get("logprobs"):
            lp = _logprobs(ch["logprobs"])
            if lp is not None:
                out.logprobs.CopyFrom(lp)
    return resp


def tier_proto(tier: object) -> usage_pb2.ServiceTier:
    """The proto's tier for a tier name: it has no flex, which is reported as default (the
    x-regiongate-service-tier metadata carries the exact one)."""
    if tier == "priority":
        return usage_pb2.SERVICE_TIER_PRIORITY  # module constants: the enum wrapper's attributes cost 1 µs each
    return usage_pb2.SERVICE_TIER_DEFAULT if tier else usage_pb2.SERVICE_TIER_UNSPECIFIED


def completion_chunk(obj: dict[str, Any], meta: Meta) -> chat_pb2.GetChatCompletionChunk:
    """One stream event as a chunk; ``meta`` carries id/model/created/usage across chunks."""
    meta.update(obj)
    msg = meta.chunk()
    for i, ch in enumerate(obj.get("choices") or ()):
        delta = ch.get("delta") or {}
        out = msg.outputs.add()
        out.index = index = _int(ch, "index") if "index" in ch else i
        finish = ch.get("finish_reason")
        if finish:
            out.finish_reason = _FINISH.get(finish, sample_pb2.REASON_INVALID)
        d = out.delta
        d.role = chat_pb2.ROLE_ASSISTANT  # on every chunk: a role-less one would erase the text
        if delta.get("content"):
            d.content = delta["content"]
        if delta.get("reasoning_content"):
            d.reasoning_content = delta["reasoning_content"]
        calls = _gather_tool_calls(meta, index, delta.get("tool_calls"), bool(finish))
        if calls:
            d.tool_calls.extend(_tool_calls(calls))
        if ch.get("logprobs"):
            lp = _logprobs(ch["logprobs"])
            if lp is not None:
                out.logprobs.CopyFrom(lp)
    return msg


def _gather_tool_calls(meta: Meta, output: int, raw: Any, finished: bool) -> list[dict[str, Any]]:
    """OpenAI streams a tool call in fragments (arguments split over chunks); the xAI SDK appends every
    ToolCall it receives, so whole calls are sent once, on the output's finishing chunk."""
    if isinstance(raw, list):
        calls = meta.tools.setdefault(output, {})
        for frag in raw:
            if not isinstance(frag, dict):
                continue
            slot = calls.setdefault(_int(frag, "index"), {"id": "", "name": "", "arguments": ""})
            fn: dict[str, Any] = frag.get("function") or {}
            if not isinstance(fn, dict):
                fn = {}
            if frag.get("id"):
                slot["id"] = str(frag["id"])
            # The name comes whole: once (OpenAI, vLLM, llama.cpp) or again in every delta (SGLang).
            # Only the arguments are streamed in pieces, so the first name stands.
            if fn.get("name") and not slot["name"]:
                slot["name"] = str(fn["name"])
            if fn.get("arguments"):
                slot["arguments"] += str(fn["arguments"])
    if not finished or output not in meta.tools:
        return []
    done = meta.tools.pop(output)
    return [
        {"id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
        for _, c in sorted(done.items())
    ]
