"""The adaptive first-byte budget (``regiongate.state.first_byte``): with the default configuration, a
region whose first token is far slower than it usually is gets abandoned for the next one after the
learned budget, not after ``first_byte_s = 30``; the last candidate still waits; a caller's
``x-regiongate-ttft-budget-ms`` tightens it."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import openai

from regiongate.state.first_byte import MIN_SAMPLES
from tests.support.clients import MSG, client
from tests.support.faults import Fault, FaultServer
from tests.support.procs import DEMO_KEY, Proc
from tests.support.worlds import http_backend, world


def stream_region(
    gw: Proc, host: str | None = None, headers: dict[str, str] | None = None
) -> tuple[str, float]:
    started = time.monotonic()
    with client(gw, host, max_retries=0).chat.completions.with_streaming_response.create(
        model="grok-4", messages=MSG, stream=True, extra_headers=headers or {}
    ) as resp:
        region = resp.headers["x-regiongate-region"]
        for _ in resp.parse():
            pass
    return region, time.monotonic() - started


def test_a_region_far_slower_than_usual_is_left_after_the_learned_budget(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    gw = start_gateway(world({"us-east-1": [http_backend(east.url)], "us-west-2": [http_backend(west.url)]}))
    for _ in range(MIN_SAMPLES):  # its usual TTFT: a few ms
        assert stream_region(gw)[0] == "us-east-1"
    east.script(Fault("slow_first", seconds=20))
    region, took = stream_region(gw)
    assert region == "us-west-2"
    assert 4.5 < took < 15, took  # the 5 s floor of the budget, not the 30 s ceiling nor the 20 s
    print(f"\nMEASURED first token 20 s slow on global -> next region after {took:.2f}s")


def test_the_last_candidate_waits_past_the_budget(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    gw = start_gateway(world({"us-east-1": [http_backend(east.url)], "us-west-2": [http_backend(west.url)]}))
    for _ in range(MIN_SAMPLES):
        stream_region(gw, "us-east-1.localhost")
    east.script(Fault("slow_first", seconds=6))
    region, took = stream_region(gw, "us-east-1.localhost")
    assert region == "us-east-1" and took >= 6


def test_the_callers_budget_tightens_it(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    gw = start_gateway(world({"us-east-1": [http_backend(east.url)], "us-west-2": [http_backend(west.url)]}))
    east.script(Fault("slow_first", seconds=5))
    region, took = stream_region(gw, headers={"x-regiongate-ttft-budget-ms": "300"})
    assert region == "us-west-2" and took < 4.5
    print(
        f"\nMEASURED x-regiongate-ttft-budget-ms 300 with a 5 s first token -> next region after {took:.2f}s"
    )
    for bad in ("0", "-5", "abc", "1e9"):
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "grok-4", "messages": MSG, "stream": True},
            headers={"authorization": f"Bearer {DEMO_KEY}", "x-regiongate-ttft-budget-ms": bad},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "x-regiongate-ttft-budget-ms"


def test_a_keys_budget_tightens_it(start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]) -> None:
    east, west, _ = fault_servers
    team = '[[teams]]\nname = "quick"\nkeys = [{ id = "quick", env = "QUICK_KEY", ttft_budget_ms = 300 }]'
    cfg = world({"us-east-1": [http_backend(east.url)], "us-west-2": [http_backend(west.url)]}, extra=team)
    gw = start_gateway(cfg, env={"QUICK_KEY": "rg-test-quick-key"})
    east.script(Fault("slow_first", seconds=5))
    quick = openai.OpenAI(base_url=gw.url + "/v1", api_key="rg-test-quick-key", max_retries=0)
    started = time.monotonic()
    with quick.chat.completions.with_streaming_response.create(
        model="grok-4", messages=MSG, stream=True
    ) as resp:
        region = resp.headers["x-regiongate-region"]
        for _ in resp.parse():
            pass
    took = time.monotonic() - started
    assert region == "us-west-2" and took < 4.5
    print(f"\nMEASURED a key's ttft_budget_ms = 300 with a 5 s first token -> next region after {took:.2f}s")
    # A request's own budget may tighten the key's further, never loosen it: 10 s asked, 300 ms kept.
    east.script(Fault("slow_first", seconds=5))
    started = time.monotonic()
    with quick.chat.completions.with_streaming_response.create(
        model="grok-4", messages=MSG, stream=True, extra_headers={"x-regiongate-ttft-budget-ms": "10000"}
    ) as resp:
        assert resp.headers["x-regiongate-region"] == "us-west-2"
        for _ in resp.parse():
            pass
    assert time.monotonic() - started < 4.5
