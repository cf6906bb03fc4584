"""The failover loop in process (``pipeline/failover.py``), through scripted upstreams in the place of real
backends (the way httpx's MockTransport stands in for a network): which backend is tried, in which order,
what the client gets, and that every lease comes back. No process, no socket, no timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from regiongate.app.runtime import build_fleet
from regiongate.config import parse_config
from regiongate.core import ALL_ACCESS, GLOBAL, Endpoint, EndpointKind, RouteError
from regiongate.core.labels import Route
from regiongate.health.metrics import Metrics
from regiongate.pipeline.auth import Principal
from regiongate.pipeline.exchange import Inbound, Routed
from regiongate.pipeline.failover import Gateway
from regiongate.pipeline.hedge import HedgePolicy
from regiongate.state.capacity import CapacityStore, Lease, Rider
from regiongate.state.first_byte import MIN_SAMPLES
from regiongate.state.fleet import Fleet
from regiongate.upstream.base import UpstreamCall, UpstreamFailure, UpstreamResponse
from tests.support.worlds import http_backend, world

ANSWER = {
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
EVENTS = [
    b'data: {"choices":[{"index":0,"delta":{"content":"he"}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"llo"},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


@dataclass
class Scripted:
    """An upstream whose answer to each call is a function of the call: ``fail``, ``answer``, ``stream`` or
    ``stall`` (never answers; counts its cancellations)."""

    id: str
    behaviour: str = "answer"
    base_url: str | None = "http://scripted.invalid/v1"
    first_byte_timeout_s: float = 5.0
    idle_timeout_s: float = 5.0
    first_byte_floor_s: float = 5.0
    first_byte_factor: float = 4.0
    calls: list[UpstreamCall] = field(default_factory=list)
    closed: int = 0
    cancelled: int = 0

    async def send(self, call: UpstreamCall) -> UpstreamResponse:
        self.calls.append(call)
        if self.behaviour == "stall":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.behaviour == "fail":
            raise UpstreamFailure(self.id, "connection refused")
        if self.behaviour == "stream":
            return UpstreamResponse(200, "text/event-stream", chunks=self._events(), closer=self._close)
        return UpstreamResponse(200, "application/json", body=orjson.dumps(ANSWER), closer=self._close)

    async def _events(self) -> AsyncIterator[bytes]:
        for e in EVENTS:
            yield e

    async def _close(self) -> None:
        self.closed += 1

    async def probe(self, path: str, timeout_s: float) -> bool:
        return True

    def metrics_text(self, model: str) -> str | None:
        return None

    async def aclose(self) -> None:
        pass


@dataclass
class World:
    fleet: Fleet
    gateway: Gateway
    up: dict[str, Scripted]  # "<region>/<index>" -> its scripted upstream

    def inbound(self, endpoint: Endpoint = GLOBAL, stream: bool = False) -> Inbound:
        payload = {"model": "grok-4", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        principal = Principal("demo", "k", ALL_ACCESS)
        return Inbound(
            "/chat/completions",
            payload,
            orjson.dumps(payload),
            "grok-4",
            stream,
            endpoint,
            principal,
            "req_test",
        )

    def held(self) -> int:
        return sum(self.fleet.capacity.in_use(d.key) for d in self.fleet.deployments.values())


@pytest.fixture
def make() -> Callable[[dict[str, list[str]]], World]:
    """A world whose backends are scripted: {"us-east-1": ["fail", "answer"], ...}, nearest first."""

    def build(behaviours: dict[str, list[str]]) -> World:
        cfg = parse_config(
            world(
                {
                    r: [http_backend(f"http://{r}-{i}.invalid/v1") for i in range(len(bs))]
                    for r, bs in behaviours.items()
                }
            )
        )
        fleet = build_fleet(cfg)
        up: dict[str, Scripted] = {}
        for d in fleet.deployments.values():
            for i, b in enumerate(d.backends):
                b.upstream = up[f"{d.region}/{i}"] = Scripted(b.id, behaviours[d.region][i])
        return World(fleet, Gateway(fleet, _Usage(), Metrics()), up)

    return build


class _Usage:
    def __init__(self) -> None:
        self.records: list[object] = []

    def record(self, rec: object) -> None:
        self.records.append(rec)

    async def aclose(self) -> None:
        pass


async def test_global_request_fails_over_to_the_next_region(make: Callable[..., World]) -> None:
    w = make({"us-east-1": ["fail"], "us-west-2": ["answer"]})
    routed = await w.gateway.dispatch(w.inbound())
    assert (routed.region, routed.route, routed.status) == ("us-west-2", Route.FAILOVER, 200)
    assert len(w.up["us-east-1/0"].calls) == 1, "the nearest region was tried first, once"
    assert len(w.up["us-west-2/0"].calls) == 1
    assert w.held() == 0, "both leases (the failed attempt's and the answer's) came back"
    assert w.fleet.backends[w.up["us-east-1/0"].id].outlier.streak == 1


async def test_regional_request_tries_its_region_s_other_backend_and_never_leaves(
    make: Callable[..., World],
) -> None:
    w = make({"us-east-1": ["fail", "answer"], "us-west-2": ["answer"]})
    routed = await w.gateway.dispatch(w.inbound(Endpoint(EndpointKind.REGION, "us-east-1")))
    assert (routed.region, routed.route) == ("us-east-1", Route.PINNED)
    assert [len(w.up[k].calls) for k in ("us-east-1/0", "us-east-1/1", "us-west-2/0")] == [1, 1, 0]
    assert w.held() == 0


async def test_regional_request_whose_backends_all_fail_is_refused_in_its_region(
    make: Callable[..., World],
) -> None:
    w = make({"us-east-1": ["fail", "fail"], "us-west-2": ["answer"]})
    with pytest.raises(RouteError) as e:
        await w.gateway.dispatch(w.inbound(Endpoint(EndpointKind.REGION, "us-east-1")))
    assert e.value.status == 503 and e.value.code == "region_unavailable"
    assert "us-west-2" in e.value.message, "it names the region that could serve the model"
    assert len(w.up["us-west-2/0"].calls) == 0, "a regional request is never sent elsewhere"
    assert w.held() == 0


async def test_a_stream_holds_its_lease_until_it_is_read_to_the_end(make: Callable[..., World]) -> None:
    w = make({"us-east-1": ["stream"]})
    routed = await w.gateway.dispatch(w.inbound(stream=True))
    assert routed.chunks is not None and w.held() == 1
    body = b"".join([c async for c in routed.chunks])
    await routed.aclose()
    assert body.count(b"data: [DONE]") == 1 and b'"he"' in body and b'"llo"' in body
    assert w.held() == 0 and w.up["us-east-1/0"].closed == 1


async def test_a_stream_the_client_never_reads_still_frees_its_lease(make: Callable[..., World]) -> None:
    w = make({"us-east-1": ["stream"]})
    routed: Routed = await w.gateway.dispatch(w.inbound(stream=True))
    assert w.held() == 1
    await routed.aclose()  # what the listener does when the client goes away
    assert w.held() == 0 and w.up["us-east-1/0"].closed == 1


def _learned(w: World, region: str, ms: float = 1.0) -> None:
    """The deployment's TTFTs are known (a hedge needs a mark): ``ms`` each."""
    for _ in range(MIN_SAMPLES):
        w.fleet.deployments[("grok-4", region)].first_byte.add(ms)


