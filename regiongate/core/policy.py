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

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from regiongate.core import scope
from regiongate.core.endpoint import EndpointKind
from regiongate.core.errors import RouteError
from regiongate.core.geo import Location, rtt_from_distance_ms
from regiongate.core.labels import Drop, Route
from regiongate.core.request import RouteRequest
from regiongate.core.world import DeploymentState, WorldSnapshot

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
    route: Route
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


class Plan:
    """The ranked candidates for one request. The first is found by ``decide``; the rest, needed only when
    the first fails, are worked out on demand from the same frozen snapshot (still a pure value: the same
    snapshot and request give the same candidates), so a decision costs the ranking plus one candidate,
    not one per region in scope."""

    __slots__ = ("_done", "_pending", "considered", "first_choice", "model")

    def __init__(
        self,
        model: str,
        candidates: Iterable[Candidate] = (),
        considered: tuple[Considered, ...] = (),  # only with explain=True
        first_choice: str = "",  # the best-ranked region in scope, whether or not it had room
        *,
        more: Iterator[Candidate] | None = None,  # the candidates after ``candidates``, computed lazily
    ) -> None:
        self.model = model
        self._done = list(candidates)
        self._pending = more
        self.considered = considered
        self.first_choice = first_choice

    def __iter__(self) -> Iterator[Candidate]:
        """Candidates best first; later ones are computed only when the walk reaches them."""
        i = 0
        while True:
            if i < len(self._done):
                yield self._done[i]
                i += 1
                continue
            if self._pending is None:
                return
            nxt = next(self._pending, None)
            if nxt is None:
                self._pending = None
                return
            self._done.append(nxt)

    def has_after(self, i: int) -> bool:
        """Whether a candidate follows the ``i``-th (works out at most one more)."""
        while len(self._done) <= i + 1 and self._pending is not None:
            nxt = next(self._pending, None)
            if nxt is None:
                self._pending = None
            else:
                self._done.append(nxt)
        return len(self._done) > i + 1

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        return tuple(self)

    @property
    def first(self) -> Candidate:
        return self._done[0]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return (self.model, self.first_choice, self.considered, self.candidates) == (
            other.model,
            other.first_choice,
            other.considered,
            other.candidates,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable cache inside: compare, never hash

    def __repr__(self) -> str:
        return f"Plan({self.model!r}, {self.candidates!r}, first_choice={self.first_choice!r})"


def _network(snapshot: WorldSnapshot, dep: DeploymentState, loc: Location | None) -> tuple[float, str]:
    if loc is not None:
        return rtt_from_distance_ms(loc, snapshot.regions[dep.region].location), "client-distance"
    best: float | None = None
    for b in dep.backends:
        if b.healthy and b.rtt_ms is not None and (best is None or b.rtt_ms < best):
            best = b.rtt_ms
    if best is not None:
        return best, "measured"
    return snapshot.gateway_rtt_ms[dep.region], "gateway-distance"


def _queue_ms(dep: DeploymentState) -> float:
    ttft = dep.ttft_ms
    return ttft + dep.queue_depth * max(ttft, QUEUE_STEP_MS) if dep.queue_depth else ttft


def _estimate(snapshot: WorldSnapshot, dep: DeploymentState, loc: Location | None) -> Estimate:
    network, source = _network(snapshot, dep, loc)
    return Estimate(network, source, _queue_ms(dep))


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
    ep = request.endpoint
    ep_zone = snapshot.regions[ep.name].zone if ep.kind is EndpointKind.REGION else None
    return scope.fence_error(ep, request.access, ep_zone)


def _in_scope(snapshot: WorldSnapshot, request: RouteRequest, region: str) -> bool:
    return scope.in_scope(request.endpoint, request.access, region, snapshot.regions[region].zone)


def _in_fence(snapshot: WorldSnapshot, request: RouteRequest, region: str) -> bool:
    return scope.in_fence(request.access, snapshot.regions[region].zone)


def _serviceable(dep: DeploymentState) -> bool:
    return dep.free > 0 and dep.has_healthy_backend


def _backend_order(dep: DeploymentState) -> tuple[str, ...]:
    backends = dep.backends
    if len(backends) == 1:
        return (backends[0].id,)  # only called for a deployment with a healthy backend
    healthy = [b for b in backends if b.healthy]
    healthy.sort(key=lambda b: (b.in_flight, b.rtt_ms if b.rtt_ms is not None else 0.0, b.id))
    return tuple(b.id for b in healthy)


# Why a ranked region is not a candidate ("" when it is one).
UNHEALTHY, FULL, OVER_BUDGET = Drop.UNHEALTHY, Drop.FULL, Drop.OVER_BUDGET


def _drop(dep: DeploymentState, total_ms: float, limit_ms: float | None) -> str:
    if not dep.has_healthy_backend:
        return UNHEALTHY
    if dep.free <= 0:
        return FULL
    if limit_ms is not None and total_ms > limit_ms:
        return OVER_BUDGET
    return ""


Ranked = list[tuple[float, str, DeploymentState]]  # (estimate_ms, region, deployment), best first


def _candidate(snapshot: WorldSnapshot, request: RouteRequest, dep: DeploymentState, rank: int) -> Candidate:
    return Candidate(
        dep.region,
        _backend_order(dep),
        _route(request, first_choice=rank == 0),
        _estimate(snapshot, dep, request.client_location),
        dep.free,
    )


def _walk(
    snapshot: WorldSnapshot, request: RouteRequest, ranked: Ranked, limit_ms: float | None
) -> Iterator[Candidate]:
    """The candidates in rank order, each built only when the walk reaches it."""
    for rank, (total, _, dep) in enumerate(ranked):
        if not _drop(dep, total, limit_ms):
            yield _candidate(snapshot, request, dep, rank)


def decide(snapshot: WorldSnapshot, request: RouteRequest, explain: bool = False) -> Plan | RouteError:
    """The plan for ``request``. With ``explain``, the plan also lists every region considered and why it was
    kept or dropped (``route explain``, the explain header); routing itself never needs that list."""
    fence = _fence_error(snapshot, request)
    if fence is not None:
        return fence
    model, access = request.model, request.access
    deps = snapshot.by_model.get(model, ())
    granted = access.regions_for(model)
    visible = deps if granted is None else [d for d in deps if d.region in granted]
    if request.endpoint.kind is EndpointKind.GLOBAL and access.zone is None:
        in_scope = visible  # global without a zone fence: everything the caller may use is in scope
    else:
        in_scope = [d for d in visible if _in_scope(snapshot, request, d.region)]
    if not in_scope:
        hint = [d.region for d in visible if _in_fence(snapshot, request, d.region)]
        return RouteError.model_not_found(model, _where(request), hint)

    loc = request.client_location
    # Region ids are unique within a model, so the sort never compares deployments.
    ranked: Ranked = sorted([(_network(snapshot, d, loc)[0] + _queue_ms(d), d.region, d) for d in in_scope])
    budget = access.spill_budget_ms if request.endpoint.kind is EndpointKind.GLOBAL else None
    limit_ms = ranked[0][0] + budget if budget is not None else None
    first_choice = ranked[0][1]
    if explain:
        return _explained(snapshot, request, ranked, limit_ms, budget, in_scope)

    walk = _walk(snapshot, request, ranked, limit_ms)
    first = next(walk, None)
    if first is not None:
        return Plan(model, (first,), (), first_choice, more=walk)
    over_budget = any(_drop(dep, total, limit_ms) is OVER_BUDGET for total, _, dep in ranked)
    return _refusal(snapshot, request, in_scope, over_budget)


def _explained(
    snapshot: WorldSnapshot,
    request: RouteRequest,
    ranked: Ranked,
    limit_ms: float | None,
    budget: float | None,
    in_scope: Sequence[DeploymentState],
) -> Plan | RouteError:
    """``decide`` with every region's verdict written down (``route explain``, the explain header)."""
    candidates: list[Candidate] = []
    considered: list[Considered] = []
    over_budget = False
    for rank, (total, _, dep) in enumerate(ranked):
        why = _drop(dep, total, limit_ms)
        if not why:
            cand = _candidate(snapshot, request, dep, rank)
            candidates.append(cand)
            verdict = f"rank {len(candidates)} ({cand.route})"
            considered.append(Considered(dep.region, "kept", verdict, cand.estimate, dep.free))
            continue
        over_budget = over_budget or why is OVER_BUDGET
        if why is FULL:
            why = f"full ({_full(dep)})"
        elif why is OVER_BUDGET:
            why = f"beyond this key's spillover budget ({budget:g} ms over the best region)"
        est = _estimate(snapshot, dep, request.client_location)
        considered.append(Considered(dep.region, "dropped", why, est, dep.free))
    if candidates:
        return Plan(request.model, candidates, tuple(considered), ranked[0][1])
    return _refusal(snapshot, request, in_scope, over_budget)


def _full(dep: DeploymentState) -> str:
    if dep.in_use < dep.limit:  # the backends' own report of their load is what binds
        return f"its backends report no free capacity; {dep.in_use}/{dep.limit} in use here"
    return f"{dep.in_use}/{dep.limit} in use"


def _route(request: RouteRequest, *, first_choice: bool) -> Route:
    kind = request.endpoint.kind
    if kind is EndpointKind.REGION:
        return Route.PINNED
    if kind is EndpointKind.ZONE:
        return Route.ZONE
    return Route.NEAREST if first_choice else Route.SPILLOVER


def _refusal(
    snapshot: WorldSnapshot, request: RouteRequest, in_scope: Sequence[DeploymentState], over_budget: bool
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
        why = UNHEALTHY if not dep.has_healthy_backend else f"at capacity, {_full(dep)}"

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
