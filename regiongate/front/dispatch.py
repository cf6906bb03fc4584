"""The first thing a front connection meets: it picks the protocol and hands the connection over.

Over TLS the choice is the ALPN result (``h2`` -> HTTP/2, anything else -> HTTP/1.1), known as soon as the
handshake is done; in cleartext the first bytes are compared with the HTTP/2 connection preface (prior
knowledge h2c), anything else is HTTP/1.1. HTTP/1.1 is the REST port's own protocol (``front.edge``, uvicorn's
httptools protocol under the ``[edge]`` limits: head size, head and body timeouts, connection cap), so the
REST path over HTTP/1.1 is the one the separate-ports mode runs, plus one Host-vs-SNI comparison per
request. A cleartext connection that sends no protocol within ``header_timeout_s`` gets a 408.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, ClassVar, cast

from regiongate.asgi import ASGIApp, Receive, Scope, Send, client_error, send_error
from regiongate.front.edge import EdgeLimits, EdgeProtocol, close_with, edge_protocol
from regiongate.front.h2server import FrontEnv, H2Server
from regiongate.front.hosts import misdirected, refusal_message
from regiongate.grpc.sniff import H2_PREFACE

SNI_ATTR = "regiongate_sni"


def remember_sni(ctx: ssl.SSLContext) -> None:
    """Keep each connection's TLS server name on its SSLObject (Python exposes it only in this callback)."""

    def on_sni(obj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        setattr(obj, SNI_ATTR, name.lower() if name else None)

    ctx.sni_callback = on_sni
    ctx.set_alpn_protocols(["h2", "http/1.1"])


class SniGuard:
    """The REST app behind one TLS connection: a request whose Host is not the server name is refused."""

    __slots__ = ("app", "ok", "sni")

    def __init__(self, app: ASGIApp, sni: str) -> None:
        self.app, self.sni = app, sni
        self.ok: bytes | None = None  # the last Host found to match (a connection usually sends one)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = next((v for k, v in scope["headers"] if k == b"host"), None)
            if raw is None or raw != self.ok:
                host = raw.decode("latin-1") if raw is not None else None
                if misdirected(self.sni, host):
                    err = client_error(421, refusal_message(self.sni, host), "misdirected_request")
                    await send_error(send, err, "")
                    return
                self.ok = raw
        await self.app(scope, receive, send)


class FrontProtocol(asyncio.Protocol):
    """uvicorn's ``http=`` protocol class for the one-port listener (``env``, ``limits`` and ``h1`` are bound
    by ``front_protocol``)."""

    alpn_protocols: ClassVar[list[str]] = ["h2", "http/1.1"]  # uvicorn sets them on its SSL context
    env: ClassVar[FrontEnv]
    limits: ClassVar[EdgeLimits]
    h1: ClassVar[type[EdgeProtocol]]

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        tls = transport.get_extra_info("ssl_object")
        if tls is not None:
            self._hand_over(tls.selected_alpn_protocol() == "h2", getattr(tls, SNI_ATTR, None), b"")
            return
        loop = self.loop or asyncio.get_running_loop()
        self._timer = loop.call_later(self.limits.header_timeout_s, self._silent)

    def _silent(self) -> None:
        """Cleartext and nothing that names a protocol yet: the same answer as a head that is too slow."""
        self._timer = None
        tr = self.transport
        if tr is not None and not tr.is_closing():
            msg = b"The request head did not arrive within %gs." % self.limits.header_timeout_s
            close_with(tr, b"408 Request Timeout", msg)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if len(buf) < len(H2_PREFACE) and H2_PREFACE.startswith(buf):
            self.buf = buf  # could still be the preface
            return
        self.buf = b""
        self._hand_over(buf.startswith(H2_PREFACE), None, buf)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:  # closed before it chose a protocol
            self._timer.cancel()

    def _hand_over(self, h2: bool, sni: str | None, first: bytes) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tr = self.transport
        assert tr is not None
        base: ASGIApp = self.config.loaded_app
        app: ASGIApp = base if sni is None else SniGuard(base, sni)
        proto: asyncio.Protocol
        if h2:
            proto = H2Server(self.env, self.limits, app, sni, self.server_state, self.app_state)
        else:
            h1 = self.h1(
                config=self.config, server_state=self.server_state, app_state=self.app_state, _loop=self.loop
            )
            if sni is not None:
                h1.app = app
            proto = h1
        tr.set_protocol(proto)
        proto.connection_made(tr)
        if first:
            proto.data_received(first)


def front_protocol(env: FrontEnv, limits: EdgeLimits) -> type[FrontProtocol]:
    """A ``FrontProtocol`` class bound to ``env`` and the ``[edge]`` limits (uvicorn instantiates it)."""
    attrs = {"env": env, "limits": limits, "h1": edge_protocol(limits)}
    return type("BoundFrontProtocol", (FrontProtocol,), attrs)
