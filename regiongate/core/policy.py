"""The routing policy: ``decide(snapshot, request) -> Plan | RouteError``. Pure: no I/O, no clock, no globals.

For each region in the endpoint's scope that offers the model and that the caller may use:

    estimate_ms = network_ms + queue_ms
    network_ms  = measured RTT to the region's backends            (when probes have measured it and the
                                                                      client location is unknown)
                | great-circle RTT from the client's location     (when known)
                | great-circle RTT from this gateway's location
    queue_ms    = smoothed time to first token + queue_depth * max(ttft, QUEUE_STEP_MS)

Regions are ranked by ``estimate_ms`` (ties by region id) and walked as a waterfall: regions without a
healthy backend or without free capacity are dropped; the rest, in rank order, form the plan. The first
kept region is ``nearest`` when it is the best ranked of all, else ``spillover``; a regional endpoint is
``pinned`` and a zone endpoint ``zone``.
"""

from __future__ import annotations

from dataclasses import dataclass

from regiongate.core.endpoint import EndpointKind
from regiongate.core.errors import RouteError
from regiongate.core.geo import rtt_from_distance_ms
from regiongate.core.request import RouteRequest
from regiongate.core.world import BackendState, DeploymentState, WorldSnapshot

QUEUE_STEP_MS = 50.0


@dataclass(frozen=True, slots=True)
class Estimate:
    network_ms: float
    network_source: str  # "measured" | "client-distance" | "gateway-distance"
    queue_ms: float

    @property
    def total_ms(self) -> float:
        return self.network_ms + self.queue_ms


@dataclass(frozen=True, slots=True)
class Candidate:
    region: str
    backends: tuple[str, ...]  # healthy backend ids, best first
    route: str  # nearest | spillover | pinned | zone
    estimate: Estimate
    free: int


@dataclass(frozen=True, slots=True)
class Considered:
    """One region the policy looked at, and what it made of it (for ``route explain``)."""

    region: str
    verdict: str  # "kept" or "dropped"
    reason: str
    estimate: Estimate | None = None
    free: int | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    model: str
    candidates: tuple[Candidate, ...]
    considered: tuple[Considered, ...] = ()  # only with explain=True
    first_choice: str = ""  # the best-ranked region in scope, whether or not it had room


def _estimate(snapshot: WorldSnapshot, dep: DeploymentState, request: RouteRequest) -> Estimate:
    if request.client_location is not None:
        region = snapshot.regions[dep.region]
        network = rtt_from_distance_ms(request.client_location, region.location)
        source = "client-distance"
    else:
        measured = [b.rtt_ms for b in dep.backends if b.healthy and b.rtt_ms is not None]
        if measured:
            network, source = min(measured), "measured"
        else:
            network, source = snapshot.gateway_rtt_ms[dep.region], "gateway-distance"
    queue = dep.ttft_ms + dep.queue_depth * max(dep.ttft_ms, QUEUE_STEP_MS)
    return Estimate(network, source, queue)


def _where(request: RouteRequest) -> str:
    ep = request.endpoint
    if ep.kind is EndpointKind.REGION:
        return f"in region {ep.name}"
    if ep.kind is EndpointKind.ZONE:
        return f"in data zone {ep.name}"
    if request.access.zone:
        return f"in data zone {request.access.zone} (this key's fence)"
    return "to your team"


def _fence_error(snapshot: WorldSnapshot, request: RouteRequest) -> RouteError | None:
    """A key fenced to a zone may not address a region or zone outside it."""
    zone = request.access.zone
    ep = request.endpoint
    if zone is None or ep.kind is EndpointKind.GLOBAL:
        return None
    if ep.kind is EndpointKind.ZONE and ep.name != zone:
        return RouteError.region_not_allowed(f"data zone {ep.name}", f"data zone {zone}")
    if ep.kind is EndpointKind.REGION and snapshot.regions[ep.name].zone != zone:
        return RouteError.region_not_allowed(f"region {ep.name}", f"data zone {zone}")
    return None


def _in_scope(snapshot: WorldSnapshot, request: RouteRequest, region: str) -> bool:
    ep = request.endpoint
    if ep.kind is EndpointKind.REGION and region != ep.name:
        return False
    zone = snapshot.regions[region].zone
    if ep.kind is EndpointKind.ZONE and zone != ep.name:
        return False
    return request.access.zone is None or zone == request.access.zone


def _in_fence(snapshot: WorldSnapshot, request: RouteRequest, region: str) -> bool:
    """Inside the key's data zone (if any): refusals only ever point a fenced key at such regions."""
    zone = request.access.zone
    return zone is None or snapshot.regions[region].zone == zone


