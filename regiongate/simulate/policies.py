"""The policies compared by the simulation, all of one type: ``(WorldSnapshot, RouteRequest) -> Plan |
RouteError``.

``gateway`` is ``regiongate.core.policy.decide`` itself, the code the gateway runs. The two baselines
read the same snapshots and honour the same endpoint scope (a regional endpoint stays in its region, a
zone endpoint or zone-fenced key in its zone), so any difference in the report comes from the ranking:

* ``nearest-only``: the nearest healthy region by great-circle RTT from the client, and nothing else
  (DNS geo-routing with health checks: no spillover when it is full, the request is refused).
* ``least-loaded``: the healthy region with the lowest share of its limit in use, wherever it is
  (ignores distance; ties by region id).
"""

from __future__ import annotations

from collections.abc import Callable

from regiongate.core import (
    DeploymentState,
    Location,
    RouteError,
    RouteRequest,
    WorldSnapshot,
    decide,
    rtt_from_distance_ms,
    scope,
)
from regiongate.core.labels import Route
from regiongate.core.policy import Candidate, Estimate, Plan

Policy = Callable[[WorldSnapshot, RouteRequest], Plan | RouteError]


def _in_scope(snapshot: WorldSnapshot, request: RouteRequest) -> list[DeploymentState]:
    """Deployments of the model that the endpoint, the key's zone fence and its grants allow."""
    ep, access, model = request.endpoint, request.access, request.model
    deps = snapshot.by_model.get(model, ())
    if scope.unbounded(ep, access):
        return list(deps)
    regions = snapshot.regions
    return [d for d in deps if scope.serves(ep, access, model, d.region, regions[d.region].zone)]


def _candidate(d: DeploymentState, route: Route, network_ms: float) -> Candidate:
    return Candidate(
        d.region,
        tuple(b.id for b in d.backends if b.healthy),
        route,
        Estimate(network_ms, "client-distance", 0.0),
        d.free,
    )


def _refuse(snapshot: WorldSnapshot, request: RouteRequest, scope: list[DeploymentState]) -> RouteError:
    if not scope:
        offering = [d.region for d in snapshot.by_model.get(request.model, ())]
        return RouteError.model_not_found(request.model, "in this scope", offering)
    return RouteError.capacity_exhausted(request.model, [d.region for d in scope], snapshot.retry_after_s)


class _Baseline:
    """Shared by the baselines: distance RTTs memoised per (origin, region); clients come from a
    bounded set of places, so the memo is bounded too."""

    def __init__(self) -> None:
        self._rtt: dict[tuple[Location, str], float] = {}

    def rtt_ms(self, snapshot: WorldSnapshot, request: RouteRequest, region: str) -> float:
        origin = request.client_location or snapshot.gateway_location
        key = (origin, region)
        v = self._rtt.get(key)
        if v is None:
            v = self._rtt[key] = rtt_from_distance_ms(origin, snapshot.regions[region].location)
        return v


class NearestOnly(_Baseline):
    def __call__(self, snapshot: WorldSnapshot, request: RouteRequest) -> Plan | RouteError:
        scope = _in_scope(snapshot, request)
        best, best_key = None, (0.0, "")
        for d in scope:
            if d.has_healthy_backend:
                key = (self.rtt_ms(snapshot, request, d.region), d.region)
                if best is None or key < best_key:
                    best, best_key = d, key
        if best is None or best.free <= 0:
            return _refuse(snapshot, request, scope)
        return Plan(request.model, (_candidate(best, Route.NEAREST, best_key[0]),), first_choice=best.region)


class LeastLoaded(_Baseline):
    def __call__(self, snapshot: WorldSnapshot, request: RouteRequest) -> Plan | RouteError:
        scope = _in_scope(snapshot, request)
        open_ = [d for d in scope if d.free > 0 and d.has_healthy_backend]
        if not open_:
            return _refuse(snapshot, request, scope)
        ranked = sorted(open_, key=lambda d: (d.in_use / d.limit, d.region))
        route = Route.LEAST_LOADED
        cands = (_candidate(d, route, self.rtt_ms(snapshot, request, d.region)) for d in ranked)
        first = next(cands)
        return Plan(request.model, (first,), first_choice=first.region, more=cands)


def make_policy(name: str) -> Policy:
    """A fresh policy by name (the baselines keep a memo, so each run gets its own)."""
    if name == "gateway":
        return decide
    if name == "nearest-only":
        return NearestOnly()
    if name == "least-loaded":
        return LeastLoaded()
    raise ValueError(f"unknown policy '{name}' (known: gateway, nearest-only, least-loaded)")
