"""The rate-limit hook's buckets per caller: kept per key between requests, built again when a reload
swaps the limits (``RateLimits._caller``), each request's tokens charged at its own estimate."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from regiongate.config.scale import LimitsConfig, RateLimit, RateLimitOverride, TeamLimits
from regiongate.pipeline.ratelimit import Bucket, LocalRates, RateLimits, Take


def _inbound(team: str, key: str, prompt: str = "hi") -> Any:
    principal = SimpleNamespace(team=team, key_id=key)
    return SimpleNamespace(principal=principal, payload={"messages": [{"role": "user", "content": prompt}]}, rider=None)


async def _headers(limits: RateLimits, inbound: Any) -> dict[str, str]:
    await limits.before(inbound)
    routed = SimpleNamespace(headers=[])
    limits.after(inbound, routed)  # type: ignore[arg-type]
    return dict(routed.headers)


async def test_a_reload_changes_the_limits_the_next_request_is_charged_on() -> None:
    limits = RateLimits(LimitsConfig(team=RateLimit(requests_per_minute=50)), LocalRates())
    a = _inbound("acme", "k1")
    assert (await _headers(limits, a))["x-ratelimit-limit-requests"] == "50"
    assert (await _headers(limits, _inbound("acme", "k1")))["x-ratelimit-remaining-requests"] == "48"
    limits.cfg = LimitsConfig(  # what a reload does (app.scaleout)
        team=RateLimit(requests_per_minute=70),
        teams={"acme": TeamLimits(team=RateLimitOverride(requests_per_minute=90))},
    )
    assert (await _headers(limits, _inbound("acme", "k1")))["x-ratelimit-limit-requests"] == "90"
    assert (await _headers(limits, _inbound("zeta", "k2")))["x-ratelimit-limit-requests"] == "70"
    limits.share = lambda n: n // 2  # a new share (workers splitting the limits) rebuilds them too
    assert (await _headers(limits, _inbound("acme", "k1")))["x-ratelimit-limit-requests"] == "45"


async def test_each_request_pays_its_own_prompt_estimate() -> None:
    class Seen(LocalRates):
        def __init__(self) -> None:
            super().__init__()
            self.costs: list[list[int]] = []

        async def take(self, buckets: Any) -> Take:
            self.costs.append([b.cost for b in buckets])
            return await super().take(buckets)

    store = Seen()
    limits = RateLimits(LimitsConfig(key=RateLimit(requests_per_minute=100, tokens_per_minute=100_000)), store)
    await limits.before(_inbound("acme", "k1", "short"))
    await limits.before(_inbound("acme", "k1", "a much longer prompt " * 50))
    short, long = store.costs
    assert short[0] == long[0] == 1  # the requests bucket
    assert 0 < short[1] < long[1]  # the tokens bucket: each its own estimate, never the last one's
    cached = limits._caller(_inbound("acme", "k1"))
    assert [b.cost for b in cached.buckets if b.kind == "tokens"] == [0]  # the kept buckets are untouched
    assert isinstance(cached.buckets[0], Bucket)
