"""Background Responses (``background: true``): the create answers a ``queued`` response at once, the
request runs through the normal plan in the background (``Deferred.spawn``, so a graceful shutdown waits for
it) and its result replaces the stored response; ``GET /v1/responses/{id}`` reads it while it runs and
``POST /v1/responses/{id}/cancel`` stops it.

Like a deferred completion, the id is given before the request runs, so it names the region of the plan's
first candidate at submission; the run follows the same plan, so the region that processed it is in the
same scope and is recorded (and signed in the receipt) next to the result. A cancel from any gateway on the
same stores marks the row ``cancelled``; a run that ends afterwards does not overwrite it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from regiongate.core import Endpoint, RouteError
from regiongate.core.errors import ClientError
from regiongate.objects.deferred import Deferred
from regiongate.objects.ids import new_id, region_of
from regiongate.objects.responses import KIND, PREFIX, Prepared, StoredResponses
from regiongate.objects.store import StoredObject
from regiongate.pipeline.auth import Principal
from regiongate.pipeline.exchange import Inbound

log = logging.getLogger("regiongate.background")
RUNNING = ("queued", "in_progress")


class BackgroundResponses:
    def __init__(self, responses: StoredResponses, deferred: Deferred) -> None:
        self.responses = responses
        self.deferred = deferred
        self._running: dict[str, asyncio.Task[None]] = {}

    async def start(self, prep: Prepared, inbound: Inbound) -> dict[str, Any]:
        """Store a queued response in the first candidate's region, run the request; returns it."""
        if inbound.stream:
            raise ClientError(
                "Background responses are not streamed by this gateway: create it with stream false, then "
                "poll GET /v1/responses/{id}.",
                code="unsupported_parameter",
                param="stream",
            )
        if not prep.store:
            raise ClientError(
                "A background response must be stored (store true, and a team retention above 0).",
                code="invalid_value",
                param="store",
            )
        plan = self.deferred.gateway.plan(inbound)
        if isinstance(plan, RouteError):
            raise plan
        region = plan.first.region
        oid = new_id(PREFIX, region)
        now = time.time()
        resp: dict[str, Any] = {
            "id": oid,
            "object": "response",
            "created_at": int(now),
            "status": "queued",
            "background": True,
            "model": inbound.model,
            "output": [],
            **prep.echo,
        }
        state = self.responses.required_state()
        team = inbound.principal.team
        doc = {"response": resp, "input": prep.history, "receipt": None}
        await state.stores.store(region).put(
            StoredObject(
                oid, KIND, team, "queued", "", now, state.expires_at(team, now), orjson.dumps(doc).decode()
            )
        )
        task = self.deferred.spawn(self._run(prep, inbound, oid, region))
        self._running[oid] = task
        task.add_done_callback(lambda _: self._running.pop(oid, None))
        return resp

    async def _run(self, prep: Prepared, inbound: Inbound, oid: str, stored_in: str) -> None:
        region, route = "", ""
        resp: dict[str, Any]
        try:
            routed = await self.deferred.gateway.dispatch(inbound)
            try:
                region, route = routed.region, routed.route
                try:
                    obj = orjson.loads(routed.body) if routed.chunks is None else None
                except orjson.JSONDecodeError:
                    obj = None
                if routed.status == 200 and isinstance(obj, dict):
                    resp = obj
                else:
                    err = obj.get("error") if isinstance(obj, dict) else None
                    resp = _failed(err if isinstance(err, dict) else None, routed.status)
            finally:
                await routed.aclose()
        except RouteError as e:
            err = e.body()["error"]
            resp = _failed(err if isinstance(err, dict) else None, e.status)
        except asyncio.CancelledError:
            raise  # cancelled: the cancel has written the row
        except Exception as e:  # the response must say it failed rather than stay queued forever
            log.warning("background response failed", extra={"error": type(e).__name__})
            resp = _failed(None, 500)
        resp.update(prep.echo, id=oid, background=True, model=resp.get("model") or inbound.model)
        hook = self.deferred.receipts
        receipt = hook.object_receipt(inbound, region, route, oid, stored_in) if hook and region else None
        store = self.responses.required_state().stores.store(stored_in)
        try:
            current = await store.get(oid, KIND, inbound.principal.team)
            if current is None or current.status not in RUNNING:
                return  # cancelled (or deleted) meanwhile: keep what the caller asked for
            doc = {"response": resp, "input": prep.history, "receipt": receipt}
            await store.update(oid, str(resp.get("status", "completed")), region, orjson.dumps(doc).decode())
        except RouteError as e:
            log.warning("background response not stored", extra={"error": e.message[:200]})

    async def cancel(self, oid: str, endpoint: Endpoint, p: Principal) -> dict[str, Any]:
        """Stop a running background response; a finished one is answered as it is."""
        obj = await self.responses.load(oid, endpoint, p)
        doc = orjson.loads(obj.body)
        resp: dict[str, Any] = doc["response"]
        if not resp.get("background"):
            raise ClientError(
                "Only a response created with background true can be cancelled.", code="invalid_value"
            )
        if obj.status in RUNNING:
            task = self._running.pop(oid, None)
            if task is not None:
                task.cancel()
            resp["status"] = "cancelled"
            store = self.responses.required_state().stores.store(region_of(oid, PREFIX) or "")
            await store.update(oid, "cancelled", obj.processed_region, orjson.dumps(doc).decode())
        return resp


def _failed(err: dict[str, Any] | None, status: int) -> dict[str, Any]:
    return {
        "object": "response",
        "status": "failed",
        "output": [],
        "error": {
            "code": str((err or {}).get("code") or "server_error"),
            "message": str((err or {}).get("message") or f"The backend answered HTTP {status}."),
        },
    }


__all__ = ["BackgroundResponses"]
