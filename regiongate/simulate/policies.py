"""The policies compared by the simulation, all of one type: ``(WorldSnapshot, RouteRequest) -> Plan |
RouteError``.

``gateway`` is ``regiongate.core.policy.decide`` itself, the code the gateway runs. The two baselines
read the same snapshots and honour the same endpoint scope (a regional endpoint stays in its region, a
zone endpoint or zone-fenced key in its zone), so any difference in the report comes from the ranking:

* ``nearest-only``: the nearest healthy region by great-circle RTT from the client, and nothing else
  (DNS geo-routing with health checks: no spillover when it is full, the request is refused).
* ``nearest-spill``: the product page read literally: the nearest region by distance, then the
  next-closest that has room; no load estimate.
* ``least-loaded``: the healthy region with the lowest share of its limit in use, wherever it is
  (ignores distance; ties by region id).
* ``power-of-two``: two open regions drawn by the request's salt, the less loaded of them (the classic
  load balancer of Mitzenmacher's "power of two choices"; ignores distance).
* ``oracle``: not a policy a gateway could run. The engine gives it the true state at the request's
  arrival (the real round trips, queues and speeds) and it takes the region with the lowest expected TTFT:
  the bound the others are measured against.
* ``gateway-greedy``: ``decide`` with every request's salt 0, which always takes the best prediction
  among near-equal regions: the gateway without its randomised choice, to show what that choice buys
  when replicas decide on stale state.
* ``gateway-unreserved``: ``decide`` on replicas that do not count the leases they took themselves since
  their snapshot (``Engine._stale_snapshot``): the gateway without its remedy against herding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from regiongate.core import (
    DeploymentState,
    RouteError,
    RouteRequest,
    WorldSnapshot,
    decide,
    rtt_from_distance_ms,
    scope,
)
from regiongate.core.labels import Route
from regiongate.core.latency import Estimate, two_choices
from regiongate.core.policy import Candidate, Plan
from regiongate.simulate.scenario import ALL_POLICY_NAMES

Policy = Callable[[WorldSnapshot, RouteRequest], Plan | RouteError]


class Live(Protocol):
    """What a baseline reads of a deployment's present state when it decides without a snapshot
    (``_Baseline.pick``): the fields of ``DeploymentState`` it uses, ``up`` its ``has_healthy_backend``."""

    region: str
    in_use: int
    limit: int
    up: bool


# A baseline's choice on live state: the deployment to try (None: refused) and the region it ranked
# first (its "first choice", for the spillover count). The refusal's code is ``refusal_code``.
Pick = tuple[Live | None, str]


def _in_scope(snapshot: WorldSnapshot, request: RouteRequest) -> list[DeploymentState]:
    """Deployments of the model that the endpoint, the key's zone fence and its grants allow."""
    ep, access, model = request.endpoint, request.access, request.model
    deps = snapshot.by_model.get(model, ())
    if scope.unbounded(ep, access):
        return list(deps)
    regions = snapshot.regions
    return [d for d in deps if scope.serves(ep, access, model, d.region, regions[d.region].zone)]


def _candidate(d: DeploymentState, route: Route, network_ms: float) -> Candidate:
    backends = d.backends
    return Candidate(
        d.region,
        (backends[0].id,) if len(backends) == 1 else tuple(b.id for b in backends if b.healthy),
        route,
        Estimate(network_ms, "client-distance", 0.0),
        d.free,
    )


def _refuse(snapshot: WorldSnapshot, request: RouteRequest, scope: list[DeploymentState]) -> RouteError:
    if not scope:
        offering = [d.region for d in snapshot.by_model.get(request.model, ())]
        return RouteError.model_not_found(request.model, "in this scope", offering)
    return RouteError.capacity_exhausted(request.model, [d.region for d in scope], snapshot.retry_after_s)


def refusal_code(scoped: Sequence[Live]) -> str:
    """The code of ``_refuse``'s error, for a refusal made by ``_Baseline.pick``."""
    return "capacity_exhausted" if scoped else "model_not_found"


class _Baseline:
    """Shared by the baselines: distance RTTs memoised per (origin, region); clients come from a
    bounded set of places, so the memo is bounded too. They read no latency estimate (``learns``).

    ``pick`` is the same decision on the engine's live deployments (``Live``), for an engine whose
    snapshot would show their present state (no replicas on stale snapshots): ``scoped`` are the
    deployments ``_in_scope`` gives, in the snapshot's order, ``by_distance`` the same sorted by (distance
    round trip, region), as ``__call__`` ranks them. No snapshot, plan or candidate is built; the engine
    reads the same region either way (``tests/simulate/test_policies.py`` runs both and compares)."""

    learns = False

    def __init__(self) -> None:
        self._rtt: dict[tuple[float, float], dict[str, float]] = {}

    def rtts(self, snapshot: WorldSnapshot, request: RouteRequest) -> dict[str, float]:
        """Round trip from the request's origin to each region (one lookup per request, not per region)."""
        origin = request.client_location or snapshot.gateway_location
        key = (origin.lat, origin.lon)  # floats hash in C; the Location dataclass in Python
        v = self._rtt.get(key)
        if v is None:
            v = self._rtt[key] = {
                r.id: rtt_from_distance_ms(origin, r.location) for r in snapshot.regions.values()
            }
        return v


