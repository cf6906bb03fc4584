"""Deferred requests (chat completions, video generations): ``start`` answers with an id at once; the
request runs through the normal plan in the background and its result is stored in the region named by
the id; ``get`` answers pending / done / failed / expired. The id's prefix names the kind (``defer`` for
chat, ``video``), so one kind's id is not found through the other's method.

The id names the region of the plan's first candidate at submission, which is inside the request's
scope; the run itself follows the same plan (failover included), so the region that processed it is in
the same scope and is recorded next to the result. A graceful shutdown waits for running completions
(up to ``drain``'s timeout) so their results are stored; one still pending when its process died
answers EXPIRED once ``[state].deferred_timeout_s`` has passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from regiongate.core import Endpoint, RouteError
from regiongate.objects.ids import new_id, region_of
from regiongate.objects.service import ObjectState
from regiongate.objects.store import StoredObject, not_found
from regiongate.pipeline.auth import Principal
from regiongate.pipeline.exchange import Inbound
from regiongate.pipeline.failover import Gateway
from regiongate.pipeline.receipts import ReceiptHook
from regiongate.pipeline.routes import not_offered

log = logging.getLogger("regiongate.deferred")
KIND = "deferred"


@dataclass(slots=True)
class DeferredResult:
    status: str  # pending | done | failed | expired
    result: dict[str, Any] | None = None  # the backend's answer (a chat completion, a video), when done
    error: dict[str, Any] | None = None  # the OpenAI error body and its HTTP status, when failed
    processed_region: str = ""
    receipt: str | None = None
    http_status: int = 0  # of the failure


class Deferred:
    def __init__(
        self,
        state: ObjectState,
        gateway: Callable[[], Gateway],
        receipts: Callable[[], ReceiptHook | None],
    ) -> None:
        self.state = state
        self._gateway = gateway
        self._receipts = receipts
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, inbound: Inbound, prefix: str) -> str:
        """Plan, store a pending record in the first candidate's region, run it; returns the id."""
        plan = self._gateway().plan(inbound)
        if isinstance(plan, RouteError):
            raise plan
        region = plan.first.region
        oid = new_id(prefix, region)
        inbound.request_id = oid  # usage records and receipts carry the object's id
        now = time.time()
        store = self.state.stores.store(region)
        body = orjson.dumps({"model": inbound.model, "endpoint": str(inbound.endpoint)}).decode()
        await store.put(
            StoredObject(
                oid,
                KIND,
                inbound.principal.team,
                "pending",
                "",
                now,
                self.state.expires_at(inbound.principal.team, now),
                body,
            )
        )
        self.spawn(self._run(inbound, oid, region))
        return oid

    @property
    def gateway(self) -> Gateway:
        return self._gateway()

    @property
    def receipts(self) -> ReceiptHook | None:
        return self._receipts()

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` in the background; a graceful shutdown waits for it (``drain``)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, inbound: Inbound, oid: str, stored_in: str) -> None:
        status, region = "failed", ""
        doc: dict[str, Any] = {}
        try:
            routed = await self._gateway().dispatch(inbound)
            try:
                region = routed.region
                try:
                    obj = orjson.loads(routed.body)
                except orjson.JSONDecodeError:
                    obj = None
                missing = not_offered(inbound.path, routed.status, routed.backend, region)
                if routed.status == 200 and isinstance(obj, dict):
                    status, doc = "done", {"result": obj}
                elif missing is not None:
                    doc = {"error": missing.body()["error"], "http_status": missing.status}
                else:
                    doc = {"error": _error_of(obj, routed.status), "http_status": routed.status}
            finally:
                await routed.aclose()
            hook = self._receipts()
            if hook is not None:
                doc["receipt"] = hook.object_receipt(inbound, region, routed.route, oid, stored_in)
        except RouteError as e:
            doc = {"error": e.body()["error"], "http_status": e.status}
        except Exception as e:  # the result must say it failed rather than stay pending forever
            log.warning("deferred request failed", extra={"error": type(e).__name__})
            doc = {
                "error": {
                    "message": "The deferred request failed in the gateway.",
                    "type": "server_error",
                    "param": None,
                    "code": "internal_error",
                },
                "http_status": 500,
            }
        try:
            await self.state.stores.store(stored_in).update(oid, status, region, orjson.dumps(doc).decode())
        except RouteError as e:
            log.warning("deferred result not stored", extra={"error": e.message[:200]})

    async def get(self, oid: str, endpoint: Endpoint, p: Principal, prefix: str) -> DeferredResult:
        """The state of ``oid`` for this caller; a 404 when it is outside the endpoint's scope."""
        store = self.state.stores.locate(oid, region_of(oid, prefix), endpoint, p.access, "deferred request")
        obj = await store.get(oid, KIND, p.team)
        if obj is None:
            raise not_found("deferred request", oid)
        if obj.status == "pending":
            if time.time() - obj.created_at > self.state.cfg.deferred_timeout_s:
                return DeferredResult("expired")
            return DeferredResult("pending")
        doc = orjson.loads(obj.body)
        return DeferredResult(
            obj.status,
            doc.get("result"),
            doc.get("error"),
            obj.processed_region,
            doc.get("receipt"),
            int(doc.get("http_status") or 0),
        )

    async def drain(self, timeout_s: float) -> None:
        """Wait for running completions so their results are stored before the process exits."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for t in pending:
                t.cancel()


def _error_of(obj: Any, status: int) -> dict[str, Any]:
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return err
    return {
        "message": f"The backend answered HTTP {status}.",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_error",
    }


__all__ = ["Deferred", "DeferredResult"]
