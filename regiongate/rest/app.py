"""The OpenAI-compatible REST listener: a raw ASGI app over the shared gateway.

Listener -> authentication -> endpoint resolution (Host) -> parse only what routing needs -> gateway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson

from regiongate.asgi import (
    JSON,
    REFUSED,
    ASGIApp,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    client_error,
    error_headers,
    read_body,
    send_bytes,
    send_error,
    send_json,
    stream_response,
)
from regiongate.core import Endpoint, Location, RouteError
from regiongate.core.errors import GatewayError
from regiongate.objects.background import BackgroundResponses
from regiongate.objects.responses import input_item_list
from regiongate.objects.services import StatefulServices
from regiongate.pipeline.affinity import CONVERSATION_HEADERS_RAW
from regiongate.pipeline.auth import Principal
from regiongate.pipeline.caller import CLIENT_LOCATION, check_n, client_request_id
from regiongate.pipeline.catalog import ModelView, find_model, region_views, visible_models
from regiongate.pipeline.exchange import Inbound
from regiongate.pipeline.receipts import HEADER
from regiongate.pipeline.services import Readiness
from regiongate.rest.admin_site import METRICS, is_admin_path
from regiongate.rest.openapi import DOCUMENT_BYTES
from regiongate.rest.paths import forwarded, normalise
from regiongate.state.first_byte import BUDGET_HEADER, parse_budget_ms

log = logging.getLogger("regiongate.access")
_BUDGET = BUDGET_HEADER.encode()
_LOCATION = CLIENT_LOCATION.encode()
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
MAX_JSON_DEPTH = 128  # nesting levels of a request body (JSON schemas in tools rarely pass 20)


def too_many_connections() -> GatewayError:
    return GatewayError(
        "This gateway worker is at its limit of open connections ([edge].max_connections); retry "
        "shortly, reusing one keep-alive connection.",
        code="too_many_connections",
        status=503,
        retry_after=1.0,
        headers=(("connection", "close"),),  # uvicorn closes the connection after this answer
    )


class RestApp:
    """The REST listener. It receives the services it uses, the control plane's surfaces to mount by path
    prefix (admin API, key sets, console) and the process's readiness; the lifespan (start, drain, close)
    is the listeners' runner's (``app.listeners``), not this app's."""

    def __init__(
        self,
        services: StatefulServices,
        mounts: Sequence[tuple[str, ASGIApp]] = (),
        ready: Readiness | None = None,
        access_log: bool = False,
        admin_here: bool = True,
    ) -> None:
        self.rt = services
        self.callers = services.callers
        self.admin_here = admin_here  # False: /admin and /metrics live on the admin listener only
        self.readiness = ready or Readiness()
        self.access_log = access_log
        self._request_id = self.callers.request_id
        self.mounts: list[tuple[str, ASGIApp]] = [
            (prefix, app) for prefix, app in mounts if admin_here or not is_admin_path(prefix)
        ]

    @property
    def max_body(self) -> int:
        return self.rt.config.gateway.max_body_bytes  # read per request: a reload may change it

    # --- ASGI entry ----------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        headers = dict(scope["headers"])
        rid = self._request_id()  # always ours: a client's x-request-id is echoed, never trusted
        raw_client_id = headers.get(b"x-request-id")
        client_rid = client_request_id(raw_client_id.decode("latin-1")) if raw_client_id else None
        if client_rid is not None:
            send = _echoing(send, client_rid)
        normalised = normalise(scope.get("raw_path") or scope["path"].encode("latin-1", "replace"))
        path = normalised if normalised is not None else scope["path"]
        started = time.monotonic()
        status = 0
        try:
            if scope.get(REFUSED):
                raise too_many_connections()
            if normalised is None:
                raise client_error(404, f"Unknown path {method} {path!r}.", "unknown_url")
            if path.startswith("/v1/"):
                status = await self._api(scope, receive, send, method, path, headers, rid, client_rid)
            elif path == "/healthz":
                status = 200
                await send_json(send, 200, {"status": "ok"})
            elif path == "/readyz":
                ready = self.readiness.ready
                status = 200 if ready else 503
                await send_json(send, status, {"status": "ready" if ready else "draining"})
            elif path == "/openapi.json":
                status = 200
                await send_bytes(send, 200, DOCUMENT_BYTES)
            elif path == "/metrics" and self.admin_here:
                status = 200
                await send_bytes(send, 200, self.rt.metrics.render(), METRICS)
            elif (mounted := self._mounted(path)) is not None:
                status = await _with_status(mounted, scope, receive, send)
            else:
                raise client_error(
                    404, f"Unknown path {method} {path}. See /v1/chat/completions.", "unknown_url"
                )
        except RouteError as e:
            status = e.status
            await send_error(send, e, rid)
        except BodyTooLarge:
            status = 413
            err = client_error(
                413, f"Request body exceeds the limit of {self.max_body} bytes.", "request_too_large"
            )
            await send_error(send, err, rid)
        except ConnectionError:
            status = 499
        except Exception:
            status = 500  # a bug: uvicorn answers 500, and the access log still names the request
            raise
        finally:
            if self.access_log:
                log.info(
                    "request",
                    extra={
                        "request_id": rid,
                        "method": method,
                        "path": path,
                        "status": status,
                        "ms": round((time.monotonic() - started) * 1000, 2),
                    },
                )

    def _mounted(self, path: str) -> ASGIApp | None:
        for prefix, app in self.mounts:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return app
        return None

    # --- /v1 ---------------------------------------------------------------------------------------
    def _endpoint(self, scope: Scope) -> Endpoint:
        hosts = [v for k, v in scope["headers"] if k == b"host"]
        if len(hosts) > 1:
            raise client_error(400, "Send exactly one Host header.", "invalid_host", param="host")
        if not hosts and scope.get("http_version", "1.1") != "1.0":
            raise client_error(400, "HTTP/1.1 requires a Host header.", "invalid_host", param="host")
        return self.callers.endpoint(hosts[0].decode("latin-1") if hosts else "")

    def _principal(self, headers: dict[bytes, bytes]) -> Principal:
        raw = headers.get(b"authorization")
        how = "'Authorization: Bearer <key>'"
        return self.callers.principal(raw.decode("latin-1") if raw else None, how)[0]

    def _client_location(self, scope: Scope, headers: dict[bytes, bytes]) -> Location | None:
        client = scope.get("client")
        raw = headers.get(_LOCATION)
        forwarded = (
            [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
            if b"x-forwarded-for" in headers
            else []
        )
        explicit = raw.decode("latin-1") if raw is not None else None
        return self.callers.location(client[0] if client else None, explicit, forwarded)

    async def _api(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        method: str,
        path: str,
        headers: dict[bytes, bytes],
        rid: str,
        client_rid: str | None,
    ) -> int:
        if method == "POST" and path.startswith("/v1/responses/") and path.endswith("/cancel"):
            oid = path[len("/v1/responses/") : -len("/cancel")]
            principal = self._principal(headers)
            resp = await self._background().cancel(oid, self._endpoint(scope), principal)
            await send_json(send, 200, resp)
            return 200
        if method == "POST":
            route = forwarded(path)
            if route is None:
                raise client_error(404, f"Unknown path POST {path}. See /v1/chat/completions.", "unknown_url")
            principal = self._principal(headers)
            endpoint = self._endpoint(scope)
            return await self._proxy(
                scope, receive, send, route, headers, principal, endpoint, rid, client_rid
            )
        principal = self._principal(headers)
        endpoint = self._endpoint(scope)
        if path.startswith("/v1/responses/") and method in ("GET", "DELETE"):
            return await self._stored_response(send, method, path, principal, endpoint)
        if method != "GET":
            raise client_error(405, f"Method {method} is not allowed on {path}.", "method_not_allowed")
        if path == "/v1/models":
            views = visible_models(self.rt.fleet, endpoint, principal.access, self.rt.config.models)
            await send_json(send, 200, {"object": "list", "data": [_model(m) for m in views]})
            return 200
        if path.startswith("/v1/models/"):
            model_id = path[len("/v1/models/") :]
            m = find_model(self.rt.fleet, endpoint, principal.access, self.rt.config.models, model_id)
            await send_json(send, 200, _model(m))
            return 200
        if path == "/v1/regions":
            await send_json(
                send, 200, {"object": "list", "data": region_views(self.rt.fleet, principal.access)}
            )
            return 200
        if path == "/v1/usage":
            rows = await self.rt.usage_for(principal.team)
            await send_json(send, 200, {"object": "list", "data": rows})
            return 200
        raise client_error(404, f"Unknown path GET {path}.", "unknown_url")

    async def _proxy(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        subpath: str,
        headers: dict[bytes, bytes],
        principal: Principal,
        endpoint: Endpoint,
        rid: str,
        client_rid: str | None,
    ) -> int:
        declared = headers.get(b"content-length")
        body = await read_body(
            receive, self.max_body, int(declared) if declared and declared.isdigit() else None
        )
        payload = _parse(body)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise client_error(
                400, "Field 'model' is required and must be a non-empty string.", "invalid_value", "model"
            )
        stream = payload.get("stream", False)
        if not isinstance(stream, bool):
            raise client_error(400, "Field 'stream' must be a boolean.", "invalid_type", "stream")
        for name in ("max_tokens", "max_completion_tokens", "n"):
            v = payload.get(name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise client_error(400, f"Field '{name}' must be a positive integer.", "invalid_value", name)
        check_n(payload.get("n"))
        if subpath == "/chat/completions":
            msgs = payload.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise client_error(
                    400, "Field 'messages' must be a non-empty array.", "invalid_value", "messages"
                )
        try:
            raw_budget = headers.get(_BUDGET)
            budget = parse_budget_ms(raw_budget.decode("latin-1") if raw_budget is not None else None)
        except ValueError as e:
            raise client_error(400, str(e), "invalid_value", BUDGET_HEADER) from None
        prepared = None
        background = payload.get("background", False)
        if not isinstance(background, bool):
            raise client_error(400, "Field 'background' must be a boolean.", "invalid_type", "background")
        if subpath == "/responses":  # the stateful half is ours, whatever the backend (objects.responses)
            prepared = await self.rt.responses.prepare(payload, endpoint, principal)
            if background:  # ours too: the backend answers in the foreground of our background task
                prepared.payload.pop("background", None)
                prepared.body = orjson.dumps(prepared.payload)
                prepared.echo["background"] = True
            payload, body, endpoint = prepared.payload, prepared.body, prepared.endpoint
        inbound = Inbound(
            subpath,
            payload,
            body,
            model,
            stream,
            endpoint,
            principal,
            rid,
            self._client_location(scope, headers),
            explain=headers.get(b"x-regiongate-explain") == b"1",
            continuation=headers.get(b"x-regiongate-continue", b"").lower() != b"off",
            hedge=headers.get(b"x-regiongate-hedge", b"").lower() != b"off",
            conversation=next((v.decode("latin-1") for h in CONVERSATION_HEADERS_RAW if (v := headers.get(h))), None),
            ttft_budget_ms=budget,
            client_request_id=client_rid,
        )
        if prepared is not None and background:
            queued = await self._background().start(prepared, inbound)
            await send_json(send, 200, queued, [(b"x-request-id", rid.encode())])
            return 200
        routed = await self.rt.gateway.dispatch(inbound)
        if prepared is not None:
            try:
                routed = await self.rt.responses.finish(prepared, inbound, routed)
            except BaseException:
                await routed.aclose()
                raise
        extra = [
            (b"x-regiongate-region", routed.region.encode()),
            (b"x-regiongate-route", routed.route.encode()),
            (b"x-request-id", rid.encode()),
        ]
        extra.extend((k.encode(), v.encode()) for k, v in routed.headers)
        if routed.chunks is None:
            await send_bytes(send, routed.status, routed.body, routed.content_type.encode() or JSON, extra)
            return routed.status
        await stream_response(receive, send, SSE_HEADERS + extra, routed.chunks, routed.aclose)
        return 200

    def _background(self) -> BackgroundResponses:
        if self.rt.background is None:
            raise GatewayError(
                'Background responses need a state store; this gateway runs with [state] store = "none".',
                code="state_disabled",
                status=501,
            )
        return self.rt.background

    async def _stored_response(
        self, send: Send, method: str, path: str, principal: Principal, endpoint: Endpoint
    ) -> int:
        """GET /v1/responses/{id}[/input_items], DELETE /v1/responses/{id}: read in the region the id names."""
        rest = path[len("/v1/responses/") :]
        oid, _, sub = rest.partition("/")
        responses = self.rt.responses
        if method == "DELETE" and not sub:
            await responses.delete(oid, endpoint, principal)
            await send_json(send, 200, {"id": oid, "object": "response.deleted", "deleted": True})
            return 200
        if method == "GET" and sub in ("", "input_items"):
            doc, obj = await responses.retrieve(oid, endpoint, principal)
            extra = [(b"x-regiongate-region", obj.processed_region.encode())]
            if doc.get("receipt"):
                extra.append((HEADER.encode(), str(doc["receipt"]).encode()))
            body = doc["response"] if not sub else input_item_list(doc)
            await send_bytes(send, 200, orjson.dumps(body), JSON, extra)
            return 200
        raise client_error(404, f"Unknown path {method} {path}.", "unknown_url")


def _model(m: ModelView) -> dict[str, object]:
    return {
        "id": m.id,
        "object": "model",
        "created": m.info.created,
        "owned_by": m.info.owned_by,
        "regions": list(m.regions),
    }


def _echoing(send: Send, client_rid: str) -> Send:
    """``send`` that adds ``x-client-request-id`` to the response head."""
    echo = (b"x-client-request-id", client_rid.encode("ascii"))

    async def echoing(msg: Any) -> None:
        if msg["type"] == "http.response.start":
            msg["headers"] = [*msg.get("headers", ()), echo]
        await send(msg)

    return echoing


async def _with_status(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> int:
    """Run a mounted app, noting the status it answers with (for the access log)."""
    status = 0

    async def noting(msg: Any) -> None:
        nonlocal status
        if msg["type"] == "http.response.start":
            status = msg["status"]
        await send(msg)

    await app(scope, receive, noting)
    return status


def _parse(body: bytes) -> dict[str, Any]:
    if not body:
        raise client_error(400, "Request body is empty; send a JSON object.", "invalid_json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise client_error(400, f"Request body is not valid JSON: {e}.", "invalid_json") from None
    if not isinstance(payload, dict):
        raise client_error(400, "Request body must be a JSON object.", "invalid_json")
    # orjson reads 1024 levels but writes ~254, and a body is re-encoded when a backend renames the
    # model or a stream asks for usage: refuse depth here rather than fail there. Counting brackets first
    # keeps the walk off ordinary bodies.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _too_deep(payload, MAX_JSON_DEPTH):
        raise client_error(
            400, f"Request body is nested more than {MAX_JSON_DEPTH} levels deep.", "invalid_json"
        )
    return payload


def _too_deep(obj: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


__all__ = ["RestApp", "error_headers"]
