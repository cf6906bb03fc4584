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
API streams are not continued: they end with their ``error`` event naming the original failure. When nothing can continue, the stream ends with
the protocol's in-band error naming the original failure, never a refused prefill.
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
    if kind is StreamKind.RESPONSES or not isinstance(payload.get("messages"), list):
        return "Responses API streams are not continued"
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
    defines prefill, a final assistant message, whatever the style (unless ``none``)."""
    if style not in ("vllm", "llama.cpp", "prefix"):
        return None
    message: dict[str, Any] = {"role": "assistant", "content": delivered}
    if style == "prefix" and kind is StreamKind.CHAT:
        message["prefix"] = True
    out = dict(payload)
    out["messages"] = [*payload["messages"], message] if delivered or kind is StreamKind.CHAT else payload["messages"]
    if style == "vllm" and kind is StreamKind.CHAT:
        out["continue_final_message"] = True
        out["add_generation_prompt"] = False
    for name in ("max_tokens", "max_completion_tokens"):  # the whole answer keeps the client's limit
        limit = payload.get(name)
        if isinstance(limit, int) and not isinstance(limit, bool):
            out[name] = max(1, limit - tokens)
    return out