class NearestOnly(_Baseline):
    def __call__(self, snapshot: WorldSnapshot, request: RouteRequest) -> Plan | RouteError:
        scope = _in_scope(snapshot, request)
        rtts = self.rtts(snapshot, request)
        best, best_key = None, (0.0, "")
        for d in scope:
            if d.has_healthy_backend:
                key = (rtts[d.region], d.region)
                if best is None or key < best_key:
                    best, best_key = d, key
        if best is None or best.free <= 0:
            return _refuse(snapshot, request, scope)
        return Plan(request.model, (_candidate(best, Route.NEAREST, best_key[0]),), first_choice=best.region)

    @staticmethod
    def pick(scoped: Sequence[Live], by_distance: Sequence[Live], salt: int) -> Pick:
        for d in by_distance:  # the nearest healthy one, refused when full
            if d.up:
                return (d if d.in_use < d.limit else None), d.region
        return None, ""


class NearestSpill(_Baseline):
    """The product page read literally: the nearest region by distance, then the next-closest with room."""

    def __call__(self, snapshot: WorldSnapshot, request: RouteRequest) -> Plan | RouteError:
        scope = _in_scope(snapshot, request)
        rtts = self.rtts(snapshot, request)
        ranked = sorted((rtts[d.region], d.region, d) for d in scope)
        kept = [(ms, d) for ms, _, d in ranked if d.free > 0 and d.has_healthy_backend]
        if not kept:
            return _refuse(snapshot, request, scope)
        first = ranked[0][1]
        cands = (_candidate(d, Route.NEAREST if d.region == first else Route.SPILLOVER, ms) for ms, d in kept)
        return Plan(request.model, (next(cands),), first_choice=first, more=cands)

    @staticmethod
    def pick(scoped: Sequence[Live], by_distance: Sequence[Live], salt: int) -> Pick:
        for d in by_distance:
            if d.in_use < d.limit and d.up:
                return d, by_distance[0].region
        return None, ""


class LeastLoaded(_Baseline):
    def __call__(self, snapshot: WorldSnapshot, request: RouteRequest) -> Plan | RouteError:
        scope = _in_scope(snapshot, request)
        open_ = [d for d in scope if d.free > 0 and d.has_healthy_backend]
        if not open_:
            return _refuse(snapshot, request, scope)
        ranked = sorted(open_, key=lambda d: (d.in_use / d.limit, d.region))
        route, rtts = Route.LEAST_LOADED, self.rtts(snapshot, request)
        cands = (_candidate(d, route, rtts[d.region]) for d in ranked)
        first = next(cands)
        return Plan(request.model, (first,), first_choice=first.region, more=cands)

    @staticmethod
    def pick(scoped: Sequence[Live], by_distance: Sequence[Live], salt: int) -> Pick:
        best: Live | None = None
        best_load = 0.0
        for d in scoped:  # the least (in_use / limit, region), without a key tuple per deployment
            if d.in_use < d.limit and d.up:
                load = d.in_use / d.limit
                if best is None or load < best_load or (load == best_load and d.region < best.region):
                    best, best_load = d, load
        return best, best.region if best is not None else ""


class PowerOfTwo(_Baseline):
    def __call__(self, snapshot: WorldSnapshot, request: RouteRequest) -> Plan | RouteError:
        scope = _in_scope(snapshot, request)
        open_ = [d for d in scope if d.free > 0 and d.has_healthy_backend]
        if not open_:
            return _refuse(snapshot, request, scope)
        if len(open_) > 1:
            i, j = two_choices(len(open_), request.salt)
            a, b = open_[i], open_[j]
            open_ = [a if a.in_use / a.limit <= b.in_use / b.limit else b]
        d = open_[0]
        cand = _candidate(d, Route.POWER_OF_TWO, self.rtts(snapshot, request)[d.region])
        return Plan(request.model, (cand,), first_choice=d.region)

    @staticmethod
    def pick(scoped: Sequence[Live], by_distance: Sequence[Live], salt: int) -> Pick:
        open_ = [d for d in scoped if d.in_use < d.limit and d.up]
        if not open_:
            return None, ""
        d = open_[0]
        if len(open_) > 1:
            i, j = two_choices(len(open_), salt)
            a, b = open_[i], open_[j]
            d = a if a.in_use / a.limit <= b.in_use / b.limit else b
        return d, d.region


class Oracle:
    """Marks the engine's oracle (``Engine._oracle``): never called with a snapshot."""

    oracle = True
    learns = False

    def __call__(self, snapshot: WorldSnapshot, request: RouteRequest) -> Plan | RouteError:
        raise RuntimeError("the oracle reads the engine's true state, not a snapshot")


def _greedy(snapshot: WorldSnapshot, request: RouteRequest) -> Plan | RouteError:
    r = request
    return decide(
        snapshot, RouteRequest(r.model, r.endpoint, r.client_location, r.access, r.prompt_tokens, 0)
    )


class _Unreserved:
    """``decide`` on a replica that does not count its own leases since its snapshot (see the engine)."""

    reserves = False

    def __call__(self, snapshot: WorldSnapshot, request: RouteRequest) -> Plan | RouteError:
        return decide(snapshot, request)


def make_policy(name: str) -> Policy:
    """A fresh policy by name (the baselines keep a memo, so each run gets its own)."""
    if name == "gateway":
        return decide
    if name == "nearest-only":
        return NearestOnly()
    if name == "nearest-spill":
        return NearestSpill()
    if name == "least-loaded":
        return LeastLoaded()
    if name == "power-of-two":
        return PowerOfTwo()
    if name == "oracle":
        return Oracle()
    if name == "gateway-greedy":
        return _greedy
    if name == "gateway-unreserved":
        return _Unreserved()
    raise ValueError(f"unknown policy '{name}' (known: {', '.join(ALL_POLICY_NAMES)})")
