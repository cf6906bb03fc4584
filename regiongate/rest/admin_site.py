"""The operator's listener (``serve --admin-listen HOST:PORT``): the admin API and ``/metrics`` on an
address of their own, so that a firewall, a private interface or loopback can keep them off the public
port. When it is given, the public REST listener answers 404 for ``/admin`` and ``/metrics``."""

from __future__ import annotations

from regiongate.asgi import ASGIApp, Receive, Scope, Send, client_error, send_bytes, send_error, send_json
from regiongate.health.metrics import Metrics

ADMIN_PREFIX = "/admin"
METRICS = b"text/plain; version=0.0.4; charset=utf-8"


def is_admin_path(path: str) -> bool:
    return path == "/metrics" or path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


class AdminSite:
    """Receives what it serves: the metrics and the control plane's admin API (None without a control plane)."""

    def __init__(self, metrics: Metrics, admin: ASGIApp | None) -> None:
        self.metrics = metrics
        self.admin = admin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan: the listeners' runner starts and stops the services
        path: str = scope["path"]
        if path == "/metrics":
            await send_bytes(send, 200, self.metrics.render(), METRICS)
        elif path == "/healthz":
            await send_json(send, 200, {"status": "ok"})
        elif self.admin is not None and is_admin_path(path):
            await self.admin(scope, receive, send)
        else:
            err = client_error(404, f"Unknown path {path!r} on the admin listener.", "unknown_url")
            await send_error(send, err, "")
