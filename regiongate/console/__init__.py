"""The web console at ``/console``: static HTML, CSS and JS shipped in this package and served by the
gateway itself (no CDN, no external request; the Content-Security-Policy says so to the browser).

The page signs in with an API key kept in the tab's sessionStorage and calls the public API with it:
``/v1/regions`` (polled for live status), ``/v1/models`` and ``/v1/usage``. One extra endpoint,
``/console/api/session``, tells the page who the key belongs to (team, key id, fences, service tiers).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

from regiongate.asgi import Receive, Scope, Send, send_bytes, send_json
from regiongate.config import Config
from regiongate.core.errors import ClientError
from regiongate.pipeline.caller import Callers

PREFIX = "/console"
_TYPES = {
    "index.html": b"text/html; charset=utf-8",
    "console.css": b"text/css; charset=utf-8",
    "console.js": b"text/javascript; charset=utf-8",
    "favicon.svg": b"image/svg+xml",
}
_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", _CSP),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


def _error(status: int, message: str, code: str) -> dict[str, object]:
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class ConsoleApp:
    def __init__(self, callers: Callers, config: Callable[[], Config]) -> None:
        self.callers = callers
        self.config = config  # read per request: the config in force after a reload
        root = resources.files(__name__)
        self.files = {name: root.joinpath(name).read_bytes() for name in _TYPES}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            await send_json(send, 405, _error(405, "The console only answers GET.", "method_not_allowed"))
            return
        if path == PREFIX:
            await send_bytes(send, 308, b"", b"text/plain", [(b"location", b"/console/")])
            return
        name = path[len(PREFIX) + 1 :] or "index.html"
        if name == "api/session":
            await self._session(scope, send)
            return
        body = self.files.get(name)
        if body is None:
            await send_json(send, 404, _error(404, f"No console page {path}; open /console/.", "unknown_url"))
            return
        await send_bytes(send, 200, body, _TYPES[name], _HEADERS)

    async def _session(self, scope: Scope, send: Send) -> None:
        raw = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        try:
            principal, _ = self.callers.principal(raw.decode("latin-1") if raw else None, "an API key")
        except ClientError as e:
            await send_json(send, e.status, _error(e.status, e.message, e.code))
            return
        a = principal.access
        cfg = self.config()
        await send_json(
            send,
            200,
            {
                "team": principal.team,
                "key_id": principal.key_id,
                "zone": a.zone,
                "spill_budget_ms": a.spill_budget_ms,
                "grants": None
                if a.grants is None
                else [{"model": g.model, "region": g.region} for g in a.grants],
                # the key's tier for requests that name none, and the tiers its team may ask for
                "service_tier": a.tier.value,
                "service_tiers": None if a.tiers is None else sorted(t.value for t in a.tiers),
                "base_domain": (cfg.gateway.base_domains or ["localhost"])[0],
                "refresh_s": cfg.control.refresh_s,
            },
            [(b"cache-control", b"no-store")],
        )
