"""The simulated world: the fleet read from an ordinary regiongate config, the clients, and every fact
about a (metro, model, endpoint) combination that does not change during a run, computed once.

Fleet model. A deployment (model x region) keeps the gateway's admission rule: at most ``limit`` requests
in flight, counted by the gateway. Its backends are pooled into one cluster of ``slots`` sequences (the sum
of the backends' slots; a simulated backend's default is the limit, an http backend counts as ``limit``);
requests beyond the slots wait in FIFO order at the backend. A request holds a slot for

    service_s = ttft_ms / 1000 + prompt_tokens / prefill_tokens_per_s + completion_tokens / tokens_per_s

and its first token reaches the client after ``rtt + wait + ttft_ms + prompt_tokens / prefill_tokens_per_s``.
``rtt`` is the great-circle RTT of ``regiongate.core.geo`` from the client's metro to the region, unless the
scenario gives a measured value for the pair; the policy still estimates from distance, as the gateway
does, so an override shows what a wrong estimate costs.
"""

from __future__ import annotations

from dataclasses import dataclass

from regiongate.config import Config, SimulatedBackend
from regiongate.core import (
    GLOBAL,
    Access,
    Endpoint,
    EndpointKind,
    Location,
    Region,
    RouteRequest,
    great_circle_km,
    rtt_from_distance_ms,
)
from regiongate.simulate.scenario import DAY_S, ENDPOINT_KINDS, Override, Scenario, ScenarioError
from regiongate.simulate.traffic import Metro, load_metros

SIM_TEAM = "simulated"


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    model: str
    region: str
    limit: int
    slots: int
    ttft_s: float
    token_s: float  # seconds per completion token for one sequence
    prefill_s: float  # seconds per prompt token
    backend_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Context:
    """A (metro, model, endpoint kind) combination: the request the policy sees and what judging it needs."""

    request: RouteRequest
    model: int  # index into World.models
    continent: int
    home: int  # region index of the nearest in-scope region offering the model
    cell: int  # continent * len(regions) + home: the finest unit the statistics keep
    rtt_s: tuple[float, ...]  # network round trip to each region, seconds
    allowed: tuple[bool, ...]  # residency: may each region serve it?
    kind: str
    index: int = 0  # its place in ``World.contexts``


@dataclass(frozen=True, slots=True)
class SimEvent:
    kind: str  # outage | capacity
    region: str
    model: str
    start_s: float  # simulated seconds (already on the compressed clock)
    end_s: float
    factor: float


@dataclass(frozen=True)
class World:
    regions: dict[str, Region]
    region_ids: list[str]
    gateway_location: Location
    retry_after_s: float
    halflife_s: float
    report_queue_depth: bool
    deployments: list[DeploymentSpec]
    models: list[str]  # the traffic mix's models, in scenario order
    model_shares: list[float]
    endpoint_kinds: list[str]
    endpoint_shares: list[float]
    metros: list[Metro]
    continents: list[str]
    contexts: list[Context]  # index: (metro * len(models) + model) * len(endpoint_kinds) + endpoint
    events: list[SimEvent]
    requests: int
    duration_s: float
    time_scale: float  # simulated seconds per second of the real day
    mean_prompt: float = 0.0  # tokens: the oracle's expected service time
    mean_completion: float = 0.0
    replicas: int = 1  # gateway replicas, each deciding on its own snapshot ...
    staleness_s: float = 0.0  # ... refreshed when it is this old (0: every decision sees the present)

    def context_index(self, metro: int, model: int, endpoint: int) -> int:
        return (metro * len(self.models) + model) * len(self.endpoint_kinds) + endpoint


def _matches(o: Override, model: str, region: str) -> bool:
    return o.model in ("*", model) and o.region in ("*", region)


def deployment_specs(cfg: Config, scenario: Scenario) -> list[DeploymentSpec]:
    fl = scenario.fleet
    specs = []
    for d in cfg.deployments:
        ttfts = [b.ttft_ms if isinstance(b, SimulatedBackend) else fl.ttft_ms for b in d.backends]
        speeds = [b.tokens_per_s if isinstance(b, SimulatedBackend) else fl.tokens_per_s for b in d.backends]
        for model in d.models:
            limit = max(1, round(d.limit * fl.limit_scale))
            ttft_ms, tps = sum(ttfts) / len(ttfts), sum(speeds) / len(speeds)
            slots: int | None = None
            prefill = fl.prefill_tokens_per_s
            for o in fl.overrides:
                if _matches(o, model, d.region):
                    limit = o.limit if o.limit is not None else limit
                    slots = o.slots if o.slots is not None else slots
                    ttft_ms = o.ttft_ms if o.ttft_ms is not None else ttft_ms
                    tps = o.tokens_per_s if o.tokens_per_s is not None else tps
                    prefill = o.prefill_tokens_per_s if o.prefill_tokens_per_s is not None else prefill
            if slots is None:  # a backend's own slots (scaled), else as many as the deployment admits
                slots = sum(
                    max(1, round(b.slots * fl.limit_scale))
                    if isinstance(b, SimulatedBackend) and b.slots is not None
                    else limit
                    for b in d.backends
                )
            ids = tuple(f"{d.region}/{model}/{b.id or i}" for i, b in enumerate(d.backends))
            specs.append(
                DeploymentSpec(
                    model,
                    d.region,
                    limit,
                    slots,
                    ttft_ms / 1000.0,
                    1.0 / tps,
                    1.0 / prefill,
                    ids,
                )
            )
    return specs


