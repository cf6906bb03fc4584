"""The routing policy: ``decide(snapshot, request) -> Plan | RouteError``. Pure: no I/O, no clock, no globals.

For each region in the endpoint's scope that offers the model and that the caller may use, the
request's time to first token is predicted (``core.latency``):

    predicted_ms = network_ms + queue_depth * wait_ms_per_queued + base_ms + prompt * prefill_ms_per_token
    network_ms   = great-circle RTT from the client's location     (when known)
                 | measured RTT to the region's backends           (when probes have measured it)
                 | great-circle RTT from this gateway's location

Regions without a healthy backend, without free capacity, or (with a spillover budget) predicted more
than the budget above the best are dropped. Of the rest, the nearest by ``network_ms`` is taken unless
another region's prediction beats it by more than the margin (``core.latency.margin_ms``: three standard
errors of the two estimates), so noise in the learned numbers never moves traffic. When it is beaten, the
regions within the margin of the best prediction are near-equal (their difference is noise) and the
request's ``salt`` draws one of them: replicas deciding on the same stale numbers spread over them.
A request with somewhere else to go leaves each region's last tenth of its slots (``RESERVE_FRACTION``)
to requests that cannot move while another region has room to spare. The plan is that region first, then the others by prediction. The first
candidate's route is ``nearest`` when it is the nearest region in scope, else ``spillover``; a regional
endpoint is ``pinned`` and a zone endpoint ``zone``.

When nothing is open, the refusal carries as ``RouteError.plan`` the regions that look full only by the
lease count (``_lease_full``): that count may be a replica's stale view of the shared one, so the caller
tries those leases before giving the refusal.

Two request attributes adjust this, both only inside the scope: the service tier (``core.tiers``) makes a
region look full to flex and default requests before it is full for priority ones, and prompt-cache
affinity (``core.affinity``) takes the prefill a region's warm cache saves off that region's prediction
and lets it win when it is within the margin of the best.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from operator import itemgetter

from regiongate.core import scope, tiers
from regiongate.core.affinity import Affinity
from regiongate.core.endpoint import EndpointKind
from regiongate.core.errors import RouteError
from regiongate.core.frozen import fast_constructor
from regiongate.core.geo import Location, rtt_from_distance_ms, rtts_from_distance_ms
from regiongate.core.labels import Drop, Route
from regiongate.core.latency import MARGIN_FLOOR_MS, Estimate, margin_ms
from regiongate.core.request import RouteRequest
from regiongate.core.tiers import Tier
from regiongate.core.world import DeploymentState, WorldSnapshot


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


# The same constructors without the frozen per-field cost (``core.frozen``): one candidate per decision.
_new_candidate = fast_constructor(Candidate)
_new_estimate = fast_constructor(Estimate)


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


def _estimate(
    snapshot: WorldSnapshot, dep: DeploymentState, request: RouteRequest, network_ms: float | None = None
) -> Estimate:
    """The parts of ``dep``'s prediction for ``request``; ``network_ms``, when given, is ``_network``'s
    round trip for it, already computed (``_rank``)."""
    loc = request.client_location
    if network_ms is not None and loc is not None:
        network, source = network_ms, "client-distance"
    else:
        network, source = _network(snapshot, dep, loc)
    prompt = request.prompt_tokens
    aff = request.affinity
    if aff is not None and aff.region == dep.region:  # its prompt cache holds part of this prompt
        prompt -= aff.cached(prompt)
    return _new_estimate(
        network,
        source,
        dep.queue_depth * dep.wait_ms_per_queued,
        dep.ttft_ms,
        prompt * dep.prefill_ms_per_token,
        dep.error_ms,
    )


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


# A request with somewhere else to go does not take a region's last tenth of its slots (see ``_pick``).
RESERVE_FRACTION = 0.1

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


# (predicted_ms, network_ms, region, deployment); region ids are unique within a model, so sorting these
# never compares deployments.
Ranked = list[tuple[float, float, str, DeploymentState]]


def _candidate(
    snapshot: WorldSnapshot,
    request: RouteRequest,
    dep: DeploymentState,
    nearest: str,
    network_ms: float | None = None,
) -> Candidate:
    order = _backend_order(dep)
    aff = request.affinity
    if aff is not None and aff.region == dep.region and aff.backend in order[1:]:
        order = (aff.backend, *(b for b in order if b != aff.backend))  # its cache is warm there
    return _new_candidate(
        dep.region,
        order,
        _route(request, nearest=dep.region == nearest),
        _estimate(snapshot, dep, request, network_ms),
        dep.free,
    )


def _rank(
    snapshot: WorldSnapshot, request: RouteRequest, in_scope: Sequence[DeploymentState]
) -> tuple[Ranked, int]:
    """Every region in scope by prediction, best first, and the index of the nearest by network."""
    loc, prompt = request.client_location, request.prompt_tokens
    if loc is not None:  # ``_network`` from the client's location, without a call per region
        regions = snapshot.regions
        nets = rtts_from_distance_ms(loc, [regions[d.region].location for d in in_scope])
    else:
        nets = [_network(snapshot, d, loc)[0] for d in in_scope]
    # ``net + server_ms(d, prompt)``, the sum written out in the same order (the same float), without a
    # call per region.
    ranked: Ranked = [
        (
            net + (d.ttft_ms + prompt * d.prefill_ms_per_token + d.queue_depth * d.wait_ms_per_queued),
            net,
            d.region,
            d,
        )
        for net, d in zip(nets, in_scope, strict=True)
    ]
    aff = request.affinity
    if aff is not None:  # the affinity region prefills only the new suffix
        for i, (pred, net, region, d) in enumerate(ranked):
            if region == aff.region:
                ranked[i] = (pred - aff.cached(prompt) * d.prefill_ms_per_token, net, region, d)
                break
    near = min(ranked, key=_BY_NETWORK)
    ranked.sort()
    return ranked, ranked.index(near)


_BY_NETWORK = itemgetter(1, 2)  # (network_ms, region): the nearest, ties by region id


def _open(r: tuple[float, float, str, DeploymentState], limit_ms: float | None) -> bool:
    d = r[3]
    return d.free > 0 and d.has_healthy_backend and (limit_ms is None or r[0] <= limit_ms)


def _lease_full(r: tuple[float, float, str, DeploymentState], limit_ms: float | None) -> bool:
    """Full by the lease count alone: healthy, within the budget, its backends not reporting themselves
    full. That count is this process's view of a shared one (``state.capacity_redis``: re-read every
    ``refresh_s`` and by each acquire), so with several replicas it may be older than the lease's own."""
    d = r[3]
    if d.free > 0 or not d.has_healthy_backend or (limit_ms is not None and r[0] > limit_ms):
        return False
    return d.reported_free is None or d.reported_free > d.held


