"""The composition root: builds every part from one config and passes it down. No globals elsewhere."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from regiongate.app.scaleout import Replica, Shared, build_shared, fit_fleet
from regiongate.asgi import ASGIApp
from regiongate.config import Config, HttpBackend, SimulatedBackend
from regiongate.config.control import resolve as resolve_control
from regiongate.control.plane import ControlPlane, build_control
from regiongate.core import Access, Grant, Location, Region, Tier
from regiongate.health.load import LoadCollector, LoadScraper
from regiongate.health.metrics import Metrics
from regiongate.health.probes import HealthCollector, Prober
from regiongate.objects.background import BackgroundResponses
from regiongate.objects.completions import StoredCompletions
from regiongate.objects.deferred import Deferred
from regiongate.objects.responses import StoredResponses
from regiongate.objects.service import ObjectState
from regiongate.pipeline.auth import KeyStore, Principal, StaticKeys, hash_key, new_key
from regiongate.pipeline.caller import Callers
from regiongate.pipeline.catalog import in_endpoint
from regiongate.pipeline.failover import Gateway
from regiongate.pipeline.hedge import hedge_policy
from regiongate.pipeline.services import InForce, Live
from regiongate.pipeline.usage import MemoryUsage, UsageSink
from regiongate.rest.admin_site import ADMIN_PREFIX
from regiongate.state.affinity import AffinityStore, LocalAffinity, RedisAffinity
from regiongate.state.capacity import CapacityStore, LocalCapacity
from regiongate.state.fleet import Backend, Deployment, Fleet
from regiongate.state.redis_link import RedisLink
from regiongate.state.ttft import TtftEstimate
from regiongate.upstream import dialect
from regiongate.upstream.base import Upstream
from regiongate.upstream.dialect import Dialect
from regiongate.upstream.http import HttpUpstream
from regiongate.upstream.simulated import SimulatedEngine

if TYPE_CHECKING:
    from regiongate.pipeline.receipts import ReceiptHook
    from regiongate.pipeline.tracing import Tracing

log = logging.getLogger("regiongate")
DEMO_KEY_ENV = "REGIONGATE_DEMO_API_KEY"
Mount = tuple[str, ASGIApp]  # (path prefix, ASGI app) served beside the API


@dataclass(frozen=True, slots=True)
class Runtime:
    """Every service of one process, built once by ``build_runtime``. Nothing here is replaced while it
    runs but ``live``: a reload (``app.reload``) swaps the config, fleet and keys there in one step."""

    live: Live  # the config, fleet and keys in force
    gateway: Gateway
    metrics: Metrics
    usage: MemoryUsage
    callers: Callers  # who calls, through which endpoint: both listeners resolve callers here
    shared: Shared  # Redis link, rate limits, probes (regiongate.app.scaleout)
    load: LoadScraper  # backends' own load metrics (regiongate.health.load)
    responses: StoredResponses  # the Responses API's stored half
    mounts: tuple[Mount, ...]  # the control plane's HTTP surfaces: admin API, key set, console
    generated_keys: Mapping[str, str] = field(default_factory=dict)  # team -> key printed at start-up
    control: ControlPlane | None = None  # teams, keys, usage store, receipts (regiongate.control)
    objects: ObjectState | None = None  # stored objects per region (regiongate.objects); None: [state] off
    deferred: Deferred | None = None  # deferred completions over those stores
    tracing: Tracing | None = None  # OpenTelemetry, when [tracing] is set (regiongate.pipeline.tracing)
    completions: StoredCompletions = field(  # xAI chat's stored completions over the same stores
        default_factory=lambda: StoredCompletions(None, lambda: None)
    )
    background: BackgroundResponses | None = None  # Responses with background true; None: [state] off

    @property
    def config(self) -> Config:
        return self.live.now.config

    @property
    def fleet(self) -> Fleet:
        return self.live.now.fleet

    @property
    def keys(self) -> KeyStore:
        return self.live.now.keys

    def in_force(self, config: Config, fleet: Fleet, config_keys: StaticKeys) -> InForce:
        """The value a reload swaps in: ``config_keys`` under the control plane's keys when there is one."""
        keys = self.control.keys_over(config_keys) if self.control is not None else config_keys
        return InForce(config, fleet, config_keys, keys)

    async def start(self) -> None:
        """Start background work (Redis heartbeat, probes, key and store loading) inside the serving loop,
        before any listener accepts a call (``app.listeners.Listeners`` calls it once)."""
        await self.shared.start()
        if self.control is not None:
            await self.control.start(self.gateway)  # before traffic: keys loaded, receipt key ready
        await self.load.start()
        if self.objects is not None:
            await self.objects.start()

    async def usage_for(self, team: str) -> list[dict[str, object]]:
        if self.control is not None and self.control.started:  # every gateway's usage, from the store
            return await self.control.usage_for(team)
        return self.usage.for_team(team)

    async def aclose(self) -> None:
        """Close everything, once every listener has drained (``Listeners``)."""
        if self.deferred is not None:  # running deferred completions store their results first
            await self.deferred.drain(self.config.gateway.shutdown_grace_s)
        await self.shared.aclose()  # probes stop, rate-limit settlements flush
        await self.load.aclose()
        await self.usage.aclose()
        if self.objects is not None:
            await self.objects.aclose()
        if self.control is not None:
            await self.control.aclose()  # flushes every pending usage record
        await self.fleet.aclose()
        await self.fleet.capacity.aclose()  # releases every lease still held
        if self.gateway.affinity is not None:
            await self.gateway.affinity.aclose()  # its last shared writes go out before the link closes
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


