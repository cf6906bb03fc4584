"""Every listener of one process, started and drained together: the one lifespan (aiohttp's runner/site
split).

The composition root (``app.runtime``) builds the services once; each listener receives only what it uses
and runs as one ``Site`` (``app.sites``): it binds and accepts, then on ``drain`` stops accepting and lets
its in-flight work finish. ``Listeners`` owns the order:

1. the services start (keys loaded, probes and the Redis heartbeat running), then every site accepts;
2. SIGTERM opens the drain period (``[gateway].drain_s``): ``/readyz`` answers 503 while every site still
   serves, so a load balancer probing readiness stops sending before anything is refused;
3. then every site stops accepting and drains at once, for ``shutdown_grace_s``;
4. only then are the services closed (deferred work stored, leases released, usage flushed).

SIGINT (Ctrl-C at a terminal) or a second SIGTERM skips the drain period.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Sequence
from typing import Protocol

from regiongate.asgi import ASGIApp, Receive, Scope, Send
from regiongate.pipeline.services import Readiness

log = logging.getLogger("regiongate")


class Site(Protocol):
    """One listener: bound at ``start``, drained at ``drain``."""

    async def start(self) -> dict[str, object]:
        """Bind and accept; returns what to log about where it listens."""
        ...

    async def drain(self, grace_s: float) -> None:
        """Stop accepting, let in-flight work finish for up to ``grace_s``, then drop what is left."""
        ...


class Lifecycle(Protocol):
    """What the runner starts before the first site accepts and closes after the last one drained."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


# The collector's thresholds once started (gen0 allocations, gen1 and gen2 collections between older ones).
# A young collection walks what is alive among the objects made since the last one, which under load is the
# state of the requests in flight, whatever the threshold: at the default 700 it ran 54 times a second at
# 128 clients x 50 ms (0.36 ms each, p90 1.45), with a gen1 collection (2.2 ms) five times a second and a
# full one (4.4 ms) every two seconds; 20 us of CPU per request in all (9 at 32 clients x 0 ms). At 5000 a
# young collection walks about the same objects (3.6 ms at 128 in flight, 0.7 at 32) 2.6 (4.1) times a
# second: 3.7 (0.6) us per request, and no gen1 or full collection during the measurement. Cyclic garbage
# (little: ~2,000 objects collected in 80,000 requests) waits for the next young collection, under a second.
GC_THRESHOLDS = (5000, 50, 100)


def settle_heap() -> None:
    """Once started, hide everything alive (modules, config, pools, keys) from the cyclic
    garbage collector. Measured under load, each full collection otherwise walked all of them and paused
    the loop for 26-46 ms, several times a minute, the worst of the p99. Garbage made later is still
    collected, less often (``GC_THRESHOLDS``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Listeners:
    def __init__(
        self,
        services: Lifecycle,
        sites: Sequence[Site],
        readiness: Readiness,
        drain_s: float = 0.0,
        grace_s: float = 30.0,
        worker: int = 0,
    ) -> None:
        self.services = services
        self.sites = list(sites)
        self.readiness = readiness
        self.drain_s = drain_s
        self.grace_s = grace_s
        self.worker = worker  # for the logs: which of ``--workers N`` this is
        self._closing = asyncio.Event()
        self._drain_timer: asyncio.TimerHandle | None = None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """What a signal does (also callable directly): SIGTERM first opens the drain period, anything
        else (or a second SIGTERM) closes the sites now."""
        self.readiness.drain()
        if self._closing.is_set():
            return
        if sig == signal.SIGTERM and self.drain_s > 0 and self._drain_timer is None:
            log.info("draining: /readyz answers 503; still serving", extra={"drain_s": self.drain_s})
            loop = asyncio.get_running_loop()
            self._drain_timer = loop.call_later(self.drain_s, self._closing.set)
            return
        self._closing.set()

    async def run(self) -> None:
        """Start the services and every site, serve until a signal, then drain and close."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # from the start: a SIGTERM while starting drains too
            loop.add_signal_handler(sig, self.stop, sig)
        try:
            await self.services.start()  # before any site accepts its first call
            await self._serve()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _serve(self) -> None:
        started: list[Site] = []
        try:
            for site in self.sites:
                where = await site.start()
                started.append(site)
                log.info("listening", extra={**where, "worker": self.worker})
            settle_heap()
            await self._closing.wait()
        finally:
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            self.readiness.drain()
            log.info("draining: no new connections; in-flight requests may finish")
            await asyncio.gather(*(site.drain(self.grace_s) for site in started))
            await self.services.aclose()


class Lifespan:
    """An app for an ASGI server other than ours (e.g. granian in the benchmarks): the ASGI lifespan starts
    and closes the services, as ``Listeners`` does for ``regiongate serve``."""

    def __init__(self, app: ASGIApp, services: Lifecycle) -> None:
        self.app, self.services = app, services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await self.services.start()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.services.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
