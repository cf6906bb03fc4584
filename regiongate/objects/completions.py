"""Stored xAI chat completions: ``store_messages``, ``previous_response_id``, ``GetStoredCompletion`` and
``DeleteStoredCompletion``, kept by regiongate whatever the backend (the chat-completions twin of
``objects.responses``).

A stored completion lives in the store of the region that processed it, under an id naming that region
(``chat_<region>_<hex>``, the response id the SDK sees); its document holds the completion and every message
of the conversation so far, so a follow-up needs nothing from any other region. A follow-up
(``previous_response_id``) is processed in the region holding the previous completion, and only if that
region is in the endpoint's scope: otherwise NOT_FOUND, as if it did not exist (never a cross-region read).
The backend gets the whole conversation as plain ``messages``, so no backend keeps state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from regiongate.core import Endpoint, EndpointKind
from regiongate.objects.ids import new_id, region_of
from regiongate.objects.kept import KeptObjects
from regiongate.objects.store import StoredObject
from regiongate.pipeline.auth import Principal
from regiongate.pipeline.exchange import Inbound, Routed
from regiongate.pipeline.receipts import HEADER

PREFIX = "chat"
KIND = "completion"
WHAT = "stored completion"


@dataclass(slots=True)
class PreparedChat:
    payload: dict[str, Any]  # what the backend gets: the previous conversation, then this request's messages
    endpoint: Endpoint  # the caller's, or pinned to the previous completion's region
    store: bool
    oid: str = ""  # set once the region that runs it is known (``name``)


@dataclass(slots=True)
class Assembled:
    """A chat completion rebuilt from its stream's chunks, to be stored when the stream ends."""

    first: dict[str, Any] = field(default_factory=dict)  # id, model, created, system_fingerprint
    choices: dict[int, dict[str, Any]] = field(default_factory=dict)
    usage: Any = None

    def add(self, chunk: dict[str, Any]) -> None:
        if not self.first:
            self.first = {k: chunk[k] for k in ("model", "created", "system_fingerprint") if k in chunk}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for ch in chunk.get("choices") or ():
            if not isinstance(ch, dict):
                continue
            index = ch.get("index", 0)
            c = self.choices.setdefault(
                index if isinstance(index, int) else 0,
                {"message": {"role": "assistant", "content": ""}, "finish_reason": None},
            )
            delta = ch.get("delta") or {}
            msg = c["message"]
            for key in ("content", "reasoning_content"):
                if isinstance(delta.get(key), str):
                    msg[key] = msg.get(key, "") + delta[key]
            for tc in delta.get("tool_calls") or ():
                if isinstance(tc, dict):
                    _merge_tool_call(msg.setdefault("tool_calls", []), tc)
            if ch.get("finish_reason"):
                c["finish_reason"] = ch["finish_reason"]

    def completion(self, oid: str) -> dict[str, Any]:
        choices = [{"index": i, **c} for i, c in sorted(self.choices.items())]
        out = {**self.first, "id": oid, "object": "chat.completion", "choices": choices}
        if self.usage is not None:
            out["usage"] = self.usage
        return out


def _merge_tool_call(calls: list[dict[str, Any]], delta: dict[str, Any]) -> None:
    index = delta.get("index", len(calls))
    while len(calls) <= (index if isinstance(index, int) else 0):
        calls.append({"type": "function", "function": {"name": "", "arguments": ""}})
    call = calls[index if isinstance(index, int) else 0]
    if delta.get("id"):
        call["id"] = delta["id"]
    fn = delta.get("function") or {}
    for key in ("name", "arguments"):
        if isinstance(fn.get(key), str):
            call["function"][key] += fn[key]


class StoredCompletions(KeptObjects):
    PREFIX, KIND, WHAT = PREFIX, KIND, WHAT

    async def prepare(
        self, payload: dict[str, Any], store: bool, previous: str | None, endpoint: Endpoint, p: Principal
    ) -> PreparedChat:
        """The request to route: the previous conversation (read in its own region only) before its messages."""
        if previous is not None:
            doc = orjson.loads((await self.load(previous, endpoint, p)).body)
            choices = doc["completion"].get("choices") or [{}]
            answer = {"role": "assistant", **_message_of(choices[0])}
            payload["messages"] = [*doc["messages"], answer, *payload["messages"]]
            region = region_of(previous, PREFIX)
            if endpoint.kind is not EndpointKind.REGION and region is not None:
                endpoint = Endpoint(EndpointKind.REGION, region)  # the conversation stays where it is
        if store and (self.state is None or self.state.retention_s(p.team) <= 0):
            store = False  # this gateway (or this team's retention) keeps nothing
        return PreparedChat(payload, endpoint, store)

    def name(self, prep: PreparedChat, inbound: Inbound, routed: Routed) -> None:
        """Give the answer its stored id (naming the region that runs it) and the object's receipt."""
        if not prep.store or routed.status != 200:
            return
        prep.oid = new_id(PREFIX, routed.region)
        hook = self._receipts()
        if hook is not None:  # the receipt names where it ran and where it is kept
            routed.headers = [(k, v) for k, v in routed.headers if k != HEADER]
            routed.headers.append(
                (HEADER, hook.object_receipt(inbound, routed.region, routed.route, prep.oid, routed.region))
            )

    async def keep(
        self, prep: PreparedChat, inbound: Inbound, routed: Routed, completion: dict[str, Any]
    ) -> None:
        """Store ``completion`` (already carrying ``prep.oid``) in the region its id names."""
        state = self.required_state()
        region = region_of(prep.oid, PREFIX) or routed.region
        receipt = next((v for k, v in routed.headers if k == HEADER), None)
        doc = {"completion": completion, "messages": prep.payload["messages"], "receipt": receipt}
        now = time.time()
        team = inbound.principal.team
        await state.stores.store(region).put(
            StoredObject(
                prep.oid,
                KIND,
                team,
                "completed",
                routed.region,
                now,
                state.expires_at(team, now),
                orjson.dumps(doc).decode(),
            )
        )

    async def retrieve(
        self, oid: str, endpoint: Endpoint, p: Principal
    ) -> tuple[dict[str, Any], StoredObject]:
        obj = await self.load(oid, endpoint, p)
        return orjson.loads(obj.body), obj


def _message_of(choice: dict[str, Any]) -> dict[str, Any]:
    msg = choice.get("message") or {}
    out: dict[str, Any] = {"content": msg.get("content") or ""}
    if msg.get("tool_calls"):
        out["tool_calls"] = msg["tool_calls"]
    return out


__all__ = ["Assembled", "PreparedChat", "StoredCompletions"]