def _rtt_table(
    scenario: Scenario, metros: list[Metro], regions: dict[str, Region]
) -> list[tuple[float, ...]]:
    """Seconds from each metro to each region: measured overrides (metro > country > continent) or distance."""
    over: dict[tuple[str, str], float] = {}
    for o in scenario.network.rtt:
        if o.to not in regions:
            raise ScenarioError(f"network.rtt: unknown region '{o.to}' (known: {', '.join(regions)})")
        over[(o.source.lower(), o.to)] = o.ms
    known = {m.name.lower() for m in metros} | {m.country.lower() for m in metros}
    known |= {m.continent.lower() for m in metros}
    for o in scenario.network.rtt:
        if o.source.lower() not in known:
            raise ScenarioError(
                f"network.rtt: '{o.source}' is no metro, country code or continent of the table"
            )
    table = []
    for m in metros:
        loc = Location(m.lat, m.lon)
        row = []
        for rid, r in regions.items():
            ms = next(
                (
                    over[(k.lower(), rid)]
                    for k in (m.name, m.country, m.continent)
                    if (k.lower(), rid) in over
                ),
                rtt_from_distance_ms(loc, r.location),
            )
            row.append(ms / 1000.0)
        table.append(tuple(row))
    return table


def _check_names(scenario: Scenario, cfg: Config, specs: list[DeploymentSpec]) -> None:
    region_ids = [r.id for r in cfg.regions]
    offered = {s.model for s in specs}
    for m in scenario.traffic.models:
        if m not in offered:
            raise ScenarioError(
                f"traffic.models: '{m}' is deployed in no region of the config (deployed: {', '.join(sorted(offered))})"
            )
    named = [("fleet.overrides", i, o.region, o.model) for i, o in enumerate(scenario.fleet.overrides)]
    named += [("events", i, e.region, e.model) for i, e in enumerate(scenario.events)]
    for where, i, region, model in named:
        if region != "*" and region not in region_ids:
            raise ScenarioError(f"{where}[{i}].region: unknown region '{region}'")
        if model != "*" and model not in offered:
            raise ScenarioError(f"{where}[{i}].model: '{model}' is deployed nowhere")


def build_world(cfg: Config, scenario: Scenario, requests: int | None = None) -> World:
    """Everything static about a run. ``requests`` (default: the scenario's) compresses the day so the
    arrival rate, and so the load on the fleet, stays that of the full scenario."""
    specs = deployment_specs(cfg, scenario)
    _check_names(scenario, cfg, specs)
    regions = {r.id: Region(r.id, Location(r.lat, r.lon), r.zone, r.name) for r in cfg.regions}
    region_ids = list(regions)
    traffic = scenario.traffic
    metros = load_metros(scenario.resolve(traffic.metros) if traffic.metros else None)
    continents = sorted({m.continent for m in metros})
    models = [m for m, s in traffic.models.items() if s > 0]
    kinds = [k for k in ENDPOINT_KINDS if traffic.endpoints.get(k, 0.0) > 0]
    rtts = _rtt_table(scenario, metros, regions)
    offering: dict[str, list[str]] = {}
    for s in specs:
        offering.setdefault(s.model, []).append(s.region)
    accesses: dict[str | None, Access] = {}

    def access(zone: str | None) -> Access:
        if zone not in accesses:
            accesses[zone] = Access(SIM_TEAM, None, zone, traffic.spill_budget_ms)
        return accesses[zone]

    contexts: list[Context] = []
    for xi, metro in enumerate(metros):
        loc = Location(metro.lat, metro.lon)
        ci = continents.index(metro.continent)
        for mi, model in enumerate(models):
            near = min(offering[model], key=lambda r: (great_circle_km(loc, regions[r].location), r))
            zone = regions[near].zone
            home = region_ids.index(near)
            in_zone = tuple(regions[r].zone == zone for r in region_ids)
            for kind in kinds:
                if kind == "global":
                    req, allowed = RouteRequest(model, GLOBAL, loc, access(None)), (True,) * len(region_ids)
                elif kind == "zone":
                    req, allowed = (
                        RouteRequest(model, Endpoint(EndpointKind.ZONE, zone), loc, access(None)),
                        in_zone,
                    )
                elif kind == "region":
                    req = RouteRequest(model, Endpoint(EndpointKind.REGION, near), loc, access(None))
                    allowed = tuple(r == near for r in region_ids)
                else:  # fenced: the global endpoint with a key fenced to the client's zone
                    req, allowed = RouteRequest(model, GLOBAL, loc, access(zone)), in_zone
                cell = ci * len(region_ids) + home
                contexts.append(Context(req, mi, ci, home, cell, rtts[xi], allowed, kind, len(contexts)))
    n = requests if requests is not None else scenario.run.requests
    scale = n / scenario.run.requests
    duration = DAY_S * scale
    events = [
        SimEvent(e.kind, e.region, e.model, e.start_s * scale, e.end_s * scale, e.factor)
        for e in scenario.events
    ]
    return World(
        regions=regions,
        region_ids=region_ids,
        gateway_location=Location(cfg.gateway.lat, cfg.gateway.lon),
        retry_after_s=cfg.gateway.retry_after_s,
        halflife_s=cfg.gateway.ttft_halflife_s,
        report_queue_depth=scenario.fleet.report_queue_depth,
        deployments=specs,
        models=models,
        model_shares=[traffic.models[m] for m in models],
        endpoint_kinds=kinds,
        endpoint_shares=[traffic.endpoints[k] for k in kinds],
        metros=metros,
        continents=continents,
        contexts=contexts,
        events=events,
        requests=n,
        duration_s=duration,
        time_scale=scale,
        mean_prompt=traffic.prompt_tokens.mean_value,
        mean_completion=traffic.completion_tokens.mean_value,
        replicas=scenario.run.replicas,
        staleness_s=scenario.run.staleness_ms / 1000.0,
    )
