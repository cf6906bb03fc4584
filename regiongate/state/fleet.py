"""The live fleet: regions, deployments and backends with their measured state, and the snapshots of it
that the policy reads. Mutable state lives here and only here; the policy sees frozen copies."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from regiongate.core import BackendState, DeploymentState, Location, Region, WorldSnapshot
from regiongate.core.world import new_backend_state, new_deployment_state, new_snapshot
from regiongate.state.capacity import CapacityStore, deployment_key
from regiongate.state.first_byte import FirstByteBudget
from regiongate.state.outlier import Ewma, Outlier
from regiongate.state.ttft import TtftEstimate, Typical, typical
from regiongate.upstream.base import Upstream
from regiongate.upstream.dialect import Dialect

Fit = tuple[float | None, float | None, float | None]  # what ``typical`` reads of one estimate


@dataclass(slots=True)
class Backend:
    id: str
    upstream: Upstream
    upstream_model: str | None = None  # model name to send upstream, when it differs
    prefill: str = "vllm"  # how it continues a delivered assistant text (regiongate.pipeline.continuation)
    outlier: Outlier = field(default_factory=Outlier)
    in_flight: int = 0
    rtt: Ewma | None = None  # filled by active probes
    probe_healthy: bool = True  # False after failed active probes (regiongate.health.probes)
    busy_until: float = 0.0  # it answered 429 with Retry-After: not sent anything before then
    responses_via_chat: bool = False  # /v1/responses translated to chat completions (pipeline.responses_chat)
    dialect: Dialect = field(default_factory=Dialect)  # what its server accepts (regiongate.upstream.dialect)
    served_at: float = float("-inf")  # when a request to it last succeeded (fleet clock)

    def healthy(self, now: float) -> bool:
        return self.probe_healthy and not self.outlier.ejected(now) and now >= self.busy_until

    def state(self, now: float) -> BackendState:
        rtt = self.rtt.value if self.rtt is not None else None
        return new_backend_state(self.id, self.healthy(now), self.in_flight, rtt)

    def steady_until(self, now: float) -> float:
        """Until when (exclusive) ``healthy`` stays what it is at ``now`` if nothing else changes: the end of
        an ejection or of a Retry-After, whichever comes first."""
        until = self.outlier.steady_until(now)
        return min(until, self.busy_until) if now < self.busy_until else until


@dataclass(slots=True)
class Deployment:
    model: str
    region: str
    limit: int
    backends: list[Backend]
    ttft: TtftEstimate  # queueing + prefill, network round trip taken out (regiongate.state.ttft)
    key: str = ""
    queue_depth: int = 0
    reported_free: int | None = None
    first_byte: FirstByteBudget = field(default_factory=FirstByteBudget)  # observed TTFTs -> the budget
    priority_reserve: int = 0  # slots kept for priority requests (regiongate.core.tiers)
    flex_limit: int | None = None  # flex admitted only while fewer slots are in use
    built: Built | None = field(default=None, repr=False, compare=False)  # its last state (snapshot_for)

    def __post_init__(self) -> None:
        self.key = deployment_key(self.model, self.region)


def _backend_inputs(b: Backend) -> tuple[object, ...]:
    """What ``Backend.state`` reads of ``b``, but time."""
    rtt = b.rtt
    o = b.outlier
    return (b.in_flight, b.probe_healthy, rtt.value if rtt is not None else None, b.busy_until, o.ejected_until, o.trial)


@dataclass(slots=True)
class Built:
    """A deployment's state in the last snapshot, with what it was built from: every input ``Fleet._state``
    reads but time (``inputs``), the typical numbers it took, and the span of time (``since`` up to
    ``until``, exclusive) over which the same inputs give the same state (``steady_until``)."""

    state: DeploymentState
    inputs: tuple[object, ...] | None  # None: a state of one instant (its estimate relaxes with time)
    prior: Typical
    since: float
    until: float


class Fleet:
    def __init__(
        self,
        regions: Iterable[Region],
        deployments: Iterable[Deployment],
        gateway_location: Location,
        capacity: CapacityStore,
        clock: Callable[[], float],
        retry_after_s: float = 1.0,
    ) -> None:
        self.regions = {r.id: r for r in regions}
        self.deployments = {(d.model, d.region): d for d in deployments}
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self.clock = clock
        self.by_model: dict[str, list[Deployment]] = {}
        for d in self.deployments.values():
            self.by_model.setdefault(d.model, []).append(d)
        self.backends = {b.id: b for d in self.deployments.values() for b in d.backends}
        self._priors: dict[str, tuple[list[Fit], Typical]] = {}
        # Each model's last snapshot (``snapshot_for``) and the typical numbers its states were built on.
        self._snaps: dict[str, tuple[WorldSnapshot, Typical]] = {}
        # Static parts of every snapshot, computed once.
        self._base = WorldSnapshot.build(self.regions, {}, gateway_location, retry_after_s)

    def _state(self, d: Deployment, now: float, prior: Typical, in_use: int) -> DeploymentState:
        base, prefill, wait, error = d.ttft.params(now, prior)
        bs = d.backends
        return new_deployment_state(
            d.model,
            d.region,
            d.limit,
            in_use,
            (bs[0].state(now),) if len(bs) == 1 else tuple([b.state(now) for b in bs]),
            base,
            prefill,
            wait,
            error,
            d.queue_depth,
            d.reported_free,
            d.priority_reserve,
            d.flex_limit,
        )

    @staticmethod
    def _steady_until(d: Deployment, now: float) -> float:
        """Until when (exclusive) ``d``'s state at ``now`` stays the same if no input changes."""
        until = d.ttft.steady_until(now)
        if until > now:
            for b in d.backends:
                until = min(until, b.steady_until(now))
        return until

    def _prior(self, model: str, deps: list[Deployment]) -> Typical:
        """The model's typical numbers (``state.ttft.typical``: medians over its deployments), recomputed
        only when one of the fits they are taken from moved: a sample changes them, time does not."""
        fits: list[Fit] = [(d.ttft.base, d.ttft.slope, d.ttft.per_queued) for d in deps]
        kept = self._priors.get(model)
        if kept is not None and kept[0] == fits:
            return kept[1]
        prior = typical(d.ttft for d in deps)
        self._priors[model] = (fits, prior)
        return prior

    def _snapshot(self, deps: Iterable[Deployment]) -> WorldSnapshot:
        now = self.clock()
        by_model: dict[str, tuple[DeploymentState, ...]] = {}
        states: dict[tuple[str, str], DeploymentState] = {}
        grouped: dict[str, list[Deployment]] = {}
        for d in deps:
            grouped.setdefault(d.model, []).append(d)
        prior = typical(d.ttft for ds in grouped.values() for d in ds) if len(grouped) > 1 else None
        for model, ds in grouped.items():
            p = prior if prior is not None else self._prior(model, ds)
            t = by_model[model] = tuple([self._state(d, now, p, self.capacity.in_use(d.key)) for d in ds])
            for st in t:
                states[(model, st.region)] = st
        base = self._base
        return new_snapshot(
            base.regions,
            states,
            base.gateway_location,
            base.zones,
            by_model,
            base.gateway_rtt_ms,
            base.retry_after_s,
        )

    def snapshot_for(self, model: str) -> WorldSnapshot:
        """Only the deployments of ``model``: all that one routing decision reads, at a cost bounded by the
        number of regions, not the size of the catalogue.

        Equal to a snapshot built anew (``snapshot``), but a deployment keeps its last state while every
        input of it is the same as when that state was built (``Built``) and time has not left the span
        over which those inputs give the same state; when every deployment kept its state, the snapshot is
        the last one. Most deployments do not change between two requests, and comparing what a state is
        built from costs a fraction of building it: the inputs are read as fields, no method is called."""
        deps = self.by_model.get(model)
        if not deps:
            return self._snapshot(())
        now = self.clock()
        in_use = self.capacity.in_use
        snap: WorldSnapshot | None = None
        prior: Typical | None = None
        if model in self._snaps:
            snap, prior = self._snaps[model]
        while True:  # at most twice: again when a moved fit moved the model's typical numbers
            states: list[DeploymentState] = []
            same = snap is not None
            checked = False  # whether ``prior`` was checked against the fits in this pass
            for d in deps:
                t = d.ttft
                bs = d.backends
                held = in_use(d.key)
                k = d.built
                steady = k is not None and k.since <= now < k.until
                until: float | None = None  # worked out only for a state that is built
                if not steady:
                    until = self._steady_until(d, now)
                key = None
                if until is None or until > now:  # inputs only for a state that can be kept
                    backends: object = (
                        _backend_inputs(bs[0]) if len(bs) == 1 else tuple([_backend_inputs(b) for b in bs])
                    )
                    # Everything ``_state`` reads but time and the typical numbers (``_backend_inputs``).
                    key = (
                        (t, t.base, t.slope, t.per_queued, t.at, t.error),
                        held,
                        d.queue_depth,
                        d.reported_free,
                        d.limit,
                        d.priority_reserve,
                        d.flex_limit,
                        backends,
                    )
                    if steady and k is not None and k.prior is prior and k.inputs == key:
                        states.append(k.state)
                        continue
                fit_kept = k is not None and key is not None and k.inputs is not None and k.inputs[0] == key[0]
                if not checked and (prior is None or not fit_kept):  # a fit may have moved
                    checked = True
                    fresh = self._prior(model, deps)
                    if fresh is not prior:  # the states kept so far were built on other numbers
                        prior = fresh
                        break
                same = False
                if until is None:  # it was steady, but an input changed
                    until = self._steady_until(d, now)
                assert prior is not None  # checked above: set on the first state built
                st = self._state(d, now, prior, held)
                if k is None:
                    d.built = Built(st, key if until > now else None, prior, now, until)
                else:  # in place: cheaper than a new one
                    k.state, k.inputs, k.prior, k.since, k.until = st, key if until > now else None, prior, now, until
                states.append(st)
            else:
                break
        if same and snap is not None:
            return snap
        kept = tuple(states)
        base = self._base
        snap = new_snapshot(
            base.regions,
            {(model, st.region): st for st in kept},
            base.gateway_location,
            base.zones,
            {model: kept},
            base.gateway_rtt_ms,
            base.retry_after_s,
        )
        assert prior is not None
        self._snaps[model] = (snap, prior)
        return snap

    def snapshot(self) -> WorldSnapshot:
        return self._snapshot(self.deployments.values())

    def record_ttft(
        self, d: Deployment, ttft_ms: float, backend: Backend | None = None, prompt: int = 0, queued: int = 0
    ) -> None:
        """One observed TTFT of a request of ``prompt`` tokens sent when ``queued`` were waiting there."""
        rtt = backend.rtt.value if backend is not None and backend.rtt is not None else None
        d.ttft.add(ttft_ms, self.clock(), rtt, prompt, queued)
        d.first_byte.add(ttft_ms)

    def record_attempt(self, b: Backend) -> None:
        b.outlier.begin(self.clock())

    def record_busy(self, b: Backend, seconds: float) -> None:
        """The backend asked not to be sent anything for ``seconds`` (429 with Retry-After)."""
        b.busy_until = max(b.busy_until, self.clock() + seconds)

    def busy_for(self, backends: Iterable[Backend]) -> float | None:
        """The shortest time until one of ``backends`` that said it is busy takes requests again."""
        now = self.clock()
        waits = [b.busy_until - now for b in backends if b.busy_until > now]
        return min(waits) if waits else None

    def record_success(self, b: Backend) -> None:
        b.outlier.success()
        b.served_at = self.clock()

    def record_failure(self, b: Backend) -> bool:
        return b.outlier.failure(self.clock())

    async def aclose(self) -> None:
        for b in self.backends.values():
            await b.upstream.aclose()