def _on_leases(
    snapshot: WorldSnapshot,
    request: RouteRequest,
    ranked: Ranked,
    limit_ms: float | None,
    refusal: RouteError,
    considered: tuple[Considered, ...] = (),
) -> RouteError:
    """``refusal`` with the regions that look full only by the lease count as its ``plan``, best
    predicted first: their leases are tried before it is given, since a stale count must not refuse a
    request another replica's release has made room for (measured: ``docs/routing.md``)."""
    full = [r[3] for r in ranked if _lease_full(r, limit_ms)]
    if full:
        nearest = min(ranked, key=_BY_NETWORK)[2]
        cands = [_candidate(snapshot, request, d, nearest) for d in full]
        refusal.plan = Plan(request.model, cands, considered, nearest)
    return refusal


def _roomy(d: DeploymentState) -> bool:
    """More than the reserved tenth free: a request with somewhere else to go may take a slot here."""
    return d.free > d.limit * RESERVE_FRACTION


def _pick(ranked: Ranked, near_i: int, limit_ms: float | None, salt: int) -> tuple[int, str]:
    """The index in ``ranked`` of the region to try first (-1: none is open), and why.

    Among the open regions (the roomy ones, if any: a request that could go elsewhere leaves each region's
    last ``RESERVE_FRACTION`` to requests that cannot), the nearest keeps the request unless the best
    prediction beats it by more than the margin; then one of the regions within the margin of the best
    is drawn by the salt. Most requests end at the first test: their nearest region is also the best."""
    near = ranked[near_i]
    if near_i == 0:  # ``_open(near, limit_ms) and _roomy(near[3])``, reading ``free`` once
        d = near[3]
        free = d.free
        if (
            free > 0
            and d.has_healthy_backend
            and (limit_ms is None or near[0] <= limit_ms)
            and free > d.limit * RESERVE_FRACTION
        ):
            return 0, "nearest open region, best predicted"
    open_: list[int] = []
    roomy: list[int] = []
    for i, (pred, _, _, d) in enumerate(ranked):  # _open and _roomy, reading ``free`` once
        free = d.free
        if free > 0 and d.has_healthy_backend and (limit_ms is None or pred <= limit_ms):
            open_.append(i)
            if free > d.limit * RESERVE_FRACTION:
                roomy.append(i)
    if not open_:
        return -1, ""
    pool = roomy or open_
    note = ""
    if len(pool) < len(open_):
        note = f"; {len(open_) - len(pool)} nearly full region(s) keep their last slots for pinned requests"
    if len(pool) == 1:
        return pool[0], ("the only open region" if len(open_) == 1 else "the only region with room") + note
    for i in pool:  # the nearest of the pool (ranked by network, then id)
        r, n = ranked[i], ranked[near_i]
        if near_i not in pool or r[1] < n[1] or (r[1] == n[1] and r[2] < n[2]):
            near_i = i
    b = pool[0]
    best, near = ranked[b], ranked[near_i]
    if near_i == b:
        return b, "nearest open region, best predicted" + note
    gain = near[0] - best[0]
    need = margin_ms(near[3].error_ms, best[3].error_ms)
    if gain <= need:
        why = f"nearest open region; the best is only {gain:.1f} ms better (margin {need:.1f} ms)"
        return near_i, why + note
    err = best[3].error_ms
    ties = [i for i in pool if ranked[i][0] - best[0] <= margin_ms(ranked[i][3].error_ms, err)]
    if len(ties) < 2:
        return b, f"best predicted, {gain:.1f} ms better than the nearest (margin {need:.1f} ms)" + note
    return ties[salt % len(ties)], f"drawn among {len(ties)} regions within the margin of the best" + note


