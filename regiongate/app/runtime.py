"""The composition root: builds every part from one config and passes it down. No globals elsewhere."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from regiongate.app.scaleout import Replica, Shared, build_shared, fit_fleet
from regiongate.config import Config, HttpBackend, SimulatedBackend
from regiongate.config.control import resolve as resolve_control
from regiongate.control.metering import TeeUsage
from regiongate.control.plane import ControlPlane, build_control
from regiongate.core import Access, Grant, Location, Region, Tier
from regiongate.health.load import LoadCollector, LoadScraper
from regiongate.health.metrics import Metrics
from regiongate.health.probes import HealthCollector, Prober
from regiongate.objects.deferred import Deferred
from regiongate.objects.responses import StoredResponses
from regiongate.objects.service import ObjectState
from regiongate.pipeline.auth import KeyStore, Principal, StaticKeys, hash_key, new_key
from regiongate.pipeline.caller import Callers
from regiongate.pipeline.catalog import in_endpoint
from regiongate.pipeline.failover import Gateway
from regiongate.pipeline.usage import MemoryUsage
from regiongate.state.capacity import CapacityStore, LocalCapacity
from regiongate.state.fleet import Backend, Deployment, Fleet
from regiongate.state.ttft import TtftEstimate
from regiongate.upstream import dialect
from regiongate.upstream.base import Upstream
from regiongate.upstream.dialect import Dialect
from regiongate.upstream.http import HttpUpstream
from regiongate.upstream.simulated import SimulatedEngine

if TYPE_CHECKING:
    from regiongate.pipeline.tracing import Tracing

log = logging.getLogger("regiongate")
DEMO_KEY_ENV = "REGIONGATE_DEMO_API_KEY"


@dataclass
class Runtime:
    config: Config
    config_keys: StaticKeys  # the config file's keys (and the demo key), rebuilt by each reload
    gateway: Gateway
    metrics: Metrics
    usage: MemoryUsage
    callers: Callers  # who calls, through which endpoint: both listeners resolve callers here
    generated_keys: dict[str, str] = field(default_factory=dict)  # team -> key printed at start-up
    shared: Shared | None = None  # Redis link, rate limits, probes (regiongate.app.scaleout)
    on_reload: list[Callable[[Runtime], None]] = field(default_factory=list)  # see regiongate.app.reload
    control: ControlPlane | None = None  # teams, keys, usage store, receipts (regiongate.control)
    mounts: list[tuple[str, Any]] = field(default_factory=list)  # (path prefix, ASGI app): admin, console
    load: LoadScraper | None = None  # backends' own load metrics (regiongate.health.load)
    objects: ObjectState | None = None  # stored objects per region (regiongate.objects)
    deferred: Deferred | None = None  # deferred completions over those stores
    responses: StoredResponses = field(default_factory=lambda: StoredResponses(None, lambda: None))
    # Other listeners' drains (gRPC), awaited before anything they use is closed.
    drains: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    keys: KeyStore = field(
        init=False
    )  # what callers are looked up in: the control plane's, then the config's
    tracing: Tracing | None = None  # OpenTelemetry, when [tracing] is set (regiongate.pipeline.tracing)
    _started: bool = False

    def __post_init__(self) -> None:
        self.use_keys(self.config_keys)

    @property
    def fleet(self) -> Fleet:
        """The fleet in force. It has one home, the gateway: a reload swaps ``gateway.fleet`` and every reader
        (listeners, probes, the load scraper, metrics) sees the new one at once."""
        return self.gateway.fleet

    def use_keys(self, config_keys: StaticKeys) -> None:
        """Install the config's keys, under the control plane's when there is one."""
        self.config_keys = config_keys
        self.keys = self.control.keys_over(config_keys) if self.control is not None else config_keys

    async def start(self) -> None:
        """Start background work (Redis heartbeat, probes) inside the serving loop. Idempotent: the first
        listener to come up starts it, before it accepts any call."""
        if self._started:
            return
        self._started = True
        if self.shared is not None:
            await self.shared.start()
        if self.control is not None:
            await self.control.start(self.gateway)  # before traffic: keys loaded, receipt key ready
        if self.load is not None:
            await self.load.start()
        if self.objects is not None:
            await self.objects.start()

    async def usage_for(self, team: str) -> list[dict[str, object]]:
        if self.control is not None and self.control.started:  # every gateway's usage, from the store
            return await self.control.usage_for(team)
        return self.usage.for_team(team)

    async def aclose(self) -> None:
        for drain in self.drains:
            await drain()
        if self.deferred is not None:  # running deferred completions store their results first
            await self.deferred.drain(self.config.gateway.shutdown_grace_s)
        if self.shared is not None:
            await self.shared.aclose()  # probes stop, rate-limit settlements flush
        if self.load is not None:
            await self.load.aclose()
        await self.usage.aclose()
        if self.objects is not None:
            await self.objects.aclose()
        if self.control is not None:
            await self.control.aclose()  # flushes every pending usage record
        await self.fleet.aclose()
        await self.fleet.capacity.aclose()  # releases every lease still held
        if self.shared is not None:
            await self.shared.close_link()
        if self.tracing is not None:
            await self.tracing.aclose()  # exports the spans still queued


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
        first_byte_floor_s=t.first_byte_floor_s,
        first_byte_factor=t.first_byte_factor,
        idle_timeout_s=t.idle_s,
        total_timeout_s=t.total_s,
        dialect=dialect.of(spec),
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
                responses = spec.responses_mode if isinstance(spec, HttpBackend) else spec.responses
                upstream = _upstream(cfg, spec, bid, by_id[d.region], d.limit)
                backends.append(
                    Backend(
                        bid,
                        upstream,
                        upstream_model,
                        prefill=spec.prefill,
                        responses_via_chat=responses == "chat",
                        dialect=dialect.of(spec) if isinstance(spec, HttpBackend) else Dialect(),
                    )
                )
            deployments.append(
                Deployment(
                    model,
                    d.region,
                    d.limit,
                    backends,
                    TtftEstimate(cfg.gateway.ttft_halflife_s),
                    priority_reserve=d.reserve_slots,
                    flex_limit=d.flex_limit,
                )
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
        tiers = None if team.service_tiers is None else frozenset(Tier(t) for t in team.service_tiers)
        for i, k in enumerate(team.keys):
            access = Access(team.name, grants, k.zone, k.spill_budget_ms, Tier(k.service_tier), tiers)
            principal = Principal(team.name, k.id or f"{team.name}-{i}", access, k.continuation, k.ttft_budget_ms)
            if k.sha256:
                keys.add(k.sha256, principal)
                found = True
            elif k.env and env.get(k.env):
                keys.add(hash_key(env[k.env]), principal)
                found = True
        if not found and team.generate_demo_key:
            key = new_key()
            access = Access(team.name, grants, tiers=tiers)
            keys.add(hash_key(key), Principal(team.name, f"{team.name}-generated", access))
            generated[team.name] = key
    return keys, generated


def _mount_control(rt: Runtime, control: ControlPlane) -> None:
    """The control plane's HTTP surfaces on the runtime (admin API, key set, console), following reloads."""
    from regiongate.console import ConsoleApp
    from regiongate.control.http import AdminApi, WellKnown

    rt.mounts.append(("/admin", AdminApi(control)))
    rt.mounts.append(("/.well-known", WellKnown(control)))
    if rt.config.control.console:
        rt.mounts.append(("/console", ConsoleApp(rt.callers, lambda: rt.config)))
    rt.on_reload.append(lambda r: control.reconfigure(r.config))


