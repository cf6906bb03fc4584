"""The stored-object state of one gateway: each region's store, each team's retention, the purge loop.

Built without I/O by the composition root; a store is opened on first use and the purge loop runs from
``start`` to ``aclose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from regiongate.config import Config
from regiongate.core import Access, Endpoint
from regiongate.objects.store import RegionalStores, store_urls

log = logging.getLogger("regiongate.state")


class ObjectState:
    def __init__(self, cfg: Config, data_dir: str, in_scope: Callable[[Endpoint, Access, str], bool]) -> None:
        s = cfg.state
        urls = store_urls(s.store, [r.id for r in cfg.regions], s.regions, data_dir)
        self.stores = RegionalStores(urls, in_scope)
        self.cfg = s
        self._retention = {t.name: t.retention_s for t in cfg.teams if t.retention_s is not None}
        self._purger: asyncio.Task[None] | None = None

    def retention_s(self, team: str) -> float:
        """How long ``team``'s objects are kept (its own setting, else ``[state].retention_s``)."""
        return self._retention.get(team, self.cfg.retention_s)

    def expires_at(self, team: str, now: float | None = None) -> float:
        return (time.time() if now is None else now) + self.retention_s(team)

    async def start(self) -> None:
        if self._purger is None:
            self._purger = asyncio.create_task(self._purge_loop())

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.purge_interval_s)
            try:
                n = await self.stores.purge()
                if n:
                    log.info("expired objects deleted", extra={"count": n})
            except Exception as e:  # a region's store being down must not stop the others' purge
                log.warning("purge failed", extra={"error": str(e)[:200]})

    async def aclose(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None
        await self.stores.aclose()
