"""``regiongate serve --region-ports``: every regional and zone endpoint also on a local port of its own.

A client addresses a regional endpoint by its host name (``us-east-1.api.example.com``). On one machine that
is ``us-east-1.localhost``, which curl and browsers resolve themselves but Python's and Node's resolvers do
not (Debian), and Node's ``openai`` client drops a ``Host`` override. So the demo also listens on one port
per endpoint: regions in the config's order, then data zones in order of first appearance, from ``base`` up
(``--port`` + 1 by default). A request on such a port is for that endpoint whatever its ``Host`` says; the
main port keeps resolving by ``Host``. The ports are fixed at start (a reload does not add or move them).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from regiongate.app.sockets import PortInUse, bind
from regiongate.asgi import ASGIApp, Receive, Scope, Send
from regiongate.config import Config


@dataclass(frozen=True, slots=True)
class RegionPort:
    port: int
    kind: str  # "region" or "zone"
    name: str

    @property
    def host(self) -> str:
        """The host name that resolves to this endpoint on any configuration."""
        return f"{self.name}.localhost"


def plan_ports(cfg: Config, base: int) -> list[RegionPort]:
    """The ports in a stable order: regions as configured, then zones (a zone named like a region has none)."""
    ports = [RegionPort(base + i, "region", r.id) for i, r in enumerate(cfg.regions)]
    regions = {r.id for r in cfg.regions}
    zones = [z for z in dict.fromkeys(r.zone for r in cfg.regions) if z not in regions]
    ports += [RegionPort(base + len(ports) + i, "zone", z) for i, z in enumerate(zones)]
    return ports


def describe(ports: list[RegionPort], host: str) -> str:
    """What ``serve`` prints at start: one line per endpoint, with the base URL an SDK takes."""
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "::1") else host
    width = max((len(p.name) for p in ports), default=0)
    lines = ["regiongate: endpoint ports (each serves one endpoint, whatever the Host header says):"]
    lines += [f"  {p.kind:<6} {p.name:<{width}}  http://{shown}:{p.port}/v1" for p in ports]
    return "\n".join(lines)


def region_listeners(
    cfg: Config, host: str, base: int, reuse_port: bool, app: ASGIApp
) -> tuple[list[socket.socket], ASGIApp]:
    """One more listening socket per endpoint, and the app that pins each of them to its endpoint."""
    pinned = plan_ports(cfg, base)
    socks = []
    for p in pinned:
        try:
            socks.append(bind(host, p.port, reuse_port))
        except PortInUse:
            for s in socks:
                s.close()
            raise PortInUse(host, p.port, f"{p.kind} {p.name}", "--region-ports") from None
    return socks, PortPinned(app, pinned)


class PortPinned:
    """An ASGI app that gives every HTTP request arriving on a pinned port that port's endpoint host, so the
    listener behind it resolves the endpoint by port. Requests on other ports pass through untouched."""

    def __init__(self, app: ASGIApp, ports: list[RegionPort]) -> None:
        self.app = app
        self.hosts = {p.port: p.host.encode() for p in ports}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            host = self.hosts.get(server[1]) if server else None
            if host is not None:
                headers = [(k, v) for k, v in scope["headers"] if k != b"host"]
                headers.append((b"host", host))
                scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
