"""Mid-stream continuation: finishing an answer whose stream broke after its first byte on another backend
the request's scope allows, from the text already delivered.

The gateway re-plans the request (the same policy, so the same endpoint, key fence and grants: a regional
endpoint can only continue on another backend of its region, a zone endpoint or a fenced key only inside
its zone), skips the backends that failed, and sends the original request with the delivered text as an
assistant message to continue from, in the way the target's kind understands (``prefill`` in its config):

| ``prefill``   | what is sent                                                                           |
| ------------- | -------------------------------------------------------------------------------------- |
| ``vllm``      | last message ``{"role": "assistant", "content": <delivered>}``, ``continue_final_message: true``, ``add_generation_prompt: false`` (vLLM, SGLang; llama.cpp continues it too) |
| ``llama.cpp`` | last message ``{"role": "assistant", "content": <delivered>}`` (llama-server continues a final assistant message) |
| ``prefix``    | last message ``{"role": "assistant", "content": <delivered>, "prefix": true}`` (DeepSeek, Mistral) |
| ``none``      | never a continuation target                                                            |

Only the new tokens reach the client: the target's events are rebased onto the first backend's ``id``,
``created``, ``model`` and ``system_fingerprint``, its role-only opening delta is dropped, and its usage is
restated for the whole answer (``pipeline.sse.SseRelay``). Anthropic Messages streams are continued the same
way (the prefill is that API's own final assistant message; the target's ``message_start`` and opening
``content_block_start`` are dropped, ``message_delta``'s output tokens cover the whole answer). Responses
API streams too: a native backend gets the original request with ``{"type": "message", "role":
"assistant", "content": <delivered>}`` last in ``input`` (llama-server refuses an item without its
``type``: "Cannot determine type of 'item'"); a backend that takes it as chat completions (``responses = "chat"``) gets
the translated request with that final assistant message marked as for chat (``chat_prefill``). Either way
the target's Responses events are rebased onto the first stream's (one ``response.created``, its response
and item ids, positions, one run of ``sequence_number``; ``*.done`` and ``response.completed`` carry the
whole text and usage). When nothing can continue, the stream ends with the protocol's in-band error naming
the original failure, never a refused prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from regiongate.pipeline.sse import SseRelay, StreamKind

PREFILL_STYLES = ("vllm", "llama.cpp", "prefix", "none")
OPT_OUT_HEADER = "x-regiongate-continue"
HOPS_HEADER = "x-regiongate-hops"


@dataclass(frozen=True, slots=True)
class Hop:
    """One backend that produced part of the answer, and why the answer came to it."""

    region: str
    backend: str
    reason: str  # "first", or the failure of the hop before (what moved it)

    def render(self) -> str:
        return f"{self.region} {self.backend} ({self.reason})"


def render_hops(hops: list[Hop]) -> str:
    """The hops in order, as one header / metadata / SSE comment value (ASCII, no line breaks)."""
    text = "; ".join(h.render() for h in hops)
    return text.encode("ascii", "replace").decode("ascii").replace("\r", " ").replace("\n", " ")


def _request_refusal(payload: dict[str, Any], kind: StreamKind, opted_out: bool) -> str | None:
    if opted_out:
        return f"continuation is off ({OPT_OUT_HEADER} or the key's setting)"
    if kind is StreamKind.RESPONSES:
        if not isinstance(payload.get("input"), (str, list)):
            return "a Responses request without input cannot be continued"
    elif not isinstance(payload.get("messages"), list):
        return "a request without messages cannot be continued"
    n = payload.get("n")
    if isinstance(n, int) and n > 1:
        return "streams of several choices are not continued"
    return None


def may_continue(payload: dict[str, Any], kind: StreamKind, opted_out: bool) -> bool:
    """Whether a stream of this request could be continued at all (before anything was delivered)."""
    return _request_refusal(payload, kind, opted_out) is None


def refusal(payload: dict[str, Any], kind: StreamKind, relay: SseRelay, opted_out: bool) -> str | None:
    """Why this broken stream cannot be continued anywhere, or None when it may be."""
    why = _request_refusal(payload, kind, opted_out)
    if why is not None:
        return why
    if relay.tool_calls:
        return "a tool call was being streamed"  # its argument deltas could not be joined soundly
    if relay.first is None:
        return "nothing was delivered to continue from"
    return None


def prefill_payload(
    payload: dict[str, Any], delivered: str, style: str, tokens: int, kind: StreamKind = StreamKind.CHAT
) -> dict[str, Any] | None:
    """The original request continued after ``delivered`` (``tokens`` of it), for a target of ``style``;
    None when that target cannot continue. An Anthropic Messages request is continued the way that API
    defines prefill, a final assistant message, whatever the style (unless ``none``); a Responses request
    with that message last in its ``input`` (a chat backend's marks come with ``chat_prefill``)."""
    if style not in ("vllm", "llama.cpp", "prefix"):
        return None
    out = dict(payload)
    if kind is StreamKind.RESPONSES:
        raw = payload["input"]
        items = [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw)
        out["input"] = [*items, {"type": "message", "role": "assistant", "content": delivered}] if delivered else items
        limit = payload.get("max_output_tokens")
        if isinstance(limit, int) and not isinstance(limit, bool):
            out["max_output_tokens"] = max(1, limit - tokens)
        return out
    message: dict[str, Any] = {"role": "assistant", "content": delivered}
    out["messages"] = [*payload["messages"], message] if delivered or kind is StreamKind.CHAT else payload["messages"]
    if kind is StreamKind.CHAT:
        out = chat_prefill(out, style)
    for name in ("max_tokens", "max_completion_tokens"):  # the whole answer keeps the client's limit
        limit = payload.get(name)
        if isinstance(limit, int) and not isinstance(limit, bool):
            out[name] = max(1, limit - tokens)
    return out


def chat_prefill(chat: dict[str, Any], style: str) -> dict[str, Any]:
    """A chat completions request whose final assistant message is a prefill, marked for ``style``."""
    msgs = chat.get("messages")
    if not isinstance(msgs, list) or not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "assistant":
        return chat  # nothing delivered yet: the request as it was
    out = dict(chat)
    if style == "prefix":
        out["messages"] = [*msgs[:-1], {**msgs[-1], "prefix": True}]
    elif style == "vllm":
        out["continue_final_message"] = True
        out["add_generation_prompt"] = False
    return out
