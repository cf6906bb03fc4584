"""The gateway: carries out the policy's plan. Shared by every protocol adapter (REST, gRPC), which hand it
an ``Inbound`` and get a ``Routed`` back (``pipeline.exchange``).

policy -> for each candidate region: capacity lease -> for each backend: upstream call -> first byte.
A failure before the first byte moves on to the next backend, then the next region; after the first
byte has been handed to the client nothing is retried. The lease is released exactly once: when a
non-streaming answer has been read, or when a stream ends, fails or its client goes away. From its first
byte on a stream is a ``pipeline.hops.HopStream``; when a hop breaks, ``Gateway._continue`` walks the
plan again for the hop that continues it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from regiongate.core import (
    Affinity,
    EndpointKind,
    Plan,
    RouteError,
    decide,
    scope,
)
from regiongate.core.errors import GatewayError, UpstreamError
from regiongate.core.labels import Route
from regiongate.core.latency import prompt_tokens_estimate
from regiongate.core.request import new_route_request
from regiongate.core.tiers import held_back
from regiongate.health.metrics import Metrics
from regiongate.pipeline import hedge, tokens
from regiongate.pipeline.affinity import prefix_key
from regiongate.pipeline.attempt import Attempt, Opened
from regiongate.pipeline.blame import Blame, exhausted
from regiongate.pipeline.continuation import (
    Hop,
    chat_prefill,
    prefill_payload,
    refusal,
)
from regiongate.pipeline.exchange import Hook, Inbound, Routed, Tracer
from regiongate.pipeline.hops import HopStream
from regiongate.pipeline.responses_chat import chat_request, translate_response
from regiongate.pipeline.sse import SseRelay, stream_kind
from regiongate.pipeline.tiering import (
    STAMPED_PATHS,
    TIER_HEADER,
    event_stamper,
    stamp,
    stamp_events,
    tier_of,
)
from regiongate.pipeline.usage import UsageSink, new_usage_record
from regiongate.state.affinity import AffinityStore
from regiongate.state.capacity import Lease
from regiongate.state.fleet import Backend, Deployment, Fleet
from regiongate.state.ttft import EXPLAIN_HEADER, explain_header
from regiongate.upstream.base import UpstreamCall, UpstreamFailure, UpstreamResponse, next_chunk

log = logging.getLogger("regiongate.gateway")


def _json_object(resp: UpstreamResponse) -> dict[str, Any] | None:
    if resp.parsed is not None:
        return resp.parsed
    try:
        loaded = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        return None
    return loaded if isinstance(loaded, dict) else None


FULL = ": full"  # a walk's failure line for a region whose lease was refused


def _only_full(failures: list[str]) -> bool:
    """Nothing failed on the walk: every region tried was full (its lease refused)."""
    return all(f.endswith(FULL) for f in failures)


def _only_backend(plan: Plan) -> bool:
    cands = plan.candidates
    return len(cands) == 1 and len(cands[0].backends) == 1


@dataclass(slots=True)
class _Note:
    """Records what a failure before the first byte says (the walk's failures, the backend's health)."""

    gateway: Gateway
    fleet: Fleet
    region: str
    backend: Backend
    failures: list[str]
    blame: Blame | None
    failed: set[str] | None

    def __call__(self, e: Exception) -> None:
        if not isinstance(e, UpstreamFailure):
            raise e
        self.failures.append(f"{self.region}/{e}")
        self.gateway._failed(self.fleet, self.region, self.backend, e, self.blame)
        if self.failed is not None:
            self.failed.add(self.backend.id)


class Gateway:
    def __init__(
        self,
        fleet: Fleet | Callable[[], Fleet],
        usage: UsageSink,
        metrics: Metrics,
        hooks: list[Hook] | None = None,
    ) -> None:
        # The fleet in force, read per request: a running gateway passes the reader of its one ``Live``
        # reference (pipeline.services), which a reload swaps; a test may pass a fleet.
        self._fleet = fleet if callable(fleet) else lambda: fleet
        self.usage = usage
        self.metrics = metrics
        self.hooks: list[Hook] = list(hooks or [])
        self._rng = random.Random()
        self.tracing: Tracer | None = None  # spans around leases and attempts
        self.affinity: AffinityStore | None = None  # where prompt prefixes were served ([affinity])
        self.hedging: hedge.HedgePolicy | None = None  # [hedging]; None: off

    @property
    def fleet(self) -> Fleet:
        return self._fleet()

    def plan(self, inbound: Inbound, fleet: Fleet | None = None) -> Plan | RouteError:
        request = new_route_request(  # RouteRequest, without the frozen per-field cost (core.frozen)
            inbound.model,
            inbound.endpoint,
            inbound.client_location,
            inbound.principal.access,
            prompt_tokens_estimate(len(inbound.body)),
            self._rng.getrandbits(32),  # the policy's tie-breaks: its own generator, never a global one
            inbound.tier,
            inbound.affinity,
        )
        return decide((fleet or self.fleet).snapshot_for(inbound.model), request, explain=inbound.explain)

    async def dispatch(self, inbound: Inbound) -> Routed:
        started = time.monotonic()
        inbound.tier = tier_of(inbound.payload, inbound.principal.access, inbound.path)  # 400 / 403 before any work
        key = inbound.principal
        if not key.continuation:  # the key's stream settings: either side may only tighten
            inbound.continuation = False
        if not inbound.continuation:  # one generation at a time: neither continued nor hedged
            inbound.hedge = False
        if key.ttft_budget_ms is not None:
            asked = inbound.ttft_budget_ms
            inbound.ttft_budget_ms = key.ttft_budget_ms if asked is None else min(asked, key.ttft_budget_ms)
        if self.affinity is not None:
            pkey = prefix_key(
                inbound.path, inbound.payload, inbound.principal.team, inbound.model, inbound.conversation
            )
            if pkey is not None:
                inbound.prefix_key = pkey[0]
                if pkey[1]:  # a later turn (or an explicit key): its prefix may be held somewhere
                    inbound.affinity = await self.affinity.get(pkey[0])
        for hook in self.hooks:
            try:
                await hook.before(inbound)
            except RouteError as e:
                self.metrics.refused(e.code, e.type)
                raise
        try:
            routed = await self._dispatch(inbound, started)
        except RouteError:
            rider, inbound.rider = inbound.rider, None
            if rider is not None:  # refused before any lease was taken: the rider's work is done alone
                await rider.alone()
                if rider.refusal is not None:
                    self.metrics.refused(rider.refusal.code, rider.refusal.type)
                    raise rider.refusal from None
            raise
        if inbound.explain and routed.plan is not None:  # rendered only when asked: off the hot path
            routed.headers.append((EXPLAIN_HEADER, explain_header(routed.plan)))
        routed.headers.append((TIER_HEADER, inbound.tier))
        if routed.chunks is not None:  # a whole answer is stamped by _complete
            stamper = event_stamper(inbound.path, inbound.tier, "service_tier" in inbound.payload)
            if stamper is not None:
                routed.chunks = stamp_events(routed.chunks, stamper)
        for hook in self.hooks:
            hook.after(inbound, routed)
        if routed.ready is not None:
            try:
                await routed.ready
            except BaseException:  # cancelled while its receipt was being signed: free the lease
                await routed.aclose()
                raise
        return routed

    async def _dispatch(self, inbound: Inbound, started: float) -> Routed:
        fleet = self.fleet  # one fleet for the whole request, even when a reload swaps it meanwhile
        plan = self.plan(inbound, fleet)
        refusal = None
        if isinstance(plan, RouteError):
            if not isinstance(plan.plan, Plan):
                self._record(inbound, "", Route.NONE, plan.status, None, None, started)
                raise plan
            # every region looked full by this replica's lease counts: their leases decide (core.policy)
            refusal, plan = plan, plan.plan
        failures: list[str] = []
        blame = Blame()
        failed: set[str] = set()
        opened = await self._walk(fleet, inbound, plan, failures, started, blame=blame, failed=failed)
        blame.settle(fleet, opened is not None and opened.status < 400, inbound.request_id)
        if opened is None:
            if refusal is not None and blame.last is None and _only_full(failures):
                self._record(inbound, "", Route.NONE, refusal.status, None, None, started)
                raise refusal  # every lease said full too: the policy's own refusal
            raise self._exhausted(inbound, plan, failures, started, blame.last)
        if inbound.prefix_key is not None and opened.status == 200 and self.affinity is not None:
            # that backend now holds this prompt in its cache: the next turn's prefix
            a = opened.attempt
            held = Affinity(a.deployment.region, a.backend.id, prompt_tokens_estimate(len(inbound.body)))
            self.affinity.put(inbound.prefix_key, held)
        if opened.first is None:  # a whole answer (or a final refusal): relayed as it is
            routed = self._complete(opened.attempt, opened.resp)
        else:  # the stream now owns the lease
            routed = self._stream(fleet, opened, failed)
        routed.plan = plan
        if opened.hedge is not None:
            routed.headers.append((hedge.HEDGE_HEADER, opened.hedge))
        return routed

    async def _walk(
        self,
        fleet: Fleet,
        inbound: Inbound,
        plan: Plan,
        failures: list[str],
        started: float,
        payload_for: Callable[[Backend], dict[str, Any] | None] | None = None,
        skip: frozenset[str] = frozenset(),
        blame: Blame | None = None,
        continues: str | None = None,
        failed: set[str] | None = None,
        hedges: bool = True,
    ) -> Opened | None:
        """Walk the plan until a backend answers: the first byte of a stream, or a whole answer. What
        failed is appended to ``failures``. ``payload_for`` replaces the request's body per backend (a
        continuation of a hop broken by ``continues``; None: that backend cannot take it), ``skip`` names
        backends not to try, the ids of those that failed are added to ``failed``; ``blame`` holds the 5xx
        answers to judge by the outcome (``pipeline.blame``; None: they count at once). ``hedges``: a slow
        first byte may be hedged with the rest of this walk (``pipeline.hedge``), once."""
        moved = bool(failures) or continues is not None  # a continuation moved because a hop broke
        hedges = hedges and self.hedging is not None and inbound.stream and inbound.hedge and payload_for is None
        tried: set[str] = set(skip)
        capacity = fleet.capacity
        tracing = self.tracing
        for ci, cand in enumerate(plan):  # later candidates are worked out only if the earlier ones fail
            if all(bid in skip for bid in cand.backends):
                continue
            dep = fleet.deployments[(inbound.model, cand.region)]
            # The tier's share of the limit: the policy saw the same (core.tiers), the lease enforces it.
            limit = dep.limit - held_back(dep.limit, inbound.tier, dep.priority_reserve, dep.flex_limit)
            rider, inbound.rider = inbound.rider, None  # the first lease carries it, once
            if tracing is None:
                lease = await capacity.acquire(dep.key, limit, rider)
            else:
                lease = await tracing.acquire(capacity, dep, limit, rider)
            if rider is not None and rider.refusal is not None:
                self.metrics.refused(rider.refusal.code, rider.refusal.type)
                raise rider.refusal
            if lease is None:  # taken between snapshot and acquire (another replica or request)
                failures.append(cand.region + FULL)
                continue
            owned = False
            try:
                for bi, bid in enumerate(cand.backends):
                    if bid in skip:
                        continue
                    tried.add(bid)
                    backend = fleet.backends[bid]
                    payload = inbound.payload if payload_for is None else payload_for(backend)
                    if payload is None:
                        failures.append(f"{cand.region}/{bid}: cannot continue a stream")
                        continue
                    call = self._call(inbound, backend, payload)
                    more = False
                    if inbound.stream:
                        more = bi < len(cand.backends) - 1 or plan.has_after(ci)
                        call.first_byte_s = self._first_byte_s(inbound, dep, backend, more)
                    opened = None
                    for again in (False, True):
                        # A global request that moved after a failure says so; regional and zone requests
                        # keep their label, which states where the data may be processed.
                        route = Route.FAILOVER if moved and cand.route in (Route.NEAREST, Route.SPILLOVER) else cand.route
                        try:
                            attempt = Attempt(
                                inbound, dep, backend, lease, route, started, dep.queue_depth, more, continues
                            )
                            trial = self._try(attempt, call)
                            if tracing is not None:
                                trial = tracing.attempt(trial, dep, backend.id, route, continues)
                            mark = None
                            if hedges and more and self.hedging is not None:
                                mark = self.hedging.mark_s(dep.first_byte, call.first_byte_s or 0.0)
                            if mark is None:
                                opened = await trial
                                break
                            note = _Note(self, fleet, cand.region, backend, failures, blame, failed)
                            raced = await self._hedged(trial, mark, note, inbound, plan, started, frozenset(tried), lease)
                            if not isinstance(raced, hedge.Raced):
                                opened = raced  # answered before the mark: as if never hedged
                                break
                            opened = raced.answer
                            if opened is not None:
                                opened.hedge = raced.outcome
                            owned = opened is not None and opened.first is not None and opened.attempt.lease is lease
                            self.metrics.hedge(cand.region, raced.outcome)
                            return opened  # the hedge walked the rest of the plan: nothing is left to try
                        except UpstreamFailure as e:
                            moved = True
                            _Note(self, fleet, cand.region, backend, failures, blame, failed)(e)
                            # A transient failure is tried once more on the same backend when the request
                            # may use no other (a regional endpoint with one backend): never more.
                            if again or not e.transient or not _only_backend(plan):
                                break
                    if opened is None:
                        continue
                    if opened.first is None and payload_for is not None:  # it refused the continuation
                        failures.append(f"{cand.region}/{bid}: refused to continue (HTTP {opened.resp.status})")
                        backend.in_flight -= 1
                        continue
                    owned = opened.first is not None
                    return opened
            finally:
                if not owned:
                    await capacity.release(lease)
        return None

    async def _hedged(
        self,
        trial: Awaitable[Opened],
        mark_s: float,
        note: _Note,
        inbound: Inbound,
        plan: Plan,
        started: float,
        tried: frozenset[str],
        lease: Lease,
    ) -> Opened | hedge.Raced[Opened]:
        """``trial`` hedged after ``mark_s`` with the rest of the plan (the backends in ``tried`` skipped;
        that walk does not hedge again); ``note`` records a failure of the trial. ``lease`` is the trial's,
        freed by its walk."""
        fleet = note.fleet

        async def rest() -> Opened | None:
            return await self._walk(
                fleet, inbound, plan, note.failures, started, None, tried, note.blame, None, note.failed, hedges=False
            )

        async def discard(loser: Opened) -> None:  # an answer that came second: closed, its lease freed
            loser.attempt.backend.in_flight -= 1
            await loser.resp.aclose()
            if loser.first is not None and loser.attempt.lease is not lease:
                await fleet.capacity.release(loser.attempt.lease)

        raced = await hedge.race(trial, mark_s, rest, note, discard)
        won = raced.answer if isinstance(raced, hedge.Raced) and raced.outcome is hedge.Outcome.WON else None
        if won is not None:  # the usage record's hops name the attempt it cancelled
            won.why = f"hedge: {note.region} {note.backend.id} had no first byte after {mark_s:.2f}s"
            if won.attempt.route in (Route.NEAREST, Route.SPILLOVER):
                won.attempt.route = Route.FAILOVER  # it left the first choice, as a failover does
        return raced

    @staticmethod
    def _first_byte_s(inbound: Inbound, dep: Deployment, backend: Backend, more: bool) -> float:
        """How long this stream waits for ``backend``'s first byte (``regiongate.state.first_byte``): the
        learned budget while another candidate is left (``more``), else the ceiling; never more than the
        caller's own budget."""
        up = backend.upstream
        ceiling = up.first_byte_timeout_s
        budget = dep.first_byte.budget_s(ceiling, up.first_byte_floor_s, up.first_byte_factor) if more else ceiling
        if inbound.ttft_budget_ms is not None:
            budget = min(budget, inbound.ttft_budget_ms / 1000.0)
        return budget

    def _failed(
        self, fleet: Fleet, region: str, backend: Backend, e: UpstreamFailure, blame: Blame | None = None
    ) -> None:
        """What a failure before the first byte says about the backend."""
        self.metrics.upstream_failure(region, backend.id)
        if e.status == 429:  # busy, not unhealthy: a pause it asked for is honoured, else just move on
            backend.outlier.abandon()
            if e.busy_s is not None:
                fleet.record_busy(backend, e.busy_s)
        elif blame is not None and blame.defer(backend, e):
            pass  # judged when the request's outcome is known
        elif fleet.record_failure(backend):
            log.warning("backend ejected", extra={"backend": backend.id, "reason": e.reason})

    def _exhausted(
        self,
        inbound: Inbound,
        plan: Plan,
        failures: list[str],
        started: float,
        last: UpstreamFailure | None = None,
    ) -> RouteError:
        if last is not None:  # a backend answered 5xx: its status and words, with where it was tried
            err = exhausted(last, failures, self.fleet.retry_after_s)
            self._record(inbound, "", Route.NONE, err.status, None, None, started)
            return err
        regions = [c.region for c in plan.candidates]
        tried = [self.fleet.backends[b] for c in plan.candidates for b in c.backends if b in self.fleet.backends]
        busy = self.fleet.busy_for(tried)  # the backends said when to come back: say it to the client
        retry = round(busy, 3) if busy is not None else self.fleet.retry_after_s
        if inbound.endpoint.kind is EndpointKind.REGION:
            err = RouteError.region_unavailable(
                f"Region {inbound.endpoint.name}",
                inbound.model,
                "no backend answered: " + "; ".join(failures),
                [r for r in self._could_serve(inbound) if r != inbound.endpoint.name],
                retry,
            )
        else:
            full = _only_full(failures)
            err = (GatewayError if full else UpstreamError)(
                f"No region could serve '{inbound.model}': tried {', '.join(regions)} ({'; '.join(failures)}). "
                f"Retry after {retry:g}s.",
                code="upstream_unavailable",
                type="upstream_error",
                retry_after=retry,
            )
        self._record(inbound, "", Route.NONE, err.status, None, None, started)
        return err

    def _could_serve(self, inbound: Inbound) -> list[str]:
        snap = self.fleet.snapshot_for(inbound.model)
        access = inbound.principal.access
        return [
            d.region
            for d in snap.by_model.get(inbound.model, ())
            if access.permits(inbound.model, d.region)
            and d.free > 0
            and d.has_healthy_backend
            and scope.in_fence(access, snap.regions[d.region].zone)  # a hint never points outside the fence
        ]

    def _call(self, inbound: Inbound, backend: Backend, payload: dict[str, Any]) -> UpstreamCall:
        body = inbound.body if payload is inbound.payload else orjson.dumps(payload)
        rename = backend.upstream_model is not None and backend.upstream_model != inbound.model
        if inbound.path == "/responses" and backend.responses_via_chat:
            chat = chat_request(payload)
            if payload is not inbound.payload:  # a continuation: its final assistant message is the prefill
                chat = chat_prefill(chat, backend.prefill)
            if rename:
                chat["model"] = backend.upstream_model
            return UpstreamCall("/chat/completions", orjson.dumps(chat), chat, inbound.stream, inbound.request_id)
        want_usage = inbound.stream and not inbound.include_usage
        if rename or want_usage:
            payload = dict(payload)
            if rename:
                payload["model"] = backend.upstream_model
            if want_usage:
                opts = payload.get("stream_options")
                payload["stream_options"] = {
                    **(opts if isinstance(opts, dict) else {}),
                    "include_usage": True,
                }
            body = orjson.dumps(payload)
        return UpstreamCall(inbound.path, body, payload, inbound.stream, inbound.request_id)

    async def _try(self, a: Attempt, call: UpstreamCall) -> Opened:
        backend = a.backend
        if self.tracing is not None:
            self.tracing.inject(call.headers)  # W3C traceparent: the backend joins the trace
        backend.in_flight += 1
        self.fleet.record_attempt(backend)  # after an ejection, this is its one trial
        sent = time.monotonic()
        resp: UpstreamResponse | None = None
        try:
            resp = await backend.upstream.send(call)
            if call.path != a.inbound.path:  # a translated Responses request: answer as the Responses API
                resp = translate_response(a.inbound.payload, resp)
            if resp.chunks is None:
                return Opened(a, resp, None, 0.0)
            budget = call.first_byte_s or backend.upstream.first_byte_timeout_s
            try:  # one budget from the send to the first byte, head included
                first = await next_chunk(resp.chunks, max(budget - (time.monotonic() - sent), 0.0))
            except TimeoutError:
                await resp.aclose()
                raise UpstreamFailure(backend.id, f"no first byte within {budget:g}s") from None
            except StopAsyncIteration:
                await resp.aclose()
                raise UpstreamFailure(backend.id, "stream ended before its first byte") from None
            except UpstreamFailure:
                await resp.aclose()
                raise
            except Exception as e:
                await resp.aclose()
                raise UpstreamFailure(
                    backend.id, f"stream failed before its first byte: {type(e).__name__}"
                ) from None
        except UpstreamFailure:
            backend.in_flight -= 1
            raise
        except BaseException:  # cancelled: the client left before the first byte, or a hedge won
            backend.in_flight -= 1
            backend.outlier.abandon()
            if resp is not None:
                await resp.aclose()
            raise
        ttft_ms = (time.monotonic() - sent) * 1000.0
        if self.tracing is not None:
            self.tracing.first_token(first, ttft_ms, a.continues is None)
        self.fleet.record_success(backend)
        prompt = prompt_tokens_estimate(len(a.inbound.body))
        aff = a.inbound.affinity
        if aff is not None and aff.backend == backend.id:  # it prefilled only the new suffix
            prompt -= aff.cached(prompt)
        self.fleet.record_ttft(a.deployment, ttft_ms, backend, prompt, a.queued)
        self.metrics.ttft(a.deployment.region, ttft_ms)
        return Opened(a, resp, first, ttft_ms)

    def _stream(self, fleet: Fleet, opened: Opened, failed: set[str]) -> Routed:
        a = opened.attempt
        relay = SseRelay(not a.inbound.include_usage, stream_kind(a.inbound.path))
        st = HopStream(fleet, opened, relay, self.metrics, self.tracing)
        st.failed = failed

        async def finish(status: int = 499) -> None:  # 499 unless the stream ran to its end
            if st.done:
                return
            st.done = True
            await st.close_hop()
            usage, ttft, relay = st.relay.usage, st.ttft_ms, st.relay
            if relay.deltas and not tokens.reported(usage) and a.inbound.path in tokens.COUNTED:
                usage = tokens.for_stream(a.inbound.payload, relay.deltas, relay.chars, usage)
            self._record(a.inbound, a.deployment.region, a.route, status, usage, ttft, a.started, st.hops)

        routed = Routed(200, "text/event-stream", a.deployment.region, a.route, a.backend.id, hops=st.hops)
        routed.chunks, routed.finish = st.events(self._continue, finish, routed), finish
        return routed

    def _complete(self, a: Attempt, resp: UpstreamResponse) -> Routed:
        a.backend.in_flight -= 1
        self.fleet.record_success(a.backend)
        usage = None
        if resp.status == 200 and b'"usage"' in resp.body:
            parsed = _json_object(resp)
            usage = parsed.get("usage") if parsed is not None else None
        if resp.status == 200 and not tokens.reported(usage) and a.inbound.path in tokens.COUNTED:
            usage = tokens.for_answer(a.inbound.payload, _json_object(resp), usage)
        self._record(a.inbound, a.deployment.region, a.route, resp.status, usage, None, a.started)
        body = resp.body
        if resp.status == 200 and a.inbound.path in STAMPED_PATHS:  # the tier it ran at, in the answer
            body = stamp(body, a.inbound.tier, a.inbound.path, resp.parsed)
        return Routed(resp.status, resp.content_type, a.deployment.region, a.route, a.backend.id, body=body)

    async def _continue(self, st: HopStream) -> Opened | None:
        """The next backend in scope that continues the answer from what was delivered, or None."""
        inbound, relay = st.attempt.inbound, st.relay
        if self.fleet.record_failure(st.attempt.backend):
            log.warning("backend ejected", extra={"backend": st.attempt.backend.id, "reason": st.failure})
        why_not = refusal(inbound.payload, relay.kind, relay, not inbound.continuation)
        if why_not is not None:
            return None
        plan = self.plan(inbound, st.fleet)  # re-planned: health changed, the scope did not
        if isinstance(plan, RouteError):
            return None
        delivered, tokens = relay.delivered, relay.tokens

        def payload_for(backend: Backend) -> dict[str, Any] | None:
            return prefill_payload(inbound.payload, delivered, backend.prefill, tokens, relay.kind)

        failures: list[str] = []
        skip = frozenset(h.backend for h in st.hops) | st.failed  # neither a broken hop nor a refusal again
        started = st.attempt.started
        opened = await self._walk(
            st.fleet, inbound, plan, failures, started, payload_for, skip, continues=st.failure, failed=st.failed
        )
        if opened is None and failures:
            log.info("stream not continued", extra={"request_id": inbound.request_id, "tried": failures})
        return opened

    def _record(
        self,
        inbound: Inbound,
        region: str,
        route: Route,
        status: int,
        usage: dict[str, Any] | None,
        ttft_ms: float | None,
        started: float,
        hops: list[Hop] | None = None,
    ) -> None:
        prompt = completion = 0
        if usage:  # chat completions' names, else the Responses API's
            p = usage.get("prompt_tokens", usage.get("input_tokens"))
            c = usage.get("completion_tokens", usage.get("output_tokens"))
            prompt = p if isinstance(p, int) else 0
            completion = c if isinstance(c, int) else 0
        now = time.monotonic()
        self.metrics.request(inbound.model, region, route, status, inbound.tier)
        record = new_usage_record(  # a UsageRecord (core.frozen's twin constructor)
            request_id=inbound.request_id,
            team=inbound.principal.team,
            key_id=inbound.principal.key_id,
            model=inbound.model,
            endpoint=str(inbound.endpoint),
            region=region,
            route=route,
            status=status,
            prompt_tokens=prompt,
            completion_tokens=completion,
            ttft_ms=ttft_ms,
            total_ms=(now - started) * 1000.0,
            at=time.time(),
            hops=tuple(h.render() for h in hops) if hops else (),
            tier=inbound.tier,
            estimated=bool(usage and usage.get("estimated")),
        )
        if record.estimated:
            self.metrics.usage_estimated(region)
        self.usage.record(record)
        for hook in self.hooks:
            hook.settled(inbound, record)