async def test_a_hedge_wins_and_the_stalled_attempt_is_cancelled_with_its_lease(make: Callable[..., World]) -> None:
    w = make({"us-east-1": ["stall"], "us-west-2": ["stream"]})
    w.gateway.hedging = HedgePolicy(after_factor=1.0, floor_s=0.0)
    _learned(w, "us-east-1")
    routed = await w.gateway.dispatch(w.inbound(stream=True))
    assert (routed.region, routed.route) == ("us-west-2", Route.FAILOVER)
    assert ("x-regiongate-hedge", "won") in routed.headers
    assert w.up["us-east-1/0"].cancelled == 1 and w.held() == 1, "only the winner's lease is held"
    assert w.fleet.backends[w.up["us-east-1/0"].id].in_flight == 0
    assert routed.chunks is not None
    body = b"".join([c async for c in routed.chunks])
    await routed.aclose()
    assert body.count(b"data: [DONE]") == 1 and w.held() == 0
    (record,) = w.gateway.usage.records  # type: ignore[attr-defined]
    assert record.hops[0].startswith("us-west-2 ") and "hedge: us-east-1 " in record.hops[0]
    assert w.fleet.backends[w.up["us-east-1/0"].id].outlier.streak == 0, "slower is not unhealthy"


async def test_no_hedge_without_a_learned_mark_nor_when_opted_out(make: Callable[..., World]) -> None:
    w = make({"us-east-1": ["stream"], "us-west-2": ["stream"]})
    w.gateway.hedging = HedgePolicy(after_factor=1.0, floor_s=0.0)
    routed = await w.gateway.dispatch(w.inbound(stream=True))  # nothing learned: no mark
    assert not any(k == "x-regiongate-hedge" for k, _ in routed.headers)
    await routed.aclose()
    w.up["us-east-1/0"].behaviour = "stall"
    _learned(w, "us-east-1")
    inbound = w.inbound(stream=True)
    inbound.hedge = False
    task = asyncio.ensure_future(w.gateway.dispatch(inbound))
    for _ in range(100):  # until the stalled attempt has been sent
        if len(w.up["us-east-1/0"].calls) == 2:
            break
        await asyncio.sleep(0)
    assert len(w.up["us-east-1/0"].calls) == 2
    await asyncio.sleep(0.05)  # fifty times the mark (1 ms): a hedge would have reached west by now
    assert not task.done() and w.up["us-west-2/0"].calls == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert w.held() == 0



