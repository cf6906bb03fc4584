"""One client stream over one or more hops: relays a backend's events to the client and, when a hop breaks
before the answer is complete, carries on on the next hop the gateway finds (``pipeline.continuation``
says whether and how; ``pipeline.failover`` walks the plan for it), else ends the stream with the
protocol's in-band error naming what broke. A stream that moved ends with its trailers (hops, receipt).

The stream owns the current hop's capacity lease and connection from the first byte on, and frees them
exactly once per hop.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from regiongate.health.metrics import Metrics
from regiongate.pipeline import tokens
from regiongate.pipeline.attempt import Opened
from regiongate.pipeline.continuation import HOPS_HEADER, Hop, may_continue, render_hops
from regiongate.pipeline.exchange import Routed, Tracer
from regiongate.pipeline.sse import DONE, SseRelay, StreamKind, error_event
from regiongate.state.fleet import Fleet
from regiongate.upstream.base import next_chunk

log = logging.getLogger("regiongate.gateway")


class HopStream:
    """The stream's state across hops: the current hop's attempt, response and relay, the hops so far."""

    def __init__(
        self, fleet: Fleet, opened: Opened, relay: SseRelay, metrics: Metrics, tracing: Tracer | None
    ) -> None:
        self.fleet = fleet
        self.metrics = metrics
        self.tracing = tracing
        self.attempt = opened.attempt
        self.resp = opened.resp
        self.first = opened.first or b""
        self.ttft_ms = opened.ttft_ms  # the client's
        self.hop_ttft_ms = opened.ttft_ms  # the current hop's
        self.relay = relay
        self.hops: list[Hop] = [Hop(opened.attempt.deployment.region, opened.attempt.backend.id, opened.why)]
        self.failure: str | None = None  # what broke the current hop
        self.failed: set[str] = set()  # backends that failed this request before their first byte
        self.fail_status = 502
        self.done = False
        self._open = True

    def fail(self, status: int, message: str) -> None:
        self.fail_status, self.failure = status, message

    async def close_hop(self) -> None:
        if not self._open:
            return
        self._open = False
        self.attempt.backend.in_flight -= 1
        await self.resp.aclose()
        await self.fleet.capacity.release(self.attempt.lease)

    def move(self, nxt: Opened) -> None:
        """Carry on on ``nxt`` (the previous hop closed): a relay that continues the previous one."""
        relay = SseRelay(self.relay.strip_usage, self.relay.kind)
        relay.continue_from(self.relay)
        self.hops.append(Hop(nxt.attempt.deployment.region, nxt.attempt.backend.id, self.failure or ""))
        self.attempt, self.resp, self.relay, self._open = nxt.attempt, nxt.resp, relay, True
        self.hop_ttft_ms = nxt.ttft_ms

    async def events(
        self,
        next_hop: Callable[[HopStream], Awaitable[Opened | None]],
        finish: Callable[[int], Awaitable[None]],
        routed: Routed,
    ) -> AsyncIterator[bytes]:
        """Relay hop after hop; ``next_hop`` finds where a broken hop continues (None: nowhere), ``finish``
        gets the stream's final status (499 unless it ran to its end or failed) once it is over."""
        status = 499
        first = self.first
        try:
            while True:
                async for out in self._segment(first):
                    yield out
                relay = self.relay
                if self.failure is None:
                    if len(self.hops) > 1:
                        yield self._trailers(routed)
                    if relay.kind is StreamKind.CHAT:
                        owed = self._owed_usage()
                        if owed:
                            yield owed
                        yield DONE  # held back by the relay: also ends a stream that had no [DONE]
                    status = 502 if relay.errored else 200
                    break
                status = self.fail_status
                nxt = await next_hop(self)
                if nxt is None:
                    if len(self.hops) > 1:
                        yield self._trailers(routed)
                    yield error_event(
                        relay.kind,
                        self.failure + "; the response is incomplete.",
                        "stream_interrupted",
                        relay.sequence,
                    )
                    break
                await self.close_hop()
                if relay.malformed:
                    self._malformed(relay.malformed)
                self.move(nxt)
                if self.tracing is not None:
                    self.tracing.continued(self.hops[-1], relay.tokens)
                first = nxt.first or b""
        finally:
            if self.relay.malformed:
                self._malformed(self.relay.malformed)
            await finish(status)

    def _owed_usage(self) -> bytes:
        """The estimated usage chunk a client asked for when the backend sent none (``pipeline.tokens``)."""
        inbound, relay = self.attempt.inbound, self.relay
        if not inbound.include_usage or tokens.reported(relay.usage) or not relay.deltas:
            return b""
        if inbound.path not in tokens.COUNTED:
            return b""
        usage = tokens.for_stream(inbound.payload, relay.deltas, relay.chars, relay.usage)
        return tokens.usage_event(relay.first, usage)

    def _trailers(self, routed: Routed) -> bytes:
        """The hops in order with why each one moved, then what the hooks sign about them, as SSE comments
        (clients skip comments; the gRPC listener sends ``routed.trailers`` as trailing metadata)."""
        inbound = self.attempt.inbound
        routed.trailers = [(HOPS_HEADER, render_hops(self.hops)), *(part(inbound, routed) for part in routed.closing)]
        return b"".join(b": " + k.encode() + b" " + v.encode() + b"\n\n" for k, v in routed.trailers)

    async def _segment(self, first: bytes) -> AsyncIterator[bytes]:
        """One hop's events; afterwards ``failure`` says what broke it (None: the answer is whole)."""
        a, resp, relay = self.attempt, self.resp, self.relay
        region = a.deployment.region
        short, ceiling = self._idle_s()
        idle = short
        chunks = resp.chunks
        assert chunks is not None
        self.failure = None
        try:
            out = relay.feed(first)
            if out:
                yield out
            while True:
                idle = ceiling if relay.tool_calls else short  # a tool call cannot move: wait it out
                try:
                    chunk = await next_chunk(chunks, idle)
                except StopAsyncIteration:
                    break
                out = relay.feed(chunk)
                if out:
                    yield out
            rest = relay.flush()
            if rest:
                yield rest
            if not relay.complete:  # the body ended before the answer did: the backend died mid-answer
                self.fail(502, f"the backend in {region} closed the stream early")
        except TimeoutError:
            self.fail(504, f"the backend in {region} went silent for {idle:g}s")
        except ConnectionError:
            self.fail(502, f"the backend in {region} dropped the connection mid-answer")
        except Exception as e:  # the backend broke mid-stream
            log.warning("stream broke", extra={"backend": a.backend.id, "error": type(e).__name__})
            self.fail(502, f"the backend in {region} failed mid-stream ({type(e).__name__})")

    def _idle_s(self) -> tuple[float, float]:
        """How long this hop may be silent between two chunks: (while the answer could move on, ceiling).

        A backend has no reason to be silent mid-answer for longer than its prefill took, so while the
        stream may be continued elsewhere (another candidate was left, continuation allowed) the wait is
        the first-byte budget's rule applied to the TTFT this hop showed (or the deployment's p95, if
        longer): ``clamp(first_byte_factor x TTFT, first_byte_floor_s, idle_s)``. With nowhere to go
        it is the whole ``idle_s``: giving up early would only turn a slow answer into an error."""
        a = self.attempt
        up = a.backend.upstream
        ceiling = up.idle_timeout_s
        if not a.more or not may_continue(a.inbound.payload, self.relay.kind, not a.inbound.continuation):
            return ceiling, ceiling
        ref_ms = max(self.hop_ttft_ms, a.deployment.first_byte.quantile_ms() or 0.0)
        return min(max(up.first_byte_factor * ref_ms / 1000.0, up.first_byte_floor_s), ceiling), ceiling

    def _malformed(self, count: int) -> None:
        # Counted and logged by where it came from, never with the event's content (it may hold the answer).
        a = self.attempt
        self.metrics.malformed(a.deployment.region, count)
        log.warning(
            "malformed stream events dropped",
            extra={"backend": a.backend.id, "request_id": a.inbound.request_id, "count": count},
        )