def build_runtime(
    cfg: Config,
    env: dict[str, str] | None = None,
    capacity: CapacityStore | None = None,
    replica: Replica | None = None,
) -> Runtime:
    metrics = Metrics()
    shared = build_shared(cfg, replica or Replica(), capacity)
    fleet = build_fleet(cfg, shared.capacity)
    fit_fleet(fleet, cfg, shared)
    usage = MemoryUsage()
    keys, generated = build_keys(cfg, env)
    zones = {r.id: r.zone for r in cfg.regions}
    control = build_control(cfg, dict(os.environ) if env is None else env, zones)
    sink = TeeUsage(usage, control.writer) if control is not None else usage
    gateway = Gateway(fleet, sink, metrics, hooks=[shared.limits])
    metrics.watch(lambda: gateway.fleet)
    callers = Callers(cfg, lambda: rt.keys)
    rt = Runtime(cfg, keys, gateway, metrics, usage, callers, generated, shared, control=control)
    rt.on_reload.append(lambda r: r.callers.configure(r.config))
    if cfg.tracing is not None and cfg.tracing.enabled:
        from regiongate.pipeline.tracing import Tracing  # the SDK and exporter are loaded only when used

        rt.tracing = gateway.tracing = Tracing.build(cfg.tracing, dict(os.environ) if env is None else env)
        gateway.hooks.insert(0, rt.tracing.hook)  # first, so a refused request's span is named too
    if control is not None:
        _mount_control(rt, control)
    if cfg.state.store != "none":
        data_dir = resolve_control(cfg.control, dict(os.environ) if env is None else env).data_dir
        rt.objects = ObjectState(cfg, str(data_dir), lambda e, a, r: in_endpoint(rt.fleet, e, a, r))
        receipts = lambda: rt.control.receipts if rt.control else None  # noqa: E731
        rt.deferred = Deferred(rt.objects, lambda: rt.gateway, receipts)
        rt.responses = StoredResponses(rt.objects, receipts)
    shared.prober = Prober(lambda: rt.fleet, cfg.health)
    metrics.registry.register(HealthCollector(lambda: rt.fleet, shared.link))
    rt.load = LoadScraper(lambda: rt.fleet, lambda: rt.config)
    metrics.registry.register(LoadCollector(lambda: rt.fleet))
    return rt
