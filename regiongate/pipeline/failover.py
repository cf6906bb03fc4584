"""The gateway: carries out the policy's plan. Shared by every protocol adapter (REST, gRPC).

policy -> for each candidate region: capacity lease -> for each backend: upstream call -> first byte.
A failure before the first byte moves on to the next backend, then the next region; after the first
byte has been handed to the client nothing is retried. The lease is released exactly once: when a
non-streaming answer has been read, or when a stream ends, fails or its client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from regiongate.core import Endpoint, EndpointKind, Location, Plan, RouteError, RouteRequest, decide, scope
from regiongate.core.errors import GatewayError, UpstreamError
from regiongate.core.labels import Route
from regiongate.core.latency import prompt_tokens_estimate
from regiongate.health.metrics import Metrics
from regiongate.pipeline.auth import Principal
from regiongate.pipeline.sse import SseRelay, event
from regiongate.pipeline.usage import UsageRecord, UsageSink
from regiongate.state.capacity import CapacityStore, Lease
from regiongate.state.fleet import Backend, Deployment, Fleet
from regiongate.state.ttft import EXPLAIN_HEADER, explain_header
from regiongate.upstream.base import UpstreamCall, UpstreamFailure, UpstreamResponse

log = logging.getLogger("regiongate.gateway")


@dataclass(slots=True)
class Inbound:
    """One request as every front adapter hands it to the gateway."""

    path: str  # below /v1
    payload: dict[str, Any]
    body: bytes
    model: str
    stream: bool
    endpoint: Endpoint
    principal: Principal
    request_id: str
    client_location: Location | None = None
    explain: bool = False  # the caller asked for the x-regiongate-explain response header

    @property
    def include_usage(self) -> bool:
        opts = self.payload.get("stream_options")
        return isinstance(opts, dict) and opts.get("include_usage") is True


@dataclass(slots=True)
class Routed:
    status: int
    content_type: str
    region: str
    route: Route
    backend: str
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None  # for streams
    headers: list[tuple[str, str]] = field(default_factory=list)  # extra response headers / gRPC metadata
    finish: Callable[[], Awaitable[None]] | None = None
    plan: Plan | None = None  # the policy's plan this request followed (for the explain header)

    async def aclose(self) -> None:
        """Free the stream's lease and upstream connection, whether or not it was ever iterated."""
        if self.chunks is not None:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        if self.finish is not None:
            await self.finish()


@dataclass(slots=True)
class _Attempt:
    inbound: Inbound
    deployment: Deployment
    backend: Backend
    lease: Lease
    route: Route
    started: float
    queued: int = 0  # the deployment's queue depth when the request was sent


class Hook(Protocol):
    """Cross-cutting steps around every routed request (rate limits, receipts, ...), shared by all
    protocol adapters. ``before`` may refuse with a RouteError; ``after`` may add response headers;
    ``settled`` sees the final usage record (after a stream ends)."""

    async def before(self, inbound: Inbound) -> None: ...

    def after(self, inbound: Inbound, routed: Routed) -> None: ...

    def settled(self, inbound: Inbound, record: UsageRecord) -> None: ...


class Tracer(Protocol):
    """What the gateway asks of tracing (``[tracing]``, pipeline/tracing.py); the gateway holds None when it
    is off, so an untraced request pays one ``is None`` check per step."""

    async def acquire(self, capacity: CapacityStore, dep: Deployment) -> Lease | None: ...

    async def attempt(
        self, tried: Awaitable[Routed], dep: Deployment, backend: str, route: str
    ) -> Routed: ...

    def inject(self, headers: list[tuple[str, str]]) -> None: ...

    def first_token(self, first: bytes, ttft_ms: float) -> None: ...


