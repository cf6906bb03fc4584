"""The discrete-event loop: one engine per policy, all fed the same arrivals in lockstep.

Each arrival asks the policy for a plan over a ``WorldSnapshot`` of the model's deployments, exactly as the
gateway does (``Fleet.snapshot_for`` then ``decide``), and takes a lease on the first candidate with room.
Snapshots are rebuilt lazily: a deployment's frozen ``DeploymentState`` is dropped when its state changes
(admission, first token, completion, an event) and rebuilt only when the next request for that model
needs it, so a decision costs one snapshot of a handful of deployments, never a scan of the fleet. A
baseline's engine builds none at all: it reads the live deployments (``_Baseline.pick``) unless its
replicas decide on stale snapshots.

Events on the heap are tuples ``(time, seq, kind, deployment, epoch, ...)``; ``seq`` makes the order total
and deterministic. An outage bumps the deployment's epoch: in-flight work of the old epoch is lost
(requests before their first token count as failed, the others as interrupted) and its events are ignored.
An engine that learns nothing from first tokens folds a request's first token into its completion
(``SERVED``: one event instead of two) when nothing recorded then depends on the order of first tokens.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from heapq import heappop, heappush
from typing import Any, Protocol

from regiongate.core import (
    BackendState,
    DeploymentState,
    Plan,
    RouteError,
    RouteRequest,
    WorldSnapshot,
    rtt_from_distance_ms,
    scope,
)
from regiongate.core.tiers import Tier, held_back
from regiongate.core.world import new_deployment_state, new_snapshot
from regiongate.simulate.fleet import Context, DeploymentSpec, SimEvent, World
from regiongate.simulate.policies import Live, Pick, Policy, refusal_code
from regiongate.simulate.stats import HIST_BINS, HIST_OFFSET, HIST_PER_E, PolicyStats
from regiongate.state.ttft import TtftEstimate, Typical, typical

FIRST, DONE, TICK, EV_START, EV_END, SERVED = 0, 1, 2, 3, 4, 5
# A snapshot's TTFT estimates are never further than this from the exact value: far below the spread of
# the samples the estimate smooths (tens of ms), so a ranking it changes was a coin toss anyway.
TTFT_TOLERANCE_MS = 0.1
_log = math.log


class Hook(Protocol):
    """What an experiment sees of each request it tagged (``Engine.arrive``)."""

    def before(self, t: float, req: RouteRequest, tag: Any) -> RouteRequest: ...

    def placed(self, t: float, d: Dep, tag: Any, prompt: int) -> int: ...

    def first(self, t: float, d: Dep, ctx: Context, tag: Any, ttft_ms: float, wait_s: float) -> None: ...

    def rejected(self, t: float, ctx: Context, tag: Any, code: str) -> None: ...


class Dep:
    """The mutable state of one simulated deployment."""

    __slots__ = (
        "backends",
        "base_limit",
        "base_slots",
        "busy",
        "cap",
        "checked_at",
        "down_backends",
        "drift",
        "epoch",
        "epoch_ends",
        "factors",
        "fixed",
        "flex_below",
        "in_use",
        "last",
        "limit",
        "mean_service_s",
        "mi",
        "model",
        "outages",
        "prefill_s",
        "prior",
        "region",
        "reserve",
        "ri",
        "running",
        "slack",
        "slots",
        "spec",
        "state",
        "token_s",
        "ttft",
        "ttft_s",
        "up",
        "up_backends",
        "waiting",
    )

    def __init__(self, spec: DeploymentSpec, ri: int, mi: int, halflife_s: float) -> None:
        self.spec = spec
        self.model, self.region, self.ri, self.mi = spec.model, spec.region, ri, mi
        self.base_limit, self.base_slots = spec.limit, spec.slots
        self.limit, self.slots = spec.limit, spec.slots
        self.ttft_s, self.token_s, self.prefill_s = spec.ttft_s, spec.token_s, spec.prefill_s
        self.mean_service_s = 0.0  # one request's mean slot time (the oracle's expected queue wait)
        self.up_backends = tuple(BackendState(b) for b in spec.backend_ids)
        self.down_backends = tuple(BackendState(b, healthy=False) for b in spec.backend_ids)
        self.backends = self.up_backends
        self.up = bool(spec.backend_ids)  # ``has_healthy_backend`` of its state
        self.outages = 0
        self.factors: list[float] = []
        self.in_use = 0  # gateway leases held (running + waiting)
        self.running = 0  # backend slots busy
        self.waiting: deque[tuple[float, Context, int, int, int, Any]] = deque()
        self.ttft = TtftEstimate(halflife_s)  # the gateway's own smoothing of queueing + prefill
        self.epoch = 0
        self.epoch_ends: list[float] = []
        self.state: DeploymentState | None = None
        self.fixed: tuple[float, float, float, float] | None = None  # a baseline's estimate (constant)
        # ``state``'s TTFT was checked at ``checked_at`` against the model's typical TTFT ``prior``: then
        # ``slack`` ms from the tolerance were left, and it moves at most ``drift`` ms per second.
        self.prior = self.checked_at = self.drift = self.slack = 0.0
        self.last = 0.0
        self.busy = 0.0
        self.cap = 0.0
        self.reserve = 0.0  # service tiers (core.tiers): share of the limit kept for priority ...
        self.flex_below = 1.0  # ... and the utilisation below which flex is admitted

    def touch(self, now: float) -> None:
        """Account busy and available slot-time up to ``now``."""
        dt = now - self.last
        self.busy += (self.running if self.running < self.slots else self.slots) * dt
        if not self.outages:
            self.cap += self.slots * dt
        self.last = now

    def resize(self) -> None:
        f = math.prod(self.factors)
        self.limit = round(self.base_limit * f)
        self.slots = max(1, round(self.base_slots * f)) if self.limit > 0 else 0


class ReplicaView:
    """One replica's view of one model: the snapshot it took at ``taken_at``, the backend slots free then,
    and ``view``, that snapshot with the leases the replica took since (``mine``, per deployment)."""

    __slots__ = ("free", "mine", "snap", "taken_at", "view")

    def __init__(self, taken_at: float, snap: WorldSnapshot, free: list[int]) -> None:
        self.taken_at, self.snap, self.view, self.free = taken_at, snap, snap, free
        self.mine = [0] * len(free)


class Engine:
    def __init__(self, world: World, name: str, policy: Policy) -> None:
        self.world = world
        self.name = name
        self.policy = policy
        self.n_buckets = 1
        self.bucket_s = world.duration_s
        self.stats: PolicyStats
        self.heap: list[tuple[Any, ...]] = []
        self.seq = itertools.count()
        model_index = {m: i for i, m in enumerate(world.models)}
        region_index = {r: i for i, r in enumerate(world.region_ids)}
        self.deps = [
            Dep(s, region_index[s.region], model_index.get(s.model, -1), world.halflife_s)
            for s in world.deployments
        ]
        self.by_model: list[list[Dep]] = [[] for _ in world.models]
        for d in sorted(self.deps, key=lambda d: d.ri):
            if d.mi >= 0:
                self.by_model[d.mi].append(d)
        self.dep_at = [{d.region: d for d in ds} for ds in self.by_model]
        self.ttfts = [[d.ttft for d in ds] for ds in self.by_model]  # each model's estimators, for its prior
        self.keys = [[(d.model, d.region) for d in ds] for ds in self.by_model]
        self.snaps: list[WorldSnapshot | None] = [None] * len(world.models)
        base = WorldSnapshot.build(world.regions, {}, world.gateway_location, world.retry_after_s)
        self._base = base
        self.queue_depth = world.report_queue_depth
        for d in self.deps:
            d.mean_service_s = d.ttft_s + world.mean_prompt * d.prefill_s + world.mean_completion * d.token_s
        self.oracle = getattr(policy, "oracle", False)
        self.hook: Hook | None = None  # an experiment's view of each request (``simulate.sessions``)
        # Baselines read no latency estimate: their engines skip the learning (same snapshots otherwise).
        self.learns = getattr(policy, "learns", True)
        self.typical: list[Typical | None] = [None if self.learns else Typical() for _ in world.models]
        self.folds = not self.learns  # first tokens into completions (``SERVED``)
        self.staleness_s = world.staleness_s
        # Whether a replica counts the leases it took itself since its snapshot (``_stale_snapshot``).
        self.reserves = getattr(policy, "reserves", True)
        # Each replica's last snapshot per model and when it was taken (only with ``staleness_s``).
        self.stale: list[list[ReplicaView | None]] = [
            [None] * len(world.models) for _ in range(world.replicas)
        ]
        # A baseline decides on the live deployments when a snapshot would show their present state
        # (``_Baseline.pick``): per context, its scope and the same by distance, built once.
        pick = getattr(policy, "pick", None)
        self.pick: Callable[[Sequence[Live], Sequence[Live], int], Pick] | None = (
            pick if not self.staleness_s else None
        )
        self.scoped: list[tuple[list[Dep], list[Dep]]] = (
            [self._scoped(c) for c in world.contexts] if self.pick is not None else []
        )

    def _scoped(self, ctx: Context) -> tuple[list[Dep], list[Dep]]:
        """``ctx``'s deployments in scope, as ``policies._in_scope`` finds them in a snapshot, and the same
        by (distance round trip, region), as the baselines rank them."""
        r = ctx.request
        regions = self.world.regions
        origin = r.client_location or self.world.gateway_location
        deps = [
            d
            for d in self.by_model[ctx.model]
            if scope.serves(r.endpoint, r.access, r.model, d.region, regions[d.region].zone)
        ]
        near = sorted(
            deps, key=lambda d: (rtt_from_distance_ms(origin, regions[d.region].location), d.region)
        )
        return deps, near

    def start(self, n_buckets: int) -> None:
        """Schedule the utilisation ticks and the scenario's events; call once before the first arrival."""
        w = self.world
        self.n_buckets = n_buckets
        self.bucket_s = w.duration_s / n_buckets
        self.stats = PolicyStats(
            self.name, len(w.continents) * len(w.region_ids), len(w.region_ids), n_buckets, len(w.continents)
        )
        for ev in w.events:
            heappush(self.heap, (ev.start_s, next(self.seq), EV_START, None, 0, ev))
            heappush(self.heap, (ev.end_s, next(self.seq), EV_END, None, 0, ev))
        # One tick at a time (each pushes the next, ``_handle``): the heap holds in-flight work, not the
        # day's 288 ticks, so every push and pop is a level shallower. Same order of events: a tick
        # comes after the events at its time that were pushed before it, as when all were pushed here.
        heappush(self.heap, (self.bucket_s, next(self.seq), TICK, None, 0, 0))

    # --- snapshots ---------------------------------------------------------------------------------
    def snapshot(self, mi: int, now: float) -> WorldSnapshot:
        """What ``Fleet.snapshot_for(model)`` gives the gateway at ``now``: only this model's deployments.

        A deployment's frozen state is rebuilt when it changed, or when its TTFT estimate (which relaxes
        with idle time toward the model's typical TTFT, the median of its measured deployments, exactly
        as the fleet computes it) has moved by more than ``TTFT_TOLERANCE_MS``. The estimate moves at a
        bounded rate, so a state is known to stay within tolerance for a while without recomputing it; the
        snapshot object is reused when no state was rebuilt."""
        deps = self.by_model[mi]
        prior = self.typical[mi]
        if not self.learns:  # the baselines' estimates never move: only a changed state is rebuilt
            return self._unlearned_snapshot(mi, now, deps, prior)
        if prior is None:  # a sample arrived since: the model's typical numbers, as the fleet takes them
            prior = self.typical[mi] = typical(self.ttfts[mi])
        pb = prior.base_ms
        qd = self.queue_depth
        rebuilt = False
        states = []
        for d in deps:
            s = d.state
            off = 0.0
            if s is not None:
                # The exact base moves by at most ``drift`` per second of idle time, and by at most as
                # much as the prior moved: while both together stay within the slack, the state is good.
                if d.drift * (now - d.checked_at) + abs(pb - d.prior) <= d.slack:
                    states.append(s)
                    continue
                off = abs(d.ttft.current(now, pb) - s.ttft_ms)
                if off > TTFT_TOLERANCE_MS:
                    s = None
            if s is None:  # changed, or its estimate moved too far: built at ``now`` (exact)
                s = d.state = self._state(d, d.ttft.params(now, prior), len(d.waiting) if qd else 0)
                off = 0.0
                rebuilt = True
            d.prior, d.checked_at = pb, now
            d.slack = slack = TTFT_TOLERANCE_MS - off
            d.drift = d.ttft.drift_per_s(pb, slack)
            states.append(s)
        snap = self.snaps[mi]
        if snap is not None and not rebuilt:
            return snap
        return self._snapshot_of(mi, tuple(states))

    def _unlearned_snapshot(
        self, mi: int, now: float, deps: list[Dep], prior: Typical | None
    ) -> WorldSnapshot:
        snap = self.snaps[mi]
        if snap is not None:
            return snap
        assert prior is not None  # set once for an engine that does not learn
        qd = self.queue_depth
        states = []
        for d in deps:
            s = d.state
            if s is None:
                if d.fixed is None:  # an estimate without samples: the same numbers at any time
                    d.fixed = d.ttft.params(now, prior)
                s = d.state = self._state(d, d.fixed, len(d.waiting) if qd else 0)
            states.append(s)
        return self._snapshot_of(mi, tuple(states))

    def _snapshot_of(self, mi: int, t: tuple[DeploymentState, ...]) -> WorldSnapshot:
        base = self._base
        snap = self.snaps[mi] = new_snapshot(
            base.regions,
            dict(zip(self.keys[mi], t, strict=False)),
            base.gateway_location,
            base.zones,
            {self.world.models[mi]: t},
            base.gateway_rtt_ms,
            base.retry_after_s,
        )
        return snap

    @staticmethod
    def _state(d: Dep, params: tuple[float, float, float, float], queued: int) -> DeploymentState:
        base, prefill, wait, error = params
        flex = None if d.flex_below >= 1.0 else math.floor(d.limit * d.flex_below + 1e-9)
        return new_deployment_state(
            d.model,
            d.region,
            d.limit,
            d.in_use,
            d.backends,
            base,
            prefill,
            wait,
            error,
            queued,
            None,
            math.ceil(d.limit * d.reserve - 1e-9),
            flex,
        )

    def _stale_snapshot(self, mi: int, now: float, replica: int) -> WorldSnapshot:
        """What replica ``replica`` decides on: its last snapshot until it is ``staleness_s`` old, with
        (when the policy ``reserves``) the leases this replica itself took since then counted in: a
        replica knows its own leases the moment it takes them, so it does not herd into what it filled."""
        kept = self.stale[replica][mi]
        if kept is None or now - kept.taken_at >= self.staleness_s:
            snap = self.snapshot(mi, now)
            kept = self.stale[replica][mi] = ReplicaView(
                now, snap, [d.slots - d.running for d in self.by_model[mi]]
            )
        return kept.view if self.reserves else kept.snap

    def _took(self, mi: int, replica: int, d: Dep) -> None:
        """Replica ``replica`` took a lease on ``d``: its own view counts it (``_stale_snapshot``)."""
        kept = self.stale[replica][mi]
        if kept is None:
            return
        i = self.by_model[mi].index(d)
        kept.mine[i] += 1
        mine, snap = kept.mine[i], kept.snap
        s = snap.by_model[d.model][i]
        states = list(kept.view.by_model[d.model])
        # Beyond the backend slots free at the snapshot, this replica's requests wait in its queue.
        queued = s.queue_depth + max(mine - kept.free[i], 0) if self.queue_depth else 0
        states[i] = replace(s, in_use=s.in_use + mine, queue_depth=queued)
        t = tuple(states)
        kept.view = new_snapshot(
            snap.regions,
            dict(zip(self.keys[mi], t, strict=False)),
            snap.gateway_location,
            snap.zones,
            {d.model: t},
            snap.gateway_rtt_ms,
            snap.retry_after_s,
        )

    @staticmethod
    def _admits(d: Dep, tier: Tier) -> bool:
        """Whether ``d``'s lease has room for a request of ``tier``: the gateway's lease limit is the
        deployment's minus what the tier may not take (``core.tiers.held_back``)."""
        if d.outages:
            return False
        if d.reserve == 0.0 and d.flex_below >= 1.0:
            return d.in_use < d.limit
        flex = None if d.flex_below >= 1.0 else math.floor(d.limit * d.flex_below + 1e-9)
        return d.in_use < d.limit - held_back(d.limit, tier, math.ceil(d.limit * d.reserve - 1e-9), flex)

    def _oracle(self, mi: int, ctx: Context, prompt: int) -> Dep | None:
        """The deployment with the lowest true expected TTFT for this request, from the true state: the
        real round trip, the real queue, the real speeds. No online policy can know more."""
        best, best_ms = None, 0.0
        allowed, rtt = ctx.allowed, ctx.rtt_s
        for d in self.by_model[mi]:
            if d.outages or d.in_use >= d.limit or not allowed[d.ri]:
                continue
            wait = 0.0 if d.running < d.slots else (len(d.waiting) + 1) * d.mean_service_s / d.slots
            ms = rtt[d.ri] + wait + d.ttft_s + prompt * d.prefill_s
            if best is None or ms < best_ms:
                best, best_ms = d, ms
        return best

    def _changed(self, d: Dep) -> None:
        d.state = None
        if d.mi >= 0:
            self.snaps[d.mi] = None

    # --- requests ------------------------------------------------------------------------------------
    def arrive(
        self,
        t: float,
        ctx: Context,
        req: RouteRequest,
        prompt: int,
        completion: int,
        replica: int = 0,
        tag: Any = None,
    ) -> None:
        """One arrival. ``tag`` is the experiment's own label for it (``simulate.sessions``): with a
        ``hook`` set, the hook may add to the request (affinity), sees where it was placed (and returns the
        prompt tokens the backend really prefills: its prompt cache) and sees its TTFT or refusal."""
        heap = self.heap
        while heap and heap[0][0] <= t:
            self._handle(heappop(heap))
        st = self.stats
        cell = ctx.cell
        st.requests[cell] += 1
        b = int(t / self.bucket_s)
        if b >= self.n_buckets:
            b = self.n_buckets - 1
        st.arrivals_bucket[b][ctx.continent] += 1
        mi = ctx.model
        if self.oracle:
            found = self._oracle(mi, ctx, prompt)
            if found is None:
                st.rejected[cell] += 1
                st.reject_codes["capacity_exhausted"] = st.reject_codes.get("capacity_exhausted", 0) + 1
                return
            d = found
        elif self.pick is not None and self.hook is None:
            scoped, near = self.scoped[ctx.index]
            live, first_region = self.pick(scoped, near, req.salt)
            if live is None:
                code = refusal_code(scoped)
                st.rejected[cell] += 1
                st.reject_codes[code] = st.reject_codes.get(code, 0) + 1
                return
            d = live  # type: ignore[assignment]  # one of ``scoped``: a Dep
            if d.region != first_region:
                st.spilled[cell] += 1
        else:
            snap = self._stale_snapshot(mi, t, replica) if self.staleness_s else self.snapshot(mi, t)
            hook = self.hook
            if hook is not None:
                req = hook.before(t, req, tag)
            plan = self.policy(snap, req)
            refusal = None
            if isinstance(plan, RouteError):
                if not isinstance(plan.plan, Plan):
                    if hook is not None:
                        hook.rejected(t, ctx, tag, plan.code)
                    st.rejected[cell] += 1
                    st.reject_codes[plan.code] = st.reject_codes.get(plan.code, 0) + 1
                    return
                refusal, plan = plan, plan.plan  # it only looks full: the leases decide (gateway too)
            dep_at = self.dep_at[mi]
            first = cand = plan.first
            d = dep_at[cand.region]
            if d.outages or d.in_use >= d.limit or refusal is not None:  # stale: walk on like the gateway
                tier = req.tier
                for cand in plan:
                    d = dep_at[cand.region]
                    if self._admits(d, tier):
                        break
                else:  # counted, never hidden
                    code = "stale_plan" if refusal is None else refusal.code
                    if hook is not None:
                        hook.rejected(t, ctx, tag, code)
                    st.rejected[cell] += 1
                    st.reject_codes[code] = st.reject_codes.get(code, 0) + 1
                    return
            if cand is not first or plan.first_choice != d.region:
                st.spilled[cell] += 1  # not the nearest region: moved for latency, or it was full
            if hook is not None:
                prompt = hook.placed(t, d, tag, prompt)
        ri = d.ri
        if not ctx.allowed[ri]:
            st.violations += 1
        if ri != ctx.home:
            st.remote[cell] += 1
            st.inbound_region[ri] += 1
        st.routed_region[ri] += 1
        st.routed_bucket[b][ri] += 1
        d.in_use += 1
        d.state = None
        self.snaps[mi] = None
        if self.staleness_s and self.reserves and not self.oracle:
            self._took(mi, replica, d)
        if d.running < d.slots:
            self._start(d, t, t, ctx, prompt, completion, 0, tag)
        else:
            d.waiting.append((t, ctx, prompt, completion, len(d.waiting) if self.queue_depth else 0, tag))

    def _start(
        self,
        d: Dep,
        now: float,
        arrived: float,
        ctx: Context,
        prompt: int,
        completion: int,
        queued: int,
        tag: Any = None,
    ) -> None:
        dt = now - d.last
        d.busy += (d.running if d.running < d.slots else d.slots) * dt
        if not d.outages:
            d.cap += d.slots * dt
        d.last = now
        d.running += 1
        server = d.ttft_s + prompt * d.prefill_s
        wait = now - arrived
        first = now + server
        heap = self.heap
        seq = next(self.seq)
        ttft_ms = (ctx.rtt_s[d.ri] + wait + server) * 1000.0
        if wait == 0.0 and self.folds and self.hook is None:
            # Nothing at the first token depends on its time (integer counts only): one event at the end.
            heappush(heap, (first + completion * d.token_s, seq, SERVED, d, d.epoch, first, ctx, ttft_ms))
            return
        # What the gateway learns from (the server's part, network taken out), the prompt and the queue.
        sample_ms = (wait + server) * 1000.0
        heappush(heap, (first, seq, FIRST, d, d.epoch, ctx, ttft_ms, sample_ms, prompt, queued, wait, tag))
        heappush(heap, (first + completion * d.token_s, seq, DONE, d, d.epoch, first))

    # --- events --------------------------------------------------------------------------------------
    def _handle(self, ev: tuple[Any, ...]) -> None:
        kind = ev[2]
        if kind in (SERVED, DONE):  # the most common: a baseline's request ends
            t, d, epoch, first = ev[0], ev[3], ev[4], ev[5]
            if kind == SERVED:  # the first token's event folded into this one (``_start``)
                # Served unless an outage began before the first token (then the first token's event
                # would have come after the outage's: it was pushed later, so at the same time too).
                if epoch == d.epoch or d.epoch_ends[epoch] > first:
                    self._served(d, ev[6], ev[7], 0.0)
                else:
                    self.stats.failed[ev[6].cell] += 1
            if epoch != d.epoch:
                if first <= d.epoch_ends[epoch]:
                    self.stats.interrupted += 1
                return
            dt = t - d.last
            d.busy += (d.running if d.running < d.slots else d.slots) * dt
            if not d.outages:
                d.cap += d.slots * dt
            d.last = t
            d.running -= 1
            d.in_use -= 1
            d.state = None
            self.snaps[d.mi] = None
            if d.waiting and d.running < d.slots:
                arrived, ctx, prompt, completion, queued, tag = d.waiting.popleft()
                self._start(d, t, arrived, ctx, prompt, completion, queued, tag)
        elif kind == FIRST:
            t, _, _, d, epoch, ctx, ttft_ms, sample_ms, prompt, queued, wait, tag = ev
            st = self.stats
            if epoch != d.epoch:
                st.failed[ctx.cell] += 1
                return
            if self.hook is not None:
                self.hook.first(t, d, ctx, tag, ttft_ms, wait)
            if self.learns:  # a baseline's snapshot shows nothing a first token changes
                d.ttft.add(sample_ms, t, None, prompt, queued)
                self.typical[d.mi] = None
                d.state = None
                self.snaps[d.mi] = None
            self._served(d, ctx, ttft_ms, wait)
        elif kind == TICK:
            b = ev[5]
            self._tick(ev[0], b)
            if b + 1 < self.n_buckets:
                heappush(self.heap, ((b + 2) * self.bucket_s, next(self.seq), TICK, None, 0, b + 1))
        else:
            self._event(ev[0], ev[5], kind == EV_START)

    def _served(self, d: Dep, ctx: Context, ttft_ms: float, wait: float) -> None:
        st = self.stats
        st.served[ctx.cell] += 1
        i = int(_log(ttft_ms) * HIST_PER_E - HIST_OFFSET) if ttft_ms > 0.1 else 0
        st.hist[ctx.cell][i if i < HIST_BINS else HIST_BINS - 1] += 1
        st.wait_n[d.ri] += 1
        if wait > 0.0:
            st.wait_sum_s[d.ri] += wait
            st.waited[d.ri] += 1

    def _tick(self, now: float, bucket: int) -> None:
        busy, cap = self.stats.busy_s[bucket], self.stats.cap_s[bucket]
        for d in self.deps:
            d.touch(now)
            busy[d.ri] += d.busy
            cap[d.ri] += d.cap
            d.busy = d.cap = 0.0

    def _event(self, now: float, ev: SimEvent, starting: bool) -> None:
        for d in self.deps:
            if d.region != ev.region or ev.model not in ("*", d.model):
                continue
            d.touch(now)
            if ev.kind == "outage":
                if starting:
                    d.outages += 1
                    if d.outages == 1:
                        self._lose_everything(d, now)
                else:
                    d.outages -= 1
                d.backends = d.down_backends if d.outages else d.up_backends
                d.up = not d.outages and bool(d.spec.backend_ids)
            else:
                if starting:
                    d.factors.append(ev.factor)
                else:
                    d.factors.remove(ev.factor)
                d.resize()
                while d.waiting and d.running < d.slots:
                    arrived, ctx, prompt, completion, queued, tag = d.waiting.popleft()
                    self._start(d, now, arrived, ctx, prompt, completion, queued, tag)
            self._changed(d)

    def _lose_everything(self, d: Dep, now: float) -> None:
        """A region goes dark: queued requests fail now, running ones are lost with the old epoch."""
        for _, ctx, _, _, _, _ in d.waiting:
            self.stats.failed[ctx.cell] += 1
        d.waiting.clear()
        d.epoch_ends.append(now)
        d.epoch += 1
        d.running = 0
        d.in_use = 0

    def finish(self) -> None:
        """Run every remaining event: requests in flight at the end of the day complete."""
        heap = self.heap
        while heap:
            self._handle(heappop(heap))
