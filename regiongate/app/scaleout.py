"""The parts that make several replicas (or workers) behave as one gateway, built from ``[shared]``,
``[limits]`` and ``[health]``: the Redis link, the capacity store, the rate-limit hook and the prober.

With ``[shared].redis`` capacity and limits live in Redis and every replica enforces the whole limit
together with the others. Without it each process counts alone; with ``--workers N`` each worker then
takes its share of every deployment limit and rate limit (``share_of``), so the N workers together never
exceed the configured totals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from regiongate.config import Config
from regiongate.config.scale import OutageMode
from regiongate.health.probes import Prober
from regiongate.pipeline.ratelimit import LocalRates, RateLimits, RateStore, RedisRates
from regiongate.state.capacity import CapacityStore, LocalCapacity, deployment_key
from regiongate.state.capacity_redis import RedisCapacity
from regiongate.state.fleet import Fleet
from regiongate.state.redis_link import RedisLink, share_of


@dataclass(frozen=True, slots=True)
class Replica:
    """This process's place among the workers started by one ``regiongate serve``."""

    index: int = 0
    count: int = 1


@dataclass
class Shared:
    replica: Replica
    link: RedisLink | None
    capacity: CapacityStore
    limits: RateLimits
    prober: Prober | None = None
    started: bool = field(default=False)

    @property
    def split(self) -> bool:
        """True when limits are split between workers (several workers, nothing shared)."""
        return self.link is None and self.replica.count > 1

    def share(self, n: int) -> int:
        return share_of(n, self.replica.index, self.replica.count) if self.split else n

    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        if self.link is not None:
            await self.link.start()
        await self.capacity.start()
        if self.prober is not None:
            await self.prober.start()

    async def aclose(self) -> None:
        """Stop probes and flush rate-limit settlements; leases and the link are closed by the runtime
        after the fleet (``close_link``)."""
        if self.prober is not None:
            await self.prober.aclose()
        await self.limits.aclose()

    async def close_link(self) -> None:
        if self.link is not None:
            await self.link.aclose()


def build_shared(cfg: Config, replica: Replica, capacity: CapacityStore | None = None) -> Shared:
    link = RedisLink(cfg.shared) if cfg.shared.redis and capacity is None else None
    store: RateStore
    if link is not None:
        capacity = RedisCapacity(
            link, default_mode=cfg.shared.on_redis_outage, retry_after_s=cfg.gateway.retry_after_s
        )
        store = RedisRates(link, cfg.shared.on_redis_outage, cfg.gateway.retry_after_s)
    else:
        store = LocalRates()
    shared = Shared(replica, link, capacity or LocalCapacity(), RateLimits(cfg.limits, store))
    shared.limits.share = shared.share
    return shared


def fit_fleet(fleet: Fleet, cfg: Config, shared: Shared) -> None:
    """Apply what the config says about limits per worker, outlier thresholds and outage modes."""
    h = cfg.health
    for b in fleet.backends.values():  # thresholds of the config in force; a carried backend keeps its streak
        b.outlier.configure(h.consecutive_failures, h.base_ejection_s, h.max_ejection_s)
    limits: dict[str, int] = {}
    for d in fleet.deployments.values():
        d.limit = shared.share(d.limit)
        limits[d.key] = d.limit
    modes: dict[str, OutageMode] = {}
    for dc in cfg.deployments:
        if dc.on_redis_outage is not None:
            for m in dc.models:
                modes[deployment_key(m, dc.region)] = dc.on_redis_outage
    shared.capacity.configure(limits, modes, cfg.shared.on_redis_outage)
    shared.limits.cfg = cfg.limits
    shared.limits.store.configure(cfg.shared.on_redis_outage)