def _affine(
    ranked: Ranked, pick: int, why: str, limit_ms: float | None, aff: Affinity | None, prompt: int
) -> tuple[int, str]:
    """``_pick``'s choice, or the affinity region when it is open, roomy, no farther than its saved prefill
    pays for (to within ``MARGIN_FLOOR_MS``) and, with that prefill saved, within the margin of that
    choice: a warm cache breaks ties between near-equal regions, it never outweighs a clear gain."""
    if aff is None or pick < 0:
        return pick, why
    at = next((i for i, r in enumerate(ranked) if r[2] == aff.region), -1)
    if at < 0:
        return pick, why  # not in scope (or not offering the model): affinity never widens the scope
    r, p = ranked[at], ranked[pick]
    saved = aff.cached(prompt) * r[3].prefill_ms_per_token
    if at == pick:
        return pick, why + f"; prompt cache warm here (saves {saved:.1f} ms)"
    if not (_open(r, limit_ms) and _roomy(r[3])):
        return pick, why + f"; {aff.region} holds this prefix but has no room"
    need = margin_ms(r[3].error_ms, p[3].error_ms)
    gap = r[0] - p[0]
    farther = r[1] - p[1]  # the extra round trip is known, not noise: the saved prefill must pay for it
    if farther > saved + MARGIN_FLOOR_MS:
        return pick, why + f"; {aff.region} holds this prefix but is {farther:.1f} ms farther (saves {saved:.1f} ms)"
    if gap <= need:
        return at, (
            f"prompt-cache affinity: served this prefix recently ({saved:.1f} ms of prefill saved), "
            f"within {max(gap, 0.0):.1f} ms of {p[2]} (margin {need:.1f} ms)"
        )
    return pick, why + f"; {aff.region} holds this prefix but is {gap:.1f} ms slower (margin {need:.1f} ms)"


