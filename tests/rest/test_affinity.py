"""Prompt-cache affinity through a real gateway process: a conversation's next turn goes back to the region
that served its prefix (when it is near-equal to the best and has room), never outside the endpoint's scope,
and ``x-regiongate-explain`` says affinity changed the pick. With ``[affinity] enabled = false`` the same
turn goes to the nearest region."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.rest.test_tiers import held
from tests.support.procs import DEMO_KEY, Proc
from tests.support.worlds import world

FAST = '{ kind = "simulated", ttft_ms = 5, tokens_per_s = 4000 }'
SLOW = '{ kind = "simulated", ttft_ms = 5, tokens_per_s = 2 }'
# A client in Kansas, 0.9 ms nearer us-east-1 than us-west-2 by round trip: near-equal regions
KANSAS = "38.0,-98.9"
SYSTEM = {"role": "system", "content": "You answer questions about the history of maps. " * 40}


def config(enabled: bool) -> str:
    # us-east-1 holds 2 slots; slow backends let the test fill it and force turn 1 elsewhere
    text = world({"us-east-1": [SLOW], "us-west-2": [SLOW]}, limit=2)
    return text + f"\n[load]\nscrape_interval_s = 0\n\n[affinity]\nenabled = {str(enabled).lower()}\n"


def turn(gw: Proc, msgs: list[dict[str, str]], host: str = "localhost") -> httpx.Response:
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "grok-4", "messages": msgs, "max_tokens": 2},
        headers={
            "Authorization": f"Bearer {DEMO_KEY}",
            "Host": host,
            "x-regiongate-explain": "1",
            "x-regiongate-client-location": KANSAS,
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r


def conversation(gw: Proc) -> tuple[httpx.Response, list[dict[str, str]]]:
    first = [SYSTEM, {"role": "user", "content": "Who drew the first world map?"}]
    with held(gw) as hold:
        assert [hold("default"), hold("default")] == ["us-east-1", "us-east-1"]
        r1 = turn(gw, first)  # the nearest region is full: turn 1 spills
    assert r1.headers["x-regiongate-region"] == "us-west-2"
    nxt = [
        *first,
        {"role": "assistant", "content": "Anaximander, they say."},
        {"role": "user", "content": "And the second?"},
    ]
    return r1, nxt


def test_turn_two_returns_to_the_warm_region(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway(config(enabled=True))
    _, nxt = conversation(gw)
    r2 = turn(gw, nxt)  # us-east-1 is free again, but us-west-2 holds the prefix
    assert r2.headers["x-regiongate-region"] == "us-west-2"
    explain = r2.headers["x-regiongate-explain"]
    assert "prompt-cache affinity" in explain and "would go to us-east-1" in explain
    # a regional endpoint is the scope: the warm cache elsewhere does not move it
    pinned = turn(gw, nxt, host="us-east-1.localhost")
    assert pinned.headers["x-regiongate-region"] == "us-east-1"
    # a different conversation has no affinity: nearest
    other = turn(gw, [SYSTEM, {"role": "user", "content": "Who made the first globe?"}])
    assert other.headers["x-regiongate-region"] == "us-east-1"


def test_without_affinity_turn_two_goes_back_to_the_nearest(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway(config(enabled=False))
    _, nxt = conversation(gw)
    r2 = turn(gw, nxt)
    assert r2.headers["x-regiongate-region"] == "us-east-1"
    assert "affinity" not in r2.headers["x-regiongate-explain"]
