"""Endpoint resolution as the listeners use it: the pure ``resolve_endpoint`` behind a bounded cache,
so each distinct ``Host`` / ``:authority`` is parsed once. Shared by REST and gRPC."""

from __future__ import annotations

from regiongate.config import Config
from regiongate.core import Endpoint, RouteError, resolve_endpoint

CACHE_SIZE = 4096  # distinct hosts remembered; beyond that each is resolved afresh (bounded memory)


class Endpoints:
    def __init__(self, cfg: Config) -> None:
        self.base_domains = list(cfg.gateway.base_domains)
        self.region_ids = frozenset(r.id for r in cfg.regions)
        self.zones = frozenset(r.zone for r in cfg.regions)
        self._cache: dict[str, Endpoint | RouteError] = {}

    def resolve(self, host: str) -> Endpoint:
        """The endpoint ``host`` names; raises RouteError (404 unknown_region / unknown_host)."""
        hit = self._cache.get(host)
        if hit is None:
            try:
                hit = resolve_endpoint(host, self.base_domains, self.region_ids, self.zones)
            except RouteError as e:
                hit = e
            if len(self._cache) < CACHE_SIZE:
                self._cache[host] = hit
        if isinstance(hit, RouteError):
            raise hit
        return hit