def decide(snapshot: WorldSnapshot, request: RouteRequest, explain: bool = False) -> Plan | RouteError:
    """The plan for ``request``. With ``explain``, the plan also lists every region of the snapshot and
    why it was kept or dropped (``route explain``, the explain header); routing itself never needs it."""
    model, access, kind = request.model, request.access, request.endpoint.kind
    if kind is not EndpointKind.GLOBAL:  # a fence never forbids the global endpoint
        fence = _fence_error(snapshot, request)
        if fence is not None:
            return fence
    deps = snapshot.by_model.get(model, ())
    granted = access.regions_for(model) if access.grants is not None else None
    visible = deps if granted is None else [d for d in deps if d.region in granted]
    in_scope: Sequence[DeploymentState]
    if kind is EndpointKind.GLOBAL and access.zone is None:
        in_scope = visible  # global without a zone fence: everything the caller may use is in scope
    else:
        in_scope = scope.within(request.endpoint, access, visible, snapshot.regions)
    if not in_scope:
        hint = [d.region for d in visible if _in_fence(snapshot, request, d.region)]
        return RouteError.model_not_found(model, _where(request), hint)
    tier = request.tier
    if tier is not Tier.PRIORITY:  # slots held back from this tier are not free to it
        in_scope = tiers.views(in_scope, tier)

    ranked, near_i = _rank(snapshot, request, in_scope)
    nearest = ranked[near_i][2]
    budget = access.spill_budget_ms if kind is EndpointKind.GLOBAL else None
    limit_ms = ranked[0][0] + budget if budget is not None else None
    if explain:
        return _explained(snapshot, request, ranked, limit_ms, budget, in_scope, near_i)
    pick, why = _pick(ranked, near_i, limit_ms, request.salt)
    if request.affinity is not None:
        pick = _affine(ranked, pick, why, limit_ms, request.affinity, request.prompt_tokens)[0]
    if pick < 0:
        over_budget = any(_drop(r[3], r[0], limit_ms) is OVER_BUDGET for r in ranked)
        refusal = _refusal(snapshot, request, in_scope, over_budget)
        return _on_leases(snapshot, request, ranked, limit_ms, refusal)
    r = ranked[pick]
    first = _candidate(snapshot, request, r[3], nearest, r[1])
    rest = (
        _candidate(snapshot, request, r[3], nearest, r[1])
        for i, r in enumerate(ranked)
        if i != pick and _open(r, limit_ms)
    )
    return Plan(model, (first,), (), nearest, more=rest)