async def test_a_zone_endpoints_hedge_stays_in_its_zone(make: Callable[..., World]) -> None:
    w = make({"us-east-1": ["stall"], "eu-west-1": ["stream"], "us-west-2": ["stream"]})
    w.gateway.hedging = HedgePolicy(after_factor=1.0, floor_s=0.0)
    _learned(w, "us-east-1")
    routed = await w.gateway.dispatch(w.inbound(Endpoint(EndpointKind.ZONE, "us"), stream=True))
    assert ("x-regiongate-hedge", "won") in routed.headers and routed.region == "us-west-2"
    assert w.up["eu-west-1/0"].calls == [] and w.up["us-east-1/0"].cancelled == 1
    await routed.aclose()
    assert w.held() == 0


class _StaleView:
    """A shared capacity store as a replica sees it between refreshes: its count says every deployment
    is full (another replica filled them a moment ago) while the leases themselves have room again."""

    def __init__(self, real: CapacityStore, limits: dict[str, int]) -> None:
        self.real, self.limits = real, limits

    async def acquire(self, key: str, limit: int, rider: Rider | None = None) -> Lease | None:
        return await self.real.acquire(key, limit, rider)

    async def release(self, lease: Lease) -> None:
        await self.real.release(lease)

    def in_use(self, key: str) -> int:
        return self.limits[key]

    def configure(self, limits: Any, modes: Any, default_mode: Any) -> None:
        self.real.configure(limits, modes, default_mode)


async def test_a_stale_full_count_never_refuses_a_request_the_lease_has_room_for(
    make: Callable[..., World],
) -> None:
    w = make({"us-east-1": ["answer"], "us-west-2": ["answer"]})
    real = w.fleet.capacity
    w.fleet.capacity = _StaleView(real, {d.key: d.limit for d in w.fleet.deployments.values()})
    routed = await w.gateway.dispatch(w.inbound())
    assert (routed.region, routed.status) == ("us-east-1", 200), "the nearest region's lease had room"
    assert sum(real.in_use(d.key) for d in w.fleet.deployments.values()) == 0, "its lease came back"
    pinned = await w.gateway.dispatch(w.inbound(Endpoint(EndpointKind.REGION, "us-west-2")))
    assert (pinned.region, pinned.route, pinned.status) == ("us-west-2", Route.PINNED, 200)


async def test_when_every_lease_is_full_too_the_policy_s_refusal_is_given(make: Callable[..., World]) -> None:
    w = make({"us-east-1": ["answer"], "us-west-2": ["answer"]})
    real = w.fleet.capacity
    w.fleet.capacity = _StaleView(real, {d.key: d.limit for d in w.fleet.deployments.values()})
    for d in w.fleet.deployments.values():  # truly full
        for _ in range(d.limit):
            assert await real.acquire(d.key, d.limit) is not None
    with pytest.raises(RouteError) as e:
        await w.gateway.dispatch(w.inbound())
    assert (e.value.status, e.value.code) == (503, "capacity_exhausted")
    assert not any(u.calls for u in w.up.values()), "no backend was called"
    with pytest.raises(RouteError) as e:
        await w.gateway.dispatch(w.inbound(Endpoint(EndpointKind.REGION, "us-west-2")))
    assert (e.value.status, e.value.code) == (503, "region_unavailable")
