"""The admin API (``/admin/...``), guarded by its own key, and the receipt key set (``/.well-known/...``).

Both are ASGI apps mounted on the REST listener. The admin API is a thin layer over
``regiongate.control.ops.Operations`` (the CLI uses the same operations): parse and check the request,
call one operation, render JSON. Errors use the OpenAI error body like the rest of the gateway.

    GET    /admin/teams                          teams (store and config)
    POST   /admin/teams                          {"name", "grants"?, "service_tiers"?} -> 201 team
    GET    /admin/teams/{team}                   team with its keys
    DELETE /admin/teams/{team}                   delete the team and its keys
    PUT    /admin/teams/{team}/grants            {"grants": null | [{"model", "region"?}]}
    PUT    /admin/teams/{team}/service_tiers     {"service_tiers": null | ["default", "flex", "priority"]}
    GET    /admin/teams/{team}/models?region=R   the models x regions matrix
    GET    /admin/teams/{team}/usage?days=N      usage by day, model and region
    POST   /admin/teams/{team}/keys              {"name"?, "zone"?, "spill_budget_ms"?, "continuation"?, "ttft_budget_ms"?,
                                                  "service_tier"?} -> 201, key shown once
    GET    /admin/keys?team=T                    keys (never the secret)
    DELETE /admin/keys/{id}                      revoke
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from regiongate.asgi import BodyTooLarge, Receive, Scope, Send, read_body, send_json
from regiongate.control.ops import config_team
from regiongate.core.errors import Invalid, NotFound, RouteError
from regiongate.pipeline.auth import bearer_token, hash_key
from regiongate.pipeline.receipts import JWKS_PATH

if TYPE_CHECKING:
    from regiongate.control.plane import ControlPlane

MAX_BODY = 64 * 1024
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    503: "service_unavailable",
}

Handler = Callable[["Call"], Awaitable[tuple[int, Any]]]


class Call:
    """One admin request: its path parameters, query and (lazily) JSON body."""

    def __init__(self, scope: Scope, receive: Receive, params: dict[str, str]) -> None:
        self.scope = scope
        self.receive = receive
        self.params = params
        self.query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}

    async def json(self, allowed: set[str]) -> dict[str, Any]:
        try:
            body = await read_body(self.receive, MAX_BODY, None)
        except BodyTooLarge:
            raise Invalid(f"Request body exceeds {MAX_BODY} bytes.") from None
        if not body.strip():
            return {}
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise Invalid(f"Request body is not valid JSON: {e}.") from None
        if not isinstance(obj, dict):
            raise Invalid("Request body must be a JSON object.")
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise Invalid(
                f"Unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}.",
                param=unknown[0],
            )
        return obj


def _error(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


class AdminApi:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.ops = plane.ops
        t = r"(?P<team>[^/]+)"
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"^/admin/teams/?$"), self.list_teams),
            ("POST", re.compile(r"^/admin/teams/?$"), self.create_team),
            ("GET", re.compile(rf"^/admin/teams/{t}/?$"), self.get_team),
            ("DELETE", re.compile(rf"^/admin/teams/{t}/?$"), self.delete_team),
            ("PUT", re.compile(rf"^/admin/teams/{t}/grants/?$"), self.set_grants),
            ("PUT", re.compile(rf"^/admin/teams/{t}/service_tiers/?$"), self.set_service_tiers),
            ("GET", re.compile(rf"^/admin/teams/{t}/models/?$"), self.models),
            ("GET", re.compile(rf"^/admin/teams/{t}/usage/?$"), self.usage),
            ("POST", re.compile(rf"^/admin/teams/{t}/keys/?$"), self.create_key),
            ("GET", re.compile(r"^/admin/keys/?$"), self.list_keys),
            ("DELETE", re.compile(r"^/admin/keys/(?P<key>[^/]+)/?$"), self.revoke_key),
        ]

    def _authorised(self, scope: Scope) -> tuple[int, dict[str, Any]] | None:
        expected = self.plane.admin_key_hash
        if expected is None:
            return 403, _error(
                403,
                "The admin API is disabled: set the admin key in the environment variable named by "
                f"[control].admin_key_env ({self.plane.cfg.control.admin_key_env}) or [control].admin_key_sha256.",
                "admin_disabled",
            )
        raw = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        key = bearer_token(raw.decode("latin-1") if raw else None)
        if key is None or not hmac.compare_digest(hash_key(key), expected):
            what = (
                "Incorrect admin key." if key else "No admin key: send 'Authorization: Bearer <admin key>'."
            )
            return 401, _error(401, what, "invalid_admin_key")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        denied = self._authorised(scope)
        if denied is not None:
            await send_json(send, denied[0], denied[1])
            return
        path, method = scope["path"], scope["method"]
        allowed = []
        for m, pattern, handler in self.routes:
            match = pattern.match(path)
            if match is None:
                continue
            if m != method:
                allowed.append(m)
                continue
            try:
                status, body = await handler(Call(scope, receive, match.groupdict()))
            except RouteError as e:
                status, body = e.status, _error(e.status, e.message, e.code, e.param)
            await send_json(send, status, body)
            return
        if allowed:
            msg = f"Method {method} is not allowed on {path}; use {', '.join(allowed)}."
            await send_json(
                send, 405, _error(405, msg, "method_not_allowed"), [(b"allow", ", ".join(allowed).encode())]
            )
            return
        await send_json(send, 404, _error(404, f"Unknown admin path {method} {path}.", "unknown_url"))

    # --- teams ---------------------------------------------------------------------------------------
    async def list_teams(self, call: Call) -> tuple[int, Any]:
        teams = [dict(t.to_json(), source="store") for t in await self.ops.store.list_teams()]
        for t in self.ops.cfg.teams:
            found = config_team(self.ops.cfg, t.name)
            if found is not None:
                teams.append(dict(found.to_json(), source="config"))
        return 200, {"object": "list", "data": teams}

    async def create_team(self, call: Call) -> tuple[int, Any]:
        body = await call.json({"name", "grants", "service_tiers"})
        if "name" not in body:
            raise Invalid("Field 'name' is required.", param="name")
        grants = self.ops.offer.grants(body.get("grants"))
        team = await self.ops.create_team(body["name"], grants, body.get("service_tiers"))
        return 201, team.to_json()

    async def get_team(self, call: Call) -> tuple[int, Any]:
        team = await self.ops.team(call.params["team"])
        try:
            keys = [k.to_json() for k in await self.ops.list_keys(team.name)]
        except NotFound:
            keys = []  # a config team: its keys are in the config file
        return 200, dict(team.to_json(), keys=keys)

    async def delete_team(self, call: Call) -> tuple[int, Any]:
        await self.ops.delete_team(call.params["team"])
        return 200, {"name": call.params["team"], "deleted": True}

    async def set_grants(self, call: Call) -> tuple[int, Any]:
        body = await call.json({"grants"})
        if "grants" not in body:
            raise Invalid("Field 'grants' is required: null (every model) or a list.", param="grants")
        team = await self.ops.set_grants(call.params["team"], self.ops.offer.grants(body["grants"]))
        return 200, team.to_json()

    async def set_service_tiers(self, call: Call) -> tuple[int, Any]:
        body = await call.json({"service_tiers"})
        if "service_tiers" not in body:
            raise Invalid(
                "Field 'service_tiers' is required: null (every tier) or a list of tiers.",
                param="service_tiers",
            )
        team = await self.ops.set_service_tiers(call.params["team"], body["service_tiers"])
        return 200, team.to_json()

    async def models(self, call: Call) -> tuple[int, Any]:
        return 200, await self.ops.matrix(call.params["team"], call.query.get("region"))

    async def usage(self, call: Call) -> tuple[int, Any]:
        raw = call.query.get("days", "30")
        if not raw.isdigit():
            raise Invalid("'days' must be a whole number.", param="days")
        rows = await self.ops.usage(call.params["team"], int(raw))
        return 200, {"object": "list", "team": call.params["team"], "data": [r.to_json() for r in rows]}

    # --- keys ----------------------------------------------------------------------------------------
    async def create_key(self, call: Call) -> tuple[int, Any]:
        body = await call.json(
            {"name", "zone", "spill_budget_ms", "continuation", "ttft_budget_ms", "service_tier"}
        )
        key, secret = await self.ops.create_key(
            call.params["team"],
            body.get("name"),
            body.get("zone"),
            body.get("spill_budget_ms"),
            body.get("continuation", True),
            body.get("ttft_budget_ms"),
            body.get("service_tier"),
        )
        return 201, dict(key.to_json(), key=secret)

    async def list_keys(self, call: Call) -> tuple[int, Any]:
        keys = await self.ops.list_keys(call.query.get("team"))
        return 200, {"object": "list", "data": [k.to_json() for k in keys]}

    async def revoke_key(self, call: Call) -> tuple[int, Any]:
        key = await self.ops.revoke_key(call.params["key"])
        return 200, key.to_json()


class WellKnown:
    """``/.well-known/regiongate-keys.json``: the receipt public keys as a JWK Set (no auth: public)."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != JWKS_PATH:
            await send_json(
                send, 404, _error(404, f"Unknown path {scope['path']}; see {JWKS_PATH}.", "unknown_url")
            )
            return
        if scope["method"] not in ("GET", "HEAD"):
            await send_json(send, 405, _error(405, "Use GET.", "method_not_allowed"))
            return
        await send_json(send, 200, self.plane.jwks(), [(b"cache-control", b"public, max-age=60")])