def _explained(
    snapshot: WorldSnapshot,
    request: RouteRequest,
    ranked: Ranked,
    limit_ms: float | None,
    budget: float | None,
    in_scope: Sequence[DeploymentState],
    near_i: int,
) -> Plan | RouteError:
    """``decide`` with every region's verdict written down (``route explain``, the explain header)."""
    nearest = ranked[near_i][2]
    pick, why_first = _pick(ranked, near_i, limit_ms, request.salt)
    pick, why_first = _affine(ranked, pick, why_first, limit_ms, request.affinity, request.prompt_tokens)
    if pick >= 0:
        why_first += _counterfactual(snapshot, request, ranked[pick][2])
    order = [pick] if pick >= 0 else []
    order += [i for i, r in enumerate(ranked) if i != pick and _open(r, limit_ms)]
    candidates = [_candidate(snapshot, request, ranked[i][3], nearest) for i in order]
    rank_of = {c.region: n for n, c in enumerate(candidates, 1)}
    considered: list[Considered] = []
    over_budget = False
    for _, _, region, dep in ranked:
        est = _estimate(snapshot, dep, request)
        why = _drop(dep, est.total_ms, limit_ms)
        if not why:
            n = rank_of[region]
            cand = candidates[n - 1]
            verdict = f"rank {n} ({cand.route})" + (f": {why_first}" if n == 1 else "")
            considered.append(Considered(region, "kept", verdict, est, dep.free))
            continue
        over_budget = over_budget or why is OVER_BUDGET
        if why is FULL:
            why = f"full ({_full(dep)})"
            if not candidates and _lease_full((est.total_ms, 0.0, region, dep), limit_ms):
                why += "; its lease is still tried before the request is refused (the count may be stale)"
        elif why is OVER_BUDGET:
            why = f"beyond this key's spillover budget ({budget:g} ms over the best region)"
        considered.append(Considered(region, "dropped", why, est, dep.free))
    considered += _out_of_scope(snapshot, request, in_scope)
    if candidates:
        return Plan(request.model, candidates, tuple(considered), nearest)
    refusal = _refusal(snapshot, request, in_scope, over_budget)
    return _on_leases(snapshot, request, ranked, limit_ms, refusal, tuple(considered))


def _counterfactual(snapshot: WorldSnapshot, request: RouteRequest, picked: str) -> str:
    """What the tier or affinity changed: where the request would go as a default-tier request without
    affinity (explain only: one more decision, off the hot path)."""
    if request.tier is Tier.DEFAULT and request.affinity is None:
        return ""
    plain = decide(snapshot, replace(request, tier=Tier.DEFAULT, affinity=None))
    other = "refused" if isinstance(plain, RouteError) else plain.first.region
    if other == picked:
        return ""
    what = [f"tier {request.tier}"] if request.tier is not Tier.DEFAULT else []
    if request.affinity is not None:
        what.append("prompt-cache affinity")
    return f" [{' and '.join(what)} changed this: a default request without affinity would go to {other}]"


def _out_of_scope(
    snapshot: WorldSnapshot, request: RouteRequest, in_scope: Sequence[DeploymentState]
) -> list[Considered]:
    """Every other region of the snapshot, with the reason the request may not or cannot go there."""
    model, access, ep = request.model, request.access, request.endpoint
    seen = {d.region for d in in_scope}
    out = []
    for region in snapshot.regions:
        if region in seen:
            continue
        if snapshot.deployment(model, region) is None:
            why = f"model {model} not offered there"
        elif not access.permits(model, region):
            why = "not granted to this team"
        elif not _in_fence(snapshot, request, region):
            why = f"outside this key's fence (data zone {access.zone})"
        elif ep.kind is EndpointKind.REGION:
            why = f"outside the endpoint (region {ep.name} only)"
        else:
            why = f"outside the endpoint (data zone {ep.name} only)"
        out.append(Considered(region, "dropped", why))
    return out


def _full(dep: DeploymentState) -> str:
    held = f", {dep.held} held back from this tier" if dep.held else ""
    if dep.in_use < dep.limit - dep.held:  # the backends' own report of their load is what binds
        return f"its backends report no free capacity; {dep.in_use}/{dep.limit} in use here{held}"
    return f"{dep.in_use}/{dep.limit} in use{held}"


def _route(request: RouteRequest, *, nearest: bool) -> Route:
    kind = request.endpoint.kind
    if kind is EndpointKind.REGION:
        return Route.PINNED
    if kind is EndpointKind.ZONE:
        return Route.ZONE
    return Route.NEAREST if nearest else Route.SPILLOVER


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
