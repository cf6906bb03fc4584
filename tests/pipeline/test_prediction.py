"""The per-request prediction end to end: a real gateway (the REST app over the runtime, official openai
client over an in-process transport) whose fleet learns from samples on an injected clock, and moves traffic
away from the nearest region only when the predicted gain beats the margin."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from regiongate.app.runtime import build_runtime
from regiongate.config import parse_config
from regiongate.core.latency import margin_ms
from regiongate.rest.app import RestApp
from regiongate.state.fleet import Fleet
from tests.support.procs import DEMO_KEY
from tests.support.worlds import world

FAST = '{ kind = "simulated", ttft_ms = 1, tokens_per_s = 5000 }'
NOISE = [0.0, 17.0, -11.0, 23.0, -19.0, 5.0, -7.0, 13.0, -23.0, 2.0]  # ms, deterministic
MSG = [{"role": "user", "content": "hi"}]


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _feed(fleet: Fleet, region: str, base: float, prompts: range, clock: Clock) -> None:
    """Observed TTFTs of a server with ``base`` ms plus 0.125 ms per prompt token, plus noise."""
    dep = fleet.deployments[("grok-4", region)]
    for i, p in enumerate(prompts):
        clock.t += 0.1
        fleet.record_ttft(dep, base + 0.125 * p + NOISE[i % len(NOISE)], None, p, 0)


async def _routed(app: RestApp, n: int) -> tuple[list[str], list[dict[str, object]]]:
    transport = httpx.ASGITransport(app=app)
    http = httpx.AsyncClient(transport=transport, base_url="http://localhost")
    client = openai.AsyncOpenAI(
        base_url="http://localhost/v1", api_key=DEMO_KEY, http_client=http, max_retries=0
    )
    regions, rows = [], []
    async with http:
        for _ in range(n):
            raw = await client.chat.completions.with_raw_response.create(
                model="grok-4", messages=MSG, extra_headers={"x-regiongate-explain": "1"}
            )
            regions.append(raw.headers["x-regiongate-region"])
            rows = json.loads(raw.headers["x-regiongate-explain"])
    return regions, rows


def _gain_and_margin(rows: list[dict[str, object]]) -> tuple[float, float]:
    by = {r["region"]: r for r in rows}
    east, west = by["us-east-1"], by["us-west-2"]
    gain = float(east["estimate_ms"]) - float(west["estimate_ms"])  # type: ignore[arg-type]
    return gain, margin_ms(float(east["error_ms"]), float(west["error_ms"]))  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_real_gateway_moves_traffic_only_when_the_gain_beats_the_margin() -> None:
    cfg = parse_config(world({"us-east-1": [FAST], "us-west-2": [FAST]}))
    rt = build_runtime(cfg, env={"REGIONGATE_DEMO_API_KEY": DEMO_KEY})
    clock = Clock()
    rt.fleet.clock = clock
    app = RestApp(rt)
    extra_rtt = (
        rt.fleet.snapshot().gateway_rtt_ms["us-west-2"] - rt.fleet.snapshot().gateway_rtt_ms["us-east-1"]
    )

    # us-east-1 (nearest) served long prompts lately, us-west-2 short ones: their raw TTFTs differ by
    # ~350 ms, which the old smoothed-TTFT estimate took for load. The servers are equal but for a base
    # 10 ms below the extra round trip in us-west-2: a real gain, smaller than the margin.
    _feed(rt.fleet, "us-east-1", 150.0, range(2000, 4000, 50), clock)
    _feed(rt.fleet, "us-west-2", 150.0 - extra_rtt - 10.0, range(50, 450, 10), clock)
    regions, rows = await _routed(app, 10)
    gain, margin = _gain_and_margin(rows)
    assert 0.0 < gain < margin, (gain, margin)
    assert set(regions) == {"us-east-1"}  # noise-sized gains never move traffic

    # us-east-1 really got slower: a lasting rise of its base TTFT, now well beyond the margin.
    _feed(rt.fleet, "us-east-1", 450.0, range(2000, 4000, 50), clock)
    regions, rows = await _routed(app, 10)
    gain, margin = _gain_and_margin(rows)
    assert gain > margin, (gain, margin)
    assert set(regions) == {"us-west-2"}
    west = next(r for r in rows if r["region"] == "us-west-2")
    assert str(west["reason"]).startswith("rank 1 (spillover)")
    await rt.aclose()
