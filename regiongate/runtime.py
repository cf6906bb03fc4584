"""The composition root: builds every part from one config and passes it down. No globals elsewhere."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from regiongate.auth import Principal, StaticKeys, hash_key, new_key
from regiongate.capacity import CapacityStore, LocalCapacity
from regiongate.config import Config, HttpBackend, SimulatedBackend
from regiongate.core import Access, Grant, Location, Region
from regiongate.fleet import Backend, Deployment, Fleet
from regiongate.gateway import Gateway
from regiongate.health import Ewma
from regiongate.metrics import Metrics
from regiongate.upstream.base import Upstream
from regiongate.upstream.http import HttpUpstream
from regiongate.upstream.simulated import SimulatedEngine
from regiongate.usage import MemoryUsage

log = logging.getLogger("regiongate")
DEMO_KEY_ENV = "REGIONGATE_DEMO_API_KEY"


@dataclass
class Runtime:
    config: Config
    fleet: Fleet
    keys: StaticKeys
    gateway: Gateway
    metrics: Metrics
    usage: MemoryUsage
    generated_keys: dict[str, str] = field(default_factory=dict)  # team -> key printed at start-up

    async def aclose(self) -> None:
        await self.usage.aclose()
        await self.fleet.aclose()
        await self.fleet.capacity.aclose()


def _upstream(
    cfg: Config, spec: SimulatedBackend | HttpBackend, bid: str, region: Region, limit: int
) -> Upstream:
    if isinstance(spec, SimulatedBackend):
        return SimulatedEngine(
            bid,
            region.id,
            region.name,
            ttft_ms=spec.ttft_ms,
            tokens_per_s=spec.tokens_per_s,
            slots=spec.slots or limit,
            rtt_ms=spec.rtt_ms,
        )
    t = spec.timeouts or cfg.timeouts
    key = spec.api_key or (os.environ.get(spec.api_key_env) if spec.api_key_env else None)
    return HttpUpstream(
        bid,
        spec.url,
        api_key=key,
        connect_timeout_s=t.connect_s,
        first_byte_timeout_s=t.first_byte_s,
        idle_timeout_s=t.idle_s,
        total_timeout_s=t.total_s,
    )


def build_fleet(cfg: Config, capacity: CapacityStore | None = None) -> Fleet:
    regions = [Region(r.id, Location(r.lat, r.lon), r.zone, r.name) for r in cfg.regions]
    by_id = {r.id: r for r in regions}
    deployments = []
    for d in cfg.deployments:
        for model in d.models:
            backends = []
            for i, spec in enumerate(d.backends):
                bid = f"{d.region}/{model}/{spec.id or i}"
                upstream_model = spec.model if isinstance(spec, HttpBackend) else None
                backends.append(
                    Backend(bid, _upstream(cfg, spec, bid, by_id[d.region], d.limit), upstream_model)
                )
            deployments.append(
                Deployment(model, d.region, d.limit, backends, Ewma(cfg.gateway.ttft_halflife_s))
            )
    return Fleet(
        regions,
        deployments,
        Location(cfg.gateway.lat, cfg.gateway.lon),
        capacity or LocalCapacity(),
        time.monotonic,
        cfg.gateway.retry_after_s,
    )


def build_keys(cfg: Config, env: dict[str, str] | None = None) -> tuple[StaticKeys, dict[str, str]]:
    env = dict(os.environ) if env is None else env
    keys = StaticKeys()
    generated: dict[str, str] = {}
    for team in cfg.teams:
        grants = None if team.grants is None else tuple(Grant(g.model, g.region) for g in team.grants)
        found = False
        for i, k in enumerate(team.keys):
            access = Access(team.name, grants, k.zone, k.spill_budget_ms)
            principal = Principal(team.name, k.id or f"{team.name}-{i}", access)
            if k.sha256:
                keys.add(k.sha256, principal)
                found = True
            elif k.env and env.get(k.env):
                keys.add(hash_key(env[k.env]), principal)
                found = True
        if not found and team.generate_demo_key:
            key = new_key()
            keys.add(hash_key(key), Principal(team.name, f"{team.name}-generated", Access(team.name, grants)))
            generated[team.name] = key
    return keys, generated


def build_runtime(
    cfg: Config, env: dict[str, str] | None = None, capacity: CapacityStore | None = None
) -> Runtime:
    metrics = Metrics()
    fleet = build_fleet(cfg, capacity)
    metrics.watch(fleet)
    usage = MemoryUsage()
    keys, generated = build_keys(cfg, env)
    return Runtime(cfg, fleet, keys, Gateway(fleet, usage, metrics), metrics, usage, generated)
