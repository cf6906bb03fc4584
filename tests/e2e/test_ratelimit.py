"""Rate limits: the RateStore contract against both stores, then the hook end to end through the
official openai client (headers on success, 429 with Retry-After when over), shared by two gateway
processes on one Redis, and split between workers without Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import openai
import pytest
import redis

from regiongate.config.scale import SharedConfig
from regiongate.pipeline.ratelimit import Bucket, LocalRates, RateStore, RedisRates, reset_text
from regiongate.state.redis_link import RedisLink
from tests.support.procs import DEMO_KEY, Proc
from tests.support.scale import (
    FAST_SIM,
    MSG,
    RedisServer,
    private_redis,
    shared_redis,
    shared_section,
    unique_prefix,
    world,
)

__all__ = ["private_redis"]  # fixture re-exported for pytest


def _req(key: str, cap: int, cost: int = 1) -> Bucket:
    return Bucket(key, cap, cost, "requests", "team")


@pytest.fixture(params=["local", "redis"])
async def rates(request: pytest.FixtureRequest) -> AsyncIterator[RateStore]:
    if request.param == "local":
        yield LocalRates()
        return
    link = RedisLink(SharedConfig(redis=shared_redis(), key_prefix=unique_prefix(), timeout_ms=5000))
    await link.start()
    store = RedisRates(link)
    yield store
    await store.aclose()
    await link.aclose()


async def test_take_until_empty_then_refuse_with_a_wait(rates: RateStore) -> None:
    for i in range(3):
        t = await rates.take([_req("a", 3)])
        assert t.allowed
        assert int(t.levels[0]) == 2 - i
    t = await rates.take([_req("a", 3)])
    assert not t.allowed
    assert 0 < t.retry_after_s <= 20.0  # one request per 20 s refills at 3/min


async def test_all_or_nothing_across_buckets(rates: RateStore) -> None:
    wide, narrow = _req("wide", 10), Bucket("narrow", 4, 3, "tokens", "key")
    assert (await rates.take([wide, narrow])).allowed
    t = await rates.take([wide, narrow])  # narrow has ~1 left, needs 3
    assert not t.allowed
    assert int(t.levels[0]) == 9  # wide was not charged for the refused request


async def test_settle_charges_and_refunds(rates: RateStore) -> None:
    b = Bucket("tok", 100, 60, "tokens", "team")
    assert (await rates.take([b])).allowed
    assert not (await rates.take([b])).allowed
    await rates.settle("tok", 100, -60)  # the request used nothing after all
    assert (await rates.take([b])).allowed
    await rates.settle("tok", 100, 500)  # a long answer: pushes the bucket below zero (capped at -100)
    t = await rates.take([Bucket("tok", 100, 1, "tokens", "team")])
    assert not t.allowed
    assert t.retry_after_s > 30.0


async def test_local_refill_follows_the_clock() -> None:
    now = [0.0]
    rates = LocalRates(lambda: now[0])
    for _ in range(60):
        assert (await rates.take([_req("a", 60)])).allowed
    assert not (await rates.take([_req("a", 60)])).allowed
    now[0] += 1.0  # 60/min = one per second
    assert (await rates.take([_req("a", 60)])).allowed
    assert not (await rates.take([_req("a", 60)])).allowed


def test_reset_durations_read_like_openai() -> None:
    assert reset_text(0.02) == "20ms"
    assert reset_text(1.5) == "1.5s"
    assert reset_text(360) == "6m0s"


# --- end to end --------------------------------------------------------------------------------------


def _client(gw: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)


LIMITS = """
[limits.teams.demo]
team = { requests_per_minute = 3 }
key = { tokens_per_minute = 5000 }
"""


def test_headers_then_429_through_the_openai_client(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway(world({"us-east-1": [FAST_SIM]}, extra=LIMITS))
    c = _client(gw)
    for remaining in (2, 1, 0):
        raw = c.chat.completions.with_raw_response.create(model="grok-4", messages=MSG)
        h = raw.headers
        assert h["x-ratelimit-limit-requests"] == "3"
        assert h["x-ratelimit-remaining-requests"] == str(remaining)
        assert h["x-ratelimit-reset-requests"].endswith("s")
        assert h["x-ratelimit-limit-tokens"] == "5000"
        assert int(h["x-ratelimit-remaining-tokens"]) < 5000
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="grok-4", messages=MSG)
    assert e.value.status_code == 429
    assert e.value.code == "rate_limit_exceeded"
    h = e.value.response.headers
    assert int(h["retry-after"]) >= 1
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert "requests per min" in e.value.message


def test_prompt_larger_than_the_token_limit_is_refused(start_gateway: Callable[..., Proc]) -> None:
    extra = "[limits.key]\ntokens_per_minute = 50\n"
    gw = start_gateway(world({"us-east-1": [FAST_SIM]}, extra=extra))
    c = _client(gw)
    ok = c.chat.completions.with_raw_response.create(model="grok-4", messages=MSG, max_tokens=4)
    assert ok.headers["x-ratelimit-limit-tokens"] == "50"
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="grok-4", messages=[{"role": "user", "content": "x" * 400}])
    assert e.value.code == "rate_limit_exceeded"
    assert "too large" in e.value.message


def test_completion_tokens_are_settled_after_a_stream(start_gateway: Callable[..., Proc]) -> None:
    extra = "[limits.team]\ntokens_per_minute = 600\n"
    gw = start_gateway(world({"us-east-1": [FAST_SIM]}, extra=extra))
    c = _client(gw)
    first = c.chat.completions.with_raw_response.create(model="grok-4", messages=MSG, stream=True)
    before = int(first.headers["x-ratelimit-remaining-tokens"])  # after the prompt estimate only
    used = 0
    for chunk in first.parse():
        used += len(chunk.choices[0].delta.content or "") if chunk.choices else 0
    assert used > 0

    def remaining() -> int:
        r = c.chat.completions.with_raw_response.create(model="grok-4", messages=MSG, max_tokens=1)
        return int(r.headers["x-ratelimit-remaining-tokens"])

    # The settlement (completion tokens) lands after the stream; the next request sees it.
    for _ in range(50):
        if remaining() < before - 20:
            break
    else:
        raise AssertionError("completion tokens were never charged")


def test_two_gateways_share_limits_through_redis(start_gateway: Callable[..., Proc]) -> None:
    shared = shared_section(shared_redis(), unique_prefix())
    extra = shared + "[limits.key]\nrequests_per_minute = 4\n"
    cfg = world({"us-east-1": [FAST_SIM]}, extra=extra)
    a, b = start_gateway(cfg), start_gateway(cfg)
    results = []
    for i in range(8):
        gw = (a, b)[i % 2]
        try:
            _client(gw).chat.completions.create(model="grok-4", messages=MSG, max_tokens=2)
            results.append("ok")
        except openai.RateLimitError:
            results.append("429")
    assert results == ["ok"] * 4 + ["429"] * 4


def test_workers_without_redis_split_every_limit(start_gateway: Callable[..., Proc]) -> None:
    extra = "[limits.key]\nrequests_per_minute = 4\n"
    gw = start_gateway(world({"us-east-1": [FAST_SIM]}, limit=6, extra=extra), args=["--workers", "2"])
    ok = 0
    for _ in range(16):  # each new connection lands on either worker
        with httpx.Client() as h:
            r = h.post(
                gw.url + "/v1/chat/completions",
                json={"model": "grok-4", "messages": MSG, "max_tokens": 2},
                headers={"authorization": f"Bearer {DEMO_KEY}"},
            )
        assert r.status_code in (200, 429), r.text
        ok += r.status_code == 200
        if r.status_code == 200:
            assert r.headers["x-ratelimit-limit-requests"] == "2"  # each worker enforces half
    # The two workers together never exceed the configured total (2 each), and the 12+ refusals show the
    # limit was what stopped the rest (not, say, every request landing on a broken worker).
    assert 2 <= ok <= 4 and 16 - ok >= 12
    limits = set()
    for _ in range(6):
        with httpx.Client() as h:
            text = h.get(gw.url + "/metrics").text
        limits |= {line for line in text.splitlines() if line.startswith("regiongate_capacity_limit{")}
    assert {line.rsplit(" ", 1)[1] for line in limits} == {"3.0"}  # 6 concurrent split over 2 workers


async def test_redis_rates_fail_closed_when_down() -> None:
    link = RedisLink(SharedConfig(redis="redis://127.0.0.1:1/0", key_prefix=unique_prefix(), timeout_ms=100))
    store = RedisRates(link, "fail-closed")
    from regiongate.core import RouteError

    with pytest.raises(RouteError) as e:
        await store.take([_req("a", 3)])
    assert e.value.status == 503
    open_store = RedisRates(link, "fail-open")
    assert (await open_store.take([_req("a", 3)])).allowed  # the replica's own share
    await link.client.aclose()
    await asyncio.sleep(0)


def _script_calls(port: int) -> int:
    r = redis.Redis(port=port)
    stats = r.info("commandstats")
    r.close()
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def test_one_round_trip_admits_a_request_and_one_releases_it(
    start_gateway: Callable[..., Proc], private_redis: RedisServer
) -> None:
    """With Redis, a request's rate limits ride on its capacity lease: one script admits it (limits and
    lease together), one releases the lease; a refused request takes no lease at all."""
    # No background refresh or heartbeat during the count (each is a script call of its own), so the count is
    # exactly the requests' own.
    shared = shared_section(
        private_redis.url, unique_prefix(), refresh_s=3600.0, heartbeat_s=3000.0, lease_ttl_s=3600.0
    )
    extra = shared + "[limits.team]\nrequests_per_minute = 3\n"
    extra += "[affinity]\nenabled = false\n"  # its reads and writes are Redis calls of their own
    cfg = world({"us-east-1": [FAST_SIM]}, extra=extra)
    gw = start_gateway(cfg)
    c = _client(gw)
    c.chat.completions.create(model="grok-4", messages=MSG, max_tokens=2)  # scripts loaded, pools warm
    before = _script_calls(private_redis.port)
    for _ in range(2):
        r = c.chat.completions.with_raw_response.create(model="grok-4", messages=MSG, max_tokens=2)
        assert r.headers["x-ratelimit-limit-requests"] == "3"
    during = _script_calls(private_redis.port) - before
    assert during == 4, during  # 2 requests x (admit + release)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="grok-4", messages=MSG, max_tokens=2)
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    r = redis.Redis(port=private_redis.port)
    leases = [k for k in r.scan_iter(match="*cap:*")]
    assert all(r.zcard(k) == 0 for k in leases), "a refused request left a lease behind"
    r.close()