def _serviceable(dep: DeploymentState) -> bool:
    return dep.free > 0 and bool(dep.healthy_backends)


def _backend_order(healthy: tuple[BackendState, ...]) -> tuple[str, ...]:
    if len(healthy) == 1:
        return (healthy[0].id,)
    ordered = sorted(healthy, key=lambda b: (b.in_flight, b.rtt_ms if b.rtt_ms is not None else 0.0, b.id))
    return tuple(b.id for b in ordered)


def decide(snapshot: WorldSnapshot, request: RouteRequest, explain: bool = False) -> Plan | RouteError:
    """The plan for ``request``. With ``explain``, the plan also lists every region considered and why it was
    kept or dropped (``route explain``, the explain header); routing itself never needs that list."""
    fence = _fence_error(snapshot, request)
    if fence is not None:
        return fence
    model, access = request.model, request.access
    visible = [d for d in snapshot.by_model.get(model, ()) if access.permits(model, d.region)]
    if request.endpoint.kind is EndpointKind.GLOBAL and access.zone is None:
        in_scope = visible  # global without a zone fence: everything the caller may use is in scope
    else:
        in_scope = [d for d in visible if _in_scope(snapshot, request, d.region)]
    if not in_scope:
        hint = [d.region for d in visible if _in_fence(snapshot, request, d.region)]
        return RouteError.model_not_found(model, _where(request), hint)

    ranked = sorted(
        ((_estimate(snapshot, d, request), d) for d in in_scope), key=lambda p: (p[0].total_ms, p[1].region)
    )
    best_ms = ranked[0][0].total_ms
    budget = access.spill_budget_ms if request.endpoint.kind is EndpointKind.GLOBAL else None

    candidates: list[Candidate] = []
    considered: list[Considered] = []
    over_budget = False
    for rank, (est, dep) in enumerate(ranked):
        healthy = dep.healthy_backends
        free = dep.free
        reason = ""
        if not healthy:
            reason = "no healthy backend"
        elif free <= 0:
            reason = f"full ({_full(dep)})" if explain else "full"
        elif budget is not None and est.total_ms > best_ms + budget:
            reason = f"beyond this key's spillover budget ({budget:g} ms over the best region)"
            over_budget = True
        if reason:
            if explain:
                considered.append(Considered(dep.region, "dropped", reason, est, free))
            continue
        route = _route(request, first_choice=rank == 0)
        candidates.append(Candidate(dep.region, _backend_order(healthy), route, est, free))
        if explain:
            considered.append(Considered(dep.region, "kept", f"rank {len(candidates)} ({route})", est, free))

    if candidates:
        return Plan(model, tuple(candidates), tuple(considered), ranked[0][1].region)
    return _refusal(snapshot, request, in_scope, over_budget)


def _full(dep: DeploymentState) -> str:
    if dep.in_use < dep.limit:  # the backends' own report of their load is what binds
        return f"its backends report no free capacity; {dep.in_use}/{dep.limit} in use here"
    return f"{dep.in_use}/{dep.limit} in use"


def _route(request: RouteRequest, *, first_choice: bool) -> str:
    kind = request.endpoint.kind
    if kind is EndpointKind.REGION:
        return "pinned"
    if kind is EndpointKind.ZONE:
        return "zone"
    return "nearest" if first_choice else "spillover"


def _refusal(
    snapshot: WorldSnapshot, request: RouteRequest, in_scope: list[DeploymentState], over_budget: bool
) -> RouteError:
    model, access = request.model, request.access
    could_serve = [
        d.region
        for d in snapshot.by_model.get(model, ())
        if access.permits(model, d.region) and _serviceable(d) and _in_fence(snapshot, request, d.region)
    ]
    retry = snapshot.retry_after_s
    ep = request.endpoint
    if ep.kind is EndpointKind.REGION:
        dep = in_scope[0]
        why = "no healthy backend" if not dep.healthy_backends else f"at capacity, {_full(dep)}"

        return RouteError.region_unavailable(f"Region {ep.name}", model, why, could_serve, retry)
    if ep.kind is EndpointKind.ZONE:
        return RouteError.region_unavailable(
            f"Data zone {ep.name}", model, "every region in it is full or unhealthy", could_serve, retry
        )
    if over_budget:
        return RouteError.region_unavailable(
            "The global endpoint",
            model,
            "no region within this key's spillover latency budget has room",
            could_serve,
            retry,
        )
    if access.zone is not None:
        return RouteError.region_unavailable(
            f"Data zone {access.zone} (this key's fence)",
            model,
            "every region in it is full or unhealthy",
            could_serve,
            retry,
        )
    return RouteError.capacity_exhausted(model, [d.region for d in in_scope], retry)