class Gateway:
    def __init__(
        self, fleet: Fleet, usage: UsageSink, metrics: Metrics, hooks: list[Hook] | None = None
    ) -> None:
        self.fleet = fleet
        self.usage = usage
        self.metrics = metrics
        self.hooks: list[Hook] = list(hooks or [])
        self._rng = random.Random()
        self.tracing: Tracer | None = None  # spans around leases and attempts

    def plan(self, inbound: Inbound, fleet: Fleet | None = None) -> Plan | RouteError:
        request = RouteRequest(
            inbound.model,
            inbound.endpoint,
            inbound.client_location,
            inbound.principal.access,
            prompt_tokens_estimate(len(inbound.body)),
            self._rng.getrandbits(32),  # the policy's tie-breaks: its own generator, never a global one
        )
        return decide((fleet or self.fleet).snapshot_for(inbound.model), request, explain=inbound.explain)

    async def dispatch(self, inbound: Inbound) -> Routed:
        started = time.monotonic()
        for hook in self.hooks:
            try:
                await hook.before(inbound)
            except RouteError as e:
                self.metrics.refused(e.code, e.type)
                raise
        routed = await self._dispatch(inbound, started)
        if inbound.explain and routed.plan is not None:  # rendered only when asked: off the hot path
            routed.headers.append((EXPLAIN_HEADER, explain_header(routed.plan)))
        for hook in self.hooks:
            hook.after(inbound, routed)
        return routed

    async def _dispatch(self, inbound: Inbound, started: float) -> Routed:
        fleet = self.fleet  # one fleet for the whole request, even when a reload swaps it meanwhile
        plan = self.plan(inbound, fleet)
        if isinstance(plan, RouteError):
            self._record(inbound, "", Route.NONE, plan.status, None, None, started)
            raise plan
        failures: list[str] = []
        moved = False
        capacity = fleet.capacity
        tracing = self.tracing
        for cand in plan:  # later candidates are worked out only if the earlier ones fail
            dep = fleet.deployments[(inbound.model, cand.region)]
            if tracing is None:
                lease = await capacity.acquire(dep.key, dep.limit)
            else:
                lease = await tracing.acquire(capacity, dep)
            if lease is None:  # taken between snapshot and acquire (another replica or request)
                failures.append(f"{cand.region}: full")
                continue
            owned = False
            try:
                for bid in cand.backends:
                    backend = fleet.backends[bid]
                    # A global request that moved after a failure says so; regional and zone requests keep
                    # their label, which states where the data may be processed.
                    route = Route.FAILOVER if moved and cand.route in (Route.NEAREST, Route.SPILLOVER) else cand.route
                    attempt = _Attempt(inbound, dep, backend, lease, route, started, dep.queue_depth)
                    try:
                        if tracing is None:
                            routed = await self._try(attempt)
                        else:
                            routed = await tracing.attempt(self._try(attempt), dep, backend.id, route)
                    except UpstreamFailure as e:
                        failures.append(f"{cand.region}/{e}")
                        moved = True
                        self.metrics.upstream_failure(cand.region, backend.id)
                        if fleet.record_failure(backend):
                            log.warning("backend ejected", extra={"backend": backend.id, "reason": e.reason})
                        continue
                    owned = routed.chunks is not None  # the stream now owns the lease
                    routed.plan = plan
                    return routed
            finally:
                if not owned:
                    await capacity.release(lease)
        raise self._exhausted(inbound, plan, failures, started)

    def _exhausted(self, inbound: Inbound, plan: Plan, failures: list[str], started: float) -> RouteError:
        regions = [c.region for c in plan.candidates]
        retry = self.fleet.retry_after_s
        if inbound.endpoint.kind is EndpointKind.REGION:
            err = RouteError.region_unavailable(
                f"Region {inbound.endpoint.name}",
                inbound.model,
                "no backend answered: " + "; ".join(failures),
                [r for r in self._could_serve(inbound) if r != inbound.endpoint.name],
                retry,
            )
        else:
            full = all(f.endswith(": full") for f in failures)  # nothing failed: every region filled up
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

    def _call(self, inbound: Inbound, backend: Backend) -> UpstreamCall:
        payload, body = inbound.payload, inbound.body
        rename = backend.upstream_model is not None and backend.upstream_model != inbound.model
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

    async def _try(self, a: _Attempt) -> Routed:
        backend, inbound = a.backend, a.inbound
        call = self._call(inbound, backend)
        if self.tracing is not None:
            self.tracing.inject(call.headers)  # W3C traceparent: the backend joins the trace
        backend.in_flight += 1
        sent = time.monotonic()
        try:
            resp = await backend.upstream.send(call)
            if resp.chunks is None:
                return self._complete(a, resp)
            try:
                async with asyncio.timeout(backend.upstream.first_byte_timeout_s):
                    first = await anext(resp.chunks)
            except TimeoutError:
                await resp.aclose()
                raise UpstreamFailure(
                    backend.id, f"no first byte within {backend.upstream.first_byte_timeout_s:g}s"
                ) from None
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
        except BaseException:
            backend.in_flight -= 1
            raise
        ttft_ms = (time.monotonic() - sent) * 1000.0
        if self.tracing is not None:
            self.tracing.first_token(first, ttft_ms)
        self.fleet.record_success(backend)
        self.fleet.record_ttft(
            a.deployment, ttft_ms, backend, prompt_tokens_estimate(len(inbound.body)), a.queued
        )
        self.metrics.ttft(a.deployment.region, ttft_ms)
        relay = SseRelay(strip_usage=not a.inbound.include_usage)
        done = False

        async def finish(status: int = 499) -> None:  # 499 unless the stream ran to its end
            nonlocal done
            if done:
                return
            done = True
            backend.in_flight -= 1
            await resp.aclose()
            await self.fleet.capacity.release(a.lease)
            self._record(a.inbound, a.deployment.region, a.route, status, relay.usage, ttft_ms, a.started)

        chunks = self._relay(a, resp, relay, first, finish)
        return Routed(
            200, "text/event-stream", a.deployment.region, a.route, backend.id, chunks=chunks, finish=finish
        )

    def _complete(self, a: _Attempt, resp: UpstreamResponse) -> Routed:
        a.backend.in_flight -= 1
        self.fleet.record_success(a.backend)
        usage = None
        if resp.status == 200 and b'"usage"' in resp.body:
            parsed = resp.parsed
            if parsed is None:
                try:
                    loaded = orjson.loads(resp.body)
                except orjson.JSONDecodeError:
                    loaded = None
                parsed = loaded if isinstance(loaded, dict) else None
            usage = parsed.get("usage") if parsed is not None else None
        self._record(a.inbound, a.deployment.region, a.route, resp.status, usage, None, a.started)
        return Routed(
            resp.status, resp.content_type, a.deployment.region, a.route, a.backend.id, body=resp.body
        )

    async def _relay(
        self,
        a: _Attempt,
        resp: UpstreamResponse,
        relay: SseRelay,
        first: bytes,
        finish: Callable[[int], Awaitable[None]],
    ) -> AsyncIterator[bytes]:
        status = 499
        idle = a.backend.upstream.idle_timeout_s
        assert resp.chunks is not None
        try:
            out = relay.feed(first)
            if out:
                yield out
            while True:
                try:
                    async with asyncio.timeout(idle):
                        chunk = await anext(resp.chunks)
                except StopAsyncIteration:
                    break
                out = relay.feed(chunk)
                if out:
                    yield out
            rest = relay.flush()
            if rest:
                yield rest
            if not relay.done:  # the connection ended without [DONE]: the backend died mid-answer
                status = 502
                yield self._stream_error(a, f"the backend in {a.deployment.region} closed the stream early")
            else:
                status = 502 if relay.errored else 200
        except TimeoutError:
            status = 504
            yield self._stream_error(a, f"the backend in {a.deployment.region} went silent for {idle:g}s")
        except Exception as e:  # the backend broke mid-stream: tell the client in-band, never retry
            status = 502
            log.warning("stream broke", extra={"backend": a.backend.id, "error": type(e).__name__})
            yield self._stream_error(
                a, f"the backend in {a.deployment.region} failed mid-stream ({type(e).__name__})"
            )
        finally:
            await finish(status)

    @staticmethod
    def _stream_error(a: _Attempt, message: str) -> bytes:
        return (
            event(
                {
                    "error": {
                        "message": message + "; the response is incomplete.",
                        "type": "upstream_error",
                        "param": None,
                        "code": "stream_interrupted",
                    }
                }
            )
            + b"data: [DONE]\n\n"
        )

    def _record(
        self,
        inbound: Inbound,
        region: str,
        route: Route,
        status: int,
        usage: dict[str, Any] | None,
        ttft_ms: float | None,
        started: float,
    ) -> None:
        prompt = completion = 0
        if usage:
            p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
            prompt = p if isinstance(p, int) else 0
            completion = c if isinstance(c, int) else 0
        now = time.monotonic()
        self.metrics.request(inbound.model, region, route, status)
        record = UsageRecord(
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
        )
        self.usage.record(record)
        for hook in self.hooks:
            hook.settled(inbound, record)
