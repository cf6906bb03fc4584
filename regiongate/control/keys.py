"""Keys and grants from the store, served from memory.

``CachedKeys.lookup`` is one SHA-256 and one dict probe, like the static keys; a background task polls the
store's revision counter every ``refresh_s`` and reloads the whole snapshot only when it changed, so a
revocation or grant change applies on every gateway within one interval (plus the reload itself). If the
store is unreachable the last snapshot stays in force and a warning is logged each interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from regiongate.control.model import AccessSnapshot
from regiongate.control.store import ControlStore
from regiongate.pipeline.auth import Principal, StaticKeys, hash_key

log = logging.getLogger("regiongate.control")


class CachedKeys:
    def __init__(self, store: ControlStore, refresh_s: float = 2.0) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.snapshot = AccessSnapshot(revision=-1)
        self.on_reload: list[Callable[[AccessSnapshot], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.failures = 0

    def lookup(self, key: str) -> Principal | None:
        return self.snapshot.by_hash.get(hash_key(key))

    async def refresh(self, force: bool = False) -> bool:
        """Reload when the store's revision moved (or ``force``); True when the snapshot changed."""
        async with self._lock:
            if not force and await self.store.revision() == self.snapshot.revision:
                return False
            self.snapshot = await self.store.load_access()
        for fn in self.on_reload:
            fn(self.snapshot)
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
                if self.failures:
                    log.info("control store reachable again", extra={"store": self.store.description})
                self.failures = 0
            except Exception as e:
                self.failures += 1
                log.warning(
                    "control store refresh failed; serving the last known keys",
                    extra={"store": self.store.description, "error": str(e)[:200], "failures": self.failures},
                )

    async def start(self) -> None:
        await self.refresh(force=True)
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="regiongate-key-refresh")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class ControlKeys:
    """The config's keys and then the store's cached keys, with one hash per lookup. A config reload
    builds a new one over the new config keys (``Runtime.use_keys``)."""

    def __init__(self, static: StaticKeys, cached: CachedKeys) -> None:
        self.static = static
        self.cached = cached

    def lookup(self, key: str) -> Principal | None:
        h = hash_key(key)
        return self.static.by_hash(h) or self.cached.snapshot.by_hash.get(h)
