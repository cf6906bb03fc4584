"""The gateway in process in front of the stand-ins (tests/support/standin.py) over real HTTP on loopback:
per-backend dialects (request id, max tokens, probe path, busy probes) and who a 5xx is blamed on
(regiongate/pipeline/blame.py). Each failure mode is first reproduced with the dialect it needs turned off."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import orjson
import pytest

from regiongate.app.runtime import build_fleet
from regiongate.config import HealthConfig, parse_config
from regiongate.config.scale import LimitsConfig, RateLimit
from regiongate.core import ALL_ACCESS, GLOBAL, Endpoint, EndpointKind, RouteError
from regiongate.health.metrics import Metrics
from regiongate.health.probes import Prober
from regiongate.pipeline.auth import Principal
from regiongate.pipeline.exchange import Inbound, Routed
from regiongate.pipeline.failover import Gateway
from regiongate.pipeline.ratelimit import LocalRates, RateLimits
from regiongate.pipeline.usage import UsageRecord
from regiongate.state.fleet import Backend, Fleet
from regiongate.upstream.dialect import REQUEST_ID_NAMESPACE
from tests.support.standin import POISON, Standin
from tests.support.worlds import world

EAST = Endpoint(EndpointKind.REGION, "us-east-1")


class _Usage:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def record(self, rec: UsageRecord) -> None:
        self.records.append(rec)

    async def aclose(self) -> None:
        pass


@dataclass
class World:
    fleet: Fleet
    gateway: Gateway
    usage: _Usage

    def inbound(self, endpoint: Endpoint = GLOBAL, **fields: object) -> Inbound:
        payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
        stream = payload.get("stream") is True
        principal = Principal("demo", "k", ALL_ACCESS)
        return Inbound(
            "/chat/completions", payload, orjson.dumps(payload), "m", stream, endpoint, principal, "req_test1"
        )

    def backend(self, region: str = "us-east-1") -> Backend:
        return self.fleet.deployments[("m", region)].backends[0]

    async def aclose(self) -> None:
        await self.fleet.aclose()


def spec(s: Standin, extra: str = "") -> str:
    return f'{{ kind = "http", url = "{s.url}", metrics_url = ""{extra} }}'


@pytest.fixture
async def make() -> AsyncIterator[Callable[[dict[str, list[str]]], World]]:
    """A world of stand-in backends: {"us-east-1": [spec(s)], ...}, nearest first."""
    made: list[World] = []

    def build(backends: dict[str, list[str]]) -> World:
        fleet = build_fleet(parse_config(world(backends, model="m")))
        usage = _Usage()
        w = World(fleet, Gateway(fleet, usage, Metrics()), usage)
        made.append(w)
        return w

    yield build
    for w in made:
        await w.aclose()


async def _text(w: World, inbound: Inbound) -> tuple[int, dict[str, object]]:
    routed = await w.gateway.dispatch(inbound)
    return routed.status, orjson.loads(routed.body) if routed.body else {}


async def test_llama_cpp_python_needs_a_uuid_request_id(
    make: Callable[..., World], standin: Callable[..., Standin]
) -> None:
    s = standin("llama-cpp-python", model="m")
    bare = make({"us-east-1": [spec(s)]})  # generic: the gateway's own id, as-is
    routed = await bare.gateway.dispatch(bare.inbound())
    assert (routed.status, routed.body) == (400, b""), (
        "reproduced: the server refuses req_… (400, empty body)"
    )
    fixed = make({"us-east-1": [spec(s, ', server = "llama-cpp-python"')]})
    status, body = await _text(fixed, fixed.inbound())
    assert status == 200 and body["choices"]
    sent = s.posts()[-1].headers["x-request-id"]
    assert sent == str(uuid.uuid5(REQUEST_ID_NAMESPACE, "req_test1")), "derived from ours, so logs correlate"
    off = make({"us-east-1": [spec(s, ', request_id = "off"')]})
    assert (await off.gateway.dispatch(off.inbound())).status == 200
    assert "x-request-id" not in s.posts()[-1].headers


async def test_max_completion_tokens_reaches_a_server_that_knows_only_max_tokens(
    make: Callable[..., World], standin: Callable[..., Standin]
) -> None:
    s = standin("llama-cpp-python", model="m", tokens=40)
    asis = make({"us-east-1": [spec(s, ', server = "llama-cpp-python", max_completion_tokens = "as-is"')]})
    _, body = await _text(asis, asis.inbound(max_completion_tokens=3))
    assert body["usage"]["completion_tokens"] == 40, "reproduced: the limit was ignored"
    fixed = make({"us-east-1": [spec(s, ', server = "llama-cpp-python"')]})
    _, body = await _text(fixed, fixed.inbound(max_completion_tokens=3))
    assert body["usage"]["completion_tokens"] == 3
    sent = s.posts()[-1].payload
    assert sent is not None and sent["max_tokens"] == 3 and "max_completion_tokens" not in sent


async def test_a_backend_4xx_is_relayed_unchanged_never_failed_over(
    make: Callable[..., World], standin: Callable[..., Standin]
) -> None:
    east, west = standin("vllm", model="m"), standin("vllm", model="m")
    w = make({"us-east-1": [spec(east)], "us-west-2": [spec(west)]})
    east.fail(400, "This model's maximum context length is 8 tokens.")
    routed = await w.gateway.dispatch(w.inbound())
    assert routed.status == 400 and routed.region == "us-east-1"
    assert orjson.loads(routed.body) == {
        "object": "error",
        "message": "This model's maximum context length is 8 tokens.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }, "the backend's body, byte for byte"
    assert west.posts() == [], "never sent elsewhere"
    assert w.backend().outlier.streak == 0


async def test_a_request_that_breaks_every_backend_gets_its_500_and_ejects_none(
    make: Callable[..., World], standin: Callable[..., Standin]
) -> None:
    east, west = standin("vllm", model="m"), standin("sglang", model="m")
    w = make({"us-east-1": [spec(east)], "us-west-2": [spec(west)]})
    poison = [{"role": "user", "content": f"hi {POISON}"}]
    for _ in range(5):  # more than consecutive_failures (3)
        with pytest.raises(RouteError) as e:
            await w.gateway.dispatch(w.inbound(messages=poison))
        assert e.value.status == 500
        assert "us-west-2/m/0 answered HTTP 500: poisoned request: cannot build the prompt" in e.value.message
        assert (
            "Tried: us-east-1/us-east-1/m/0: answered HTTP 500; us-west-2/us-west-2/m/0: answered HTTP 500"
            in e.value.message
        )
        assert e.value.retry_after is None, "the request broke it: retrying will not help"
    for region in ("us-east-1", "us-west-2"):
        b = w.backend(region)
        assert b.outlier.streak == 0 and b.outlier.ejections == 0
    routed = await w.gateway.dispatch(w.inbound())
    assert (routed.status, routed.region) == (200, "us-east-1"), "the next valid request is served as usual"


async def test_a_regional_request_that_breaks_its_one_backend(
    make: Callable[..., World], standin: Callable[..., Standin]
) -> None:
    east = standin("llama-cpp-python", model="m")
    w = make({"us-east-1": [spec(east, ', server = "llama-cpp-python"')]})
    poison = [{"role": "user", "content": POISON}]
    for _ in range(4):
        with pytest.raises(RouteError) as e:
            await w.gateway.dispatch(w.inbound(EAST, messages=poison))
        assert e.value.status == 500 and "poisoned request" in e.value.message
    assert (await w.gateway.dispatch(w.inbound(EAST))).status == 200, "not 503 no healthy backend"


async def test_a_broken_backend_is_still_ejected(
    make: Callable[..., World], standin: Callable[..., Standin]
) -> None:
    east, west = standin("vllm", model="m"), standin("vllm", model="m")
    w = make({"us-east-1": [spec(east)], "us-west-2": [spec(west)]})
    east.fail(500, "CUDA error: an illegal memory access was encountered", n=3)
    for _ in range(3):
        routed = await w.gateway.dispatch(w.inbound())
        assert (routed.status, routed.region) == (200, "us-west-2"), "answered elsewhere: east is to blame"
    b = w.backend()
    assert b.outlier.ejections == 1, "three 500s that another backend did not give: ejected"


async def test_a_busy_single_slot_backend_is_not_marked_unhealthy(
    make: Callable[..., World], standin: Callable[..., Standin]
) -> None:
    s = standin("vllm", model="m", single_slot=True)  # answers no GET while a generation runs
    w = make({"us-east-1": [spec(s, ', server = "vllm"')]})
    b = w.backend()
    health = HealthConfig(probe_timeout_s=0.2, unhealthy_after=2)
    prober = Prober(lambda: w.fleet, lambda: health)
    assert await prober.probe(b)
    assert s.received[-1].path == "/health", "vLLM's own health route, at the root"
    s.hold()
    task = asyncio.create_task(w.gateway.dispatch(w.inbound()))
    await asyncio.to_thread(s.wait_busy)  # the generation is in the server
    for _ in range(3):  # each one times out: the server cannot answer while it generates
        assert await prober.probe(b)
    assert b.probe_healthy and prober.excused == 3
    s.release()
    assert (await task).status == 200
    s.hold()  # the server stalls with nothing of ours in flight: those timeouts count
    stuck = asyncio.create_task(asyncio.to_thread(_raw_post, s.url))
    await asyncio.to_thread(s.wait_busy)
    await prober.probe(b)  # answered since the previous probe: excused
    for _ in range(2):
        assert not await prober.probe(b)
    assert not b.probe_healthy
    s.release()
    await stuck


def _raw_post(url: str) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    return httpx.post(url + "/chat/completions", json=body).status_code


async def _drain(routed: Routed) -> bytes:
    assert routed.chunks is not None
    out = b"".join([c async for c in routed.chunks])
    await routed.aclose()
    return out


async def test_a_stream_without_usage_is_counted_and_flagged(
    make: Callable[..., World], standin: Callable[..., Standin]
) -> None:
    s = standin("llama-cpp-python", model="m")  # ignores stream_options: never a usage chunk
    w = make({"us-east-1": [spec(s, ', server = "llama-cpp-python"')]})
    opts = {"include_usage": True}
    body = await _drain(await w.gateway.dispatch(w.inbound(stream=True, max_tokens=3, stream_options=opts)))
    assert s.posts()[-1].payload["stream_options"] == opts  # type: ignore[index]  # asked, and ignored by it
    events = [orjson.loads(e[6:]) for e in body.split(b"\n\n") if e.startswith(b"data: {")]
    owed = events[-1]
    assert owed["choices"] == [] and owed["id"] == events[0]["id"], "the client asked for usage: it gets it"
    assert owed["usage"]["completion_tokens"] == 3 and owed["usage"]["estimated"] is True
    assert body.endswith(b"data: [DONE]\n\n")
    (rec,) = w.usage.records
    assert rec.estimated and rec.completion_tokens == 3, "one token per content delta (w0, w1, w2)"
    assert rec.prompt_tokens > 0
    assert 'regiongate_usage_estimated_total{region="us-east-1"} 1.0' in w.gateway.metrics.render().decode()
    vllm = standin("vllm", model="m")  # reports usage when asked: nothing is estimated
    w2 = make({"us-east-1": [spec(vllm, ', server = "vllm"')]})
    await _drain(await w2.gateway.dispatch(w2.inbound(stream=True, max_tokens=3)))
    (rec,) = w2.usage.records
    assert not rec.estimated and rec.completion_tokens == 3


async def test_an_answer_without_usage_is_counted_and_flagged(
    make: Callable[..., World], standin: Callable[..., Standin]
) -> None:
    s = standin("vllm", model="m", no_usage=True)
    w = make({"us-east-1": [spec(s)]})
    status, body = await _text(w, w.inbound(max_tokens=8))
    assert status == 200 and "usage" not in body
    (rec,) = w.usage.records
    text = "w0 w1 w2 w3 w4 w5 w6 w7"
    assert rec.estimated and rec.completion_tokens == -(-len(text) // 4), "its text's characters / 4"


async def test_token_rate_limits_hold_on_estimated_usage(
    make: Callable[..., World], standin: Callable[..., Standin]
) -> None:
    s = standin("llama-cpp-python", model="m", tokens=16)
    w = make({"us-east-1": [spec(s, ', server = "llama-cpp-python"')]})
    limits = RateLimits(LimitsConfig(team=RateLimit(tokens_per_minute=30)), LocalRates())
    w.gateway.hooks.append(limits)
    for _ in range(2):  # each: a few prompt tokens up front, then 16 estimated completion tokens settled
        await _drain(await w.gateway.dispatch(w.inbound(stream=True)))
        await asyncio.gather(*limits._tasks)
    assert all(r.estimated and r.completion_tokens == 16 for r in w.usage.records)
    with pytest.raises(RouteError) as e:
        await w.gateway.dispatch(w.inbound(stream=True))
    assert e.value.code == "rate_limit_exceeded", "the estimate was charged: without it the third would pass"


async def test_llama_cpp_python_is_probed_where_it_answers_during_a_generation(
    make: Callable[..., World], standin: Callable[..., Standin]
) -> None:
    s = standin("llama-cpp-python", model="m")  # its /v1/models waits for the model lock
    w = make(
        {
            "us-east-1": [spec(s, ', server = "llama-cpp-python"')],
            "us-west-2": [
                spec(s, ', server = "llama-cpp-python", probe_path = "/models", busy_probe_grace = false')
            ],
        }
    )
    by_models, default = w.backend("us-west-2"), w.backend()
    health = HealthConfig(probe_timeout_s=0.2, unhealthy_after=1)
    prober = Prober(lambda: w.fleet, lambda: health)
    s.hold()
    task = asyncio.create_task(w.gateway.dispatch(w.inbound()))
    await asyncio.to_thread(s.wait_busy)
    assert not await prober.probe(by_models), "reproduced: /v1/models is not answered while it generates"
    assert not by_models.probe_healthy
    assert await prober.probe(default) and prober.excused == 0, "/openapi.json answered, nothing excused"
    assert s.received[-1].path == "/openapi.json"
    s.release()
    assert (await task).status == 200
