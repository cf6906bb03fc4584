"""The control plane as the runtime sees it: built without I/O (``build_control``), started before the
listeners accept traffic (``start``: migrate, load keys, load or create the receipt key, start the
refresher and the usage writer), closed after they drain (``aclose``: flush usage, close the store)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from regiongate.config import Config
from regiongate.config.control import Resolved, resolve
from regiongate.control.keys import CachedKeys, ControlKeys
from regiongate.control.metering import BatchUsageWriter
from regiongate.control.model import AccessSnapshot
from regiongate.control.ops import Operations
from regiongate.control.store import ControlStore, open_store
from regiongate.core import GatewayError
from regiongate.core.errors import RouteError
from regiongate.pipeline.auth import KeyStore, StaticKeys
from regiongate.pipeline.receipts import KeyRing, ReceiptHook, jwk_set

if TYPE_CHECKING:
    from regiongate.pipeline.failover import Gateway

log = logging.getLogger("regiongate.control")


class ControlPlane:
    def __init__(self, cfg: Config, resolved: Resolved, zones: dict[str, str]) -> None:
        assert resolved.store_url is not None
        c = cfg.control
        self.cfg = cfg
        self.resolved = resolved
        self.store: ControlStore = open_store(resolved.store_url)
        self.keys = CachedKeys(self.store, c.refresh_s)
        every = round(1 / c.usage_rows) if c.usage_rows else 0
        self.writer = BatchUsageWriter(self.store, c.usage_flush_s, c.usage_batch, rows_every=every)
        self.ops = Operations(self.store, cfg, changed=lambda: self.keys.refresh())
        self.ring = KeyRing(resolved.receipt_key_dir) if c.receipts else None
        self.receipts: ReceiptHook | None = None
        self.zones = zones
        self.admin_key_hash = resolved.admin_key_hash
        self._local_jwks: list[dict[str, str]] = []
        self.started = False

    def keys_over(self, config_keys: StaticKeys) -> KeyStore:
        """The key store callers are looked up in: the store's keys first, then the config's."""
        return ControlKeys(config_keys, self.keys)

    def reconfigure(self, cfg: Config) -> None:
        """After a config reload: new teams and grants for the operations, new zones and batching for
        receipts (the store, the key directory and receipts on or off need a restart)."""
        self.cfg = cfg
        self.ops.reconfigure(cfg)
        self.zones.clear()
        self.zones.update({r.id: r.zone for r in cfg.regions})
        if self.receipts is not None:
            self.receipts.batch = cfg.control.receipt_batch
            self.receipts.window_s = cfg.control.receipt_window_us / 1e6

    async def start(self, gateway: Gateway) -> None:
        if self.started:
            return
        version = await self.store.migrate()
        await self.keys.start()
        if self.ring is not None:
            key = self.ring.load_or_create()
            await self.store.publish_signing_key(key.kid, key.jwk)
            self._local_jwks = self.ring.public_keys()
            control = self.cfg.control
            self.receipts = ReceiptHook(
                key, self.zones, batch=control.receipt_batch, window_s=control.receipt_window_us / 1e6
            )
            gateway.hooks.append(self.receipts)
            self.keys.on_reload.append(self._maybe_rotated)
        await self.writer.start()
        self.started = True
        log.info(
            "control plane ready",
            extra={
                "store": self.store.description,
                "schema": version,
                "keys": len(self.keys.snapshot.by_hash),
                "receipt_kid": self.receipts.key.kid if self.receipts else None,
                "admin_api": self.admin_key_hash is not None,
            },
        )

    def _maybe_rotated(self, _snapshot: AccessSnapshot) -> None:
        """A rotation publishes the new public key, which bumps the revision: pick up the new key."""
        if self.ring is None or self.receipts is None:
            return
        self._local_jwks = self.ring.public_keys()
        kid = self.ring.current_kid()
        if kid and kid != self.receipts.key.kid:
            try:
                self.receipts.key = self.ring.load_or_create()
                log.info("receipt signing key rotated", extra={"kid": kid})
            except Exception as e:  # keep signing with the old key; it is still published
                log.warning("cannot load rotated receipt key", extra={"error": str(e)[:200]})

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return jwk_set(self._local_jwks, self.keys.snapshot.signing_keys)

    async def usage_for(self, team: str, days: int = 30) -> list[dict[str, object]]:
        since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - (days - 1) * 86400))
        try:
            rows = await self.store.usage(team, since)
        except RouteError as e:
            raise GatewayError(e.message, code="store_unavailable", status=503, retry_after=1.0) from None
        return [r.to_json() for r in rows]

    async def aclose(self) -> None:
        if not self.started:
            return  # nothing was opened
        self.started = False
        await self.writer.aclose()
        await self.keys.aclose()
        await self.store.aclose()


def build_control(cfg: Config, env: dict[str, str], zones: dict[str, str]) -> ControlPlane | None:
    resolved = resolve(cfg.control, env)
    if resolved.store_url is None:
        return None
    return ControlPlane(cfg, resolved, zones)