def build_affinity(cfg: Config, link: RedisLink | None) -> AffinityStore | None:
    """The prompt-cache affinity table: shared through Redis when there is one, else this process's."""
    if not cfg.affinity.enabled:
        return None
    local = LocalAffinity(cfg.affinity.ttl_s, cfg.affinity.max_entries, time.monotonic)
    return RedisAffinity(link, local) if link is not None else local


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


def _control_mounts(cfg: Config, control: ControlPlane, callers: Callers, live: Live) -> tuple[Mount, ...]:
    """The control plane's HTTP surfaces (admin API, key set, console), built once; they read the config
    in force through ``live``."""
    from regiongate.console import ConsoleApp
    from regiongate.control.http import AdminApi, WellKnown

    mounts: list[Mount] = [(ADMIN_PREFIX, AdminApi(control)), ("/.well-known", WellKnown(control))]
    if cfg.control.console:
        mounts.append(("/console", ConsoleApp(callers, lambda: live.now.config)))
    return tuple(mounts)


def build_runtime(
    cfg: Config,
    env: dict[str, str] | None = None,
    capacity: CapacityStore | None = None,
    replica: Replica | None = None,
) -> Runtime:
    env = dict(os.environ) if env is None else env
    metrics = Metrics()
    shared = build_shared(cfg, replica or Replica(), capacity)
    fleet = build_fleet(cfg, shared.capacity)
    fit_fleet(fleet, cfg, shared)
    usage = MemoryUsage()
    config_keys, generated = build_keys(cfg, env)
    control = build_control(cfg, env, {r.id: r.zone for r in cfg.regions})
    keys: KeyStore = control.keys_over(config_keys) if control is not None else config_keys
    live = Live(InForce(cfg, fleet, config_keys, keys))

    def now_fleet() -> Fleet:
        return live.now.fleet

    # With a store, usage is read from it (every gateway's), so nothing folds it in process too: ~50 k
    # instructions per request (bench.instructions).
    sink: UsageSink = control.writer if control is not None else usage
    gateway = Gateway(now_fleet, sink, metrics, hooks=[shared.limits])
    gateway.affinity = build_affinity(cfg, shared.link)
    gateway.hedging = hedge_policy(cfg.hedging)
    metrics.watch(now_fleet)
    callers = Callers(lambda: live.now.config, lambda: live.now.keys)
    tracing = None
    if cfg.tracing is not None and cfg.tracing.enabled:
        from regiongate.pipeline.tracing import Tracing  # the SDK and exporter are loaded only when used

        tracing = gateway.tracing = Tracing.build(cfg.tracing, env)
        gateway.hooks.insert(0, tracing.hook)  # first, so a refused request's span is named too
    mounts = _control_mounts(cfg, control, callers, live) if control is not None else ()
    def receipts() -> ReceiptHook | None:
        return control.receipts if control else None

    def receipt_counts() -> tuple[int, int] | None:
        hook = receipts()
        return (hook.receipts, hook.signatures) if hook is not None else None

    metrics.watch_receipts(receipt_counts)
    objects = deferred = background = None
    responses = StoredResponses(None, receipts)
    completions = StoredCompletions(None, receipts)
    if cfg.state.store != "none":
        data_dir = resolve_control(cfg.control, env).data_dir
        objects = ObjectState(cfg, str(data_dir), lambda e, a, r: in_endpoint(live.now.fleet, e, a, r))
        deferred = Deferred(objects, lambda: gateway, receipts)
        responses = StoredResponses(objects, receipts)
        completions = StoredCompletions(objects, receipts)
        background = BackgroundResponses(responses, deferred)
    shared.prober = Prober(now_fleet, lambda: live.now.config.health)
    metrics.registry.register(HealthCollector(now_fleet, shared.link))
    load = LoadScraper(now_fleet, lambda: live.now.config)
    metrics.registry.register(LoadCollector(now_fleet))
    return Runtime(
        live,
        gateway,
        metrics,
        usage,
        callers,
        shared,
        load,
        responses,
        mounts,
        generated,
        control,
        objects,
        deferred,
        tracing,
        completions,
        background,
    )
