"""The stateful half of the Responses API, kept by regiongate whatever the backend: ``store``,
``previous_response_id``, retrieve, list input items, delete.

A stored response lives in the store of the region that processed it, under an id naming that region
(``resp_<region>_<hex>``); its document holds the response and the whole conversation's input items, so a
follow-up needs nothing from any other region. A follow-up (``previous_response_id``) is processed in the
region holding the previous response — the conversation stays where it started, and is never copied into
another region's store — and only if that region is in the endpoint's scope: otherwise 404, as if it did
not exist. The backend always gets ``store: false`` and the full input, so no backend keeps state.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from regiongate.core import Endpoint, EndpointKind, RouteError
from regiongate.core.errors import ClientError
from regiongate.objects.ids import new_id, region_of
from regiongate.objects.kept import KeptObjects
from regiongate.objects.store import StoredObject
from regiongate.pipeline.auth import Principal
from regiongate.pipeline.exchange import Inbound, Routed
from regiongate.pipeline.receipts import HEADER
from regiongate.pipeline.sse import data_of, event

PREFIX = "resp"
KIND = "response"
WHAT = "response"


def input_items(raw: Any) -> list[dict[str, Any]]:
    """The request's ``input`` as a list of items (a string is one user message)."""
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list) or not all(isinstance(i, dict) for i in raw):
        raise ClientError(
            "Field 'input' must be a string or a list of input items.", code="invalid_value", param="input"
        )
    return [i if "type" in i else {"type": "message", **i} for i in raw]


@dataclass(slots=True)
class Prepared:
    payload: dict[str, Any]  # what the backend gets: full input, store false, no previous_response_id
    body: bytes
    endpoint: Endpoint  # the caller's, or pinned to the previous response's region
    history: list[dict[str, Any]]  # every input item of the conversation so far, this request's included
    store: bool
    previous: str | None
    echo: dict[str, Any]  # request fields the response echoes as the client sent them


class StoredResponses(KeptObjects):
    PREFIX, KIND, WHAT = PREFIX, KIND, WHAT

    async def prepare(self, payload: dict[str, Any], endpoint: Endpoint, p: Principal) -> Prepared:
        store = payload.get("store", True)  # the OpenAI API stores unless told not to
        if not isinstance(store, bool):
            raise ClientError("Field 'store' must be a boolean.", code="invalid_type", param="store")
        prev = payload.get("previous_response_id")
        if prev is not None and (not isinstance(prev, str) or not prev):
            raise ClientError(
                "Field 'previous_response_id' must be a response id.",
                code="invalid_value",
                param="previous_response_id",
            )
        items = input_items(payload.get("input"))
        history: list[dict[str, Any]] = []
        if prev is not None:
            doc = orjson.loads((await self.load(prev, endpoint, p)).body)
            history = [*doc["input"], *doc["response"].get("output", [])]
            region = region_of(prev, PREFIX)
            if endpoint.kind is not EndpointKind.REGION and region is not None:
                endpoint = Endpoint(EndpointKind.REGION, region)  # the conversation stays where it is
        history.extend(items)
        if store and (self.state is None or self.state.retention_s(p.team) <= 0):
            store = False  # this gateway (or this team's retention) keeps nothing
        upstream = {k: v for k, v in payload.items() if k != "previous_response_id"}
        upstream["input"] = history
        upstream["store"] = False
        echo = {"store": store, "previous_response_id": prev}
        return Prepared(upstream, orjson.dumps(upstream), endpoint, history, store, prev, echo)

    def _oid_and_receipt(self, prep: Prepared, inbound: Inbound, routed: Routed) -> str:
        oid = new_id(PREFIX, routed.region)
        hook = self._receipts()
        if prep.store and hook is not None:  # the receipt names where it ran and where it is kept
            routed.headers = [(k, v) for k, v in routed.headers if k != HEADER]
            routed.headers.append(
                (HEADER, hook.object_receipt(inbound, routed.region, routed.route, oid, routed.region))
            )
        return oid

    async def _keep(self, prep: Prepared, inbound: Inbound, routed: Routed, resp: dict[str, Any]) -> None:
        state = self.required_state()
        receipt = next((v for k, v in routed.headers if k == HEADER), None)
        doc = {"response": resp, "input": prep.history, "receipt": receipt}
        now = time.time()
        team = inbound.principal.team
        await state.stores.store(routed.region).put(
            StoredObject(
                resp["id"],
                KIND,
                team,
                str(resp.get("status", "completed")),
                routed.region,
                now,
                state.expires_at(team, now),
                orjson.dumps(doc).decode(),
            )
        )

    async def finish(self, prep: Prepared, inbound: Inbound, routed: Routed) -> Routed:
        """Give the backend's answer our id and the request's echo fields; store it when asked."""
        if routed.status != 200:
            return routed
        oid = self._oid_and_receipt(prep, inbound, routed)
        if routed.chunks is not None:
            routed.chunks = self._stream(prep, inbound, routed, routed.chunks, oid)
            return routed
        try:
            resp = orjson.loads(routed.body)
        except orjson.JSONDecodeError:
            return routed
        if not isinstance(resp, dict):
            return routed
        resp.update(prep.echo, id=oid)
        if prep.store:
            await self._keep(prep, inbound, routed, resp)
        routed.body = orjson.dumps(resp)
        return routed

    async def _stream(
        self, prep: Prepared, inbound: Inbound, routed: Routed, chunks: AsyncIterator[bytes], oid: str
    ) -> AsyncIterator[bytes]:
        buf = b""
        try:
            async for chunk in chunks:
                buf += chunk
                cut = buf.rfind(b"\n\n")
                if cut < 0:
                    continue
                events, buf = buf[: cut + 2], buf[cut + 2 :]
                out = []
                for ev in events.split(b"\n\n")[:-1]:
                    out.append(await self._event(prep, inbound, routed, ev + b"\n\n", oid))
                yield b"".join(out)
            if buf:
                yield buf
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _event(self, prep: Prepared, inbound: Inbound, routed: Routed, ev: bytes, oid: str) -> bytes:
        if b'"response"' not in ev:
            return ev
        data = data_of(ev)
        try:
            obj = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            return ev
        if not isinstance(obj, dict) or not isinstance(obj.get("response"), dict):
            return ev
        resp = obj["response"]
        resp.update(prep.echo, id=oid)
        if prep.store and obj.get("type") in ("response.completed", "response.incomplete"):
            await self._keep(prep, inbound, routed, resp)  # stored before the client sees the end
        head = b"event: " + str(obj.get("type")).encode() + b"\n" if ev.startswith(b"event:") else b""
        return head + event(obj)

    async def retrieve(
        self, oid: str, endpoint: Endpoint, p: Principal
    ) -> tuple[dict[str, Any], StoredObject]:
        obj = await self.load(oid, endpoint, p)
        doc = orjson.loads(obj.body)
        timeout = self.required_state().cfg.deferred_timeout_s
        if obj.status in ("queued", "in_progress") and time.time() - obj.created_at > timeout:
            # a background run whose gateway process died: it will never finish
            doc["response"].update(status="failed", error={"code": "expired", "message": "The run was lost."})
        return doc, obj


def input_item_list(doc: dict[str, Any]) -> dict[str, Any]:
    items = []
    for i, item in enumerate(doc.get("input", [])):
        item = {"id": item.get("id") or f"item_{i}", **item}
        if isinstance(item.get("content"), str):  # listed as the API lists them: a list of content parts
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        items.append(item)
    items.reverse()  # newest first, the API's default order
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }


__all__ = ["Prepared", "RouteError", "StoredResponses", "input_item_list", "input_items"]
