"""What a backend says before its first byte, honoured (openai SDK, ``max_retries=0``, fault-injection
backends): 429 with Retry-After / retry-after-ms marks that backend busy for that long and moves on; a
transient 5xx or a reset is tried once more on the same backend only when the endpoint allows no other;
other 4xx are relayed, never retried; an ejected backend gets one trial when its ejection ends."""

from __future__ import annotations

import time
from collections.abc import Callable

import openai
import pytest

from tests.support.clients import MSG, client
from tests.support.faults import Fault, FaultServer
from tests.support.procs import Proc
from tests.support.worlds import http_backend, world


def ask(gw: Proc, host: str | None = None) -> tuple[str, float]:
    """(region that answered, seconds it took)."""
    started = time.monotonic()
    raw = client(gw, host, max_retries=0).chat.completions.with_raw_response.create(
        model="grok-4", messages=MSG
    )
    return raw.headers["x-regiongate-region"], time.monotonic() - started


def refused(gw: Proc, host: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, host, max_retries=0).chat.completions.create(model="grok-4", messages=MSG)
    return e.value


def _two_regions(start_gateway: Callable[..., Proc], east: FaultServer, west: FaultServer) -> Proc:
    return start_gateway(
        world({"us-east-1": [http_backend(east.url)], "us-west-2": [http_backend(west.url)]})
    )


@pytest.mark.parametrize(
    "fault",
    [Fault("status", status=429, retry_after="30"), Fault("status", status=429, retry_after_ms="30000")],
)
def test_429_with_retry_after_marks_the_backend_busy_and_moves_on(
    fault: Fault, start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    east.script(fault)
    gw = _two_regions(start_gateway, east, west)
    region, took = ask(gw)
    assert region == "us-west-2"
    print(f"\nMEASURED 429 {fault.retry_after or fault.retry_after_ms} -> next region in {took:.3f}s")
    for _ in range(3):  # no hammering: nothing more goes to the busy backend while it said it is busy
        assert ask(gw)[0] == "us-west-2"
    assert len(east.posts()) == 1


def test_429_without_retry_after_moves_on_and_keeps_the_backend(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    east.script(Fault("status", status=429))
    gw = _two_regions(start_gateway, east, west)
    assert ask(gw)[0] == "us-west-2"
    assert ask(gw)[0] == "us-east-1"  # not ejected, not paused
    assert len(east.posts()) == 2


def test_429_on_a_one_backend_regional_endpoint_says_when_to_retry(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    east.script(Fault("status", status=429, retry_after_ms="2500"))
    gw = _two_regions(start_gateway, east, west)
    e = refused(gw, "us-east-1.localhost")
    assert e.status_code == 503 and 2.0 <= float(e.response.headers["retry-after"]) <= 2.5
    assert len(east.posts()) == 1 and west.posts() == []


@pytest.mark.parametrize("fault", [Fault("status", status=500), Fault("reset")])
def test_transient_failure_on_the_only_backend_is_retried_once(
    fault: Fault, start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    east.script(fault)  # once, then healthy
    gw = _two_regions(start_gateway, east, west)
    region, took = ask(gw, "us-east-1.localhost")
    assert region == "us-east-1" and len(east.posts()) == 2 and west.posts() == []
    print(
        f"\nMEASURED {fault.kind} {fault.status} once on a one-backend regional endpoint -> retried in {took:.3f}s"
    )
    if fault.kind == "reset":
        return  # (a reset on a pooled connection right after the write may also be a stale one: upstream.h1)
    east.script(fault, fault)  # twice: one retry only, then the backend's own status and message
    e = refused(gw, "us-east-1.localhost")
    assert e.status_code == 500 and len(east.posts()) == 4
    assert "answered HTTP 500: injected HTTP 500. Tried: " in e.message


def test_transient_failure_with_another_backend_moves_on_without_a_retry(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    east.script(Fault("status", status=500))
    gw = _two_regions(start_gateway, east, west)
    assert ask(gw)[0] == "us-west-2" and len(east.posts()) == 1


@pytest.mark.parametrize("status", [400, 404, 422])
def test_4xx_is_relayed_and_never_retried(
    status: int, start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    east.default = Fault("status", status=status)
    gw = _two_regions(start_gateway, east, west)
    e = refused(gw, "localhost")
    assert e.status_code == status and len(east.posts()) == 1 and west.posts() == []


def test_408_moves_on(start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]) -> None:
    east, west, _ = fault_servers
    east.script(Fault("status", status=408))
    gw = _two_regions(start_gateway, east, west)
    assert ask(gw)[0] == "us-west-2"


def test_a_backend_that_read_the_request_and_went_silent_is_not_sent_it_twice(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    gw = _two_regions(start_gateway, east, west)
    assert ask(gw)[0] == "us-east-1"  # a pooled connection to east now exists
    east.script(Fault("hold_close", seconds=0.5))
    assert ask(gw)[0] == "us-west-2"
    assert len(east.posts()) == 2  # the held request was not sent again on a fresh connection


def test_flapping_backend_gets_traffic_back_after_one_trial(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    health = "[health]\nprobe_interval_s = 0\nconsecutive_failures = 1\nbase_ejection_s = 0.5\n"
    backends = {"us-east-1": [http_backend(east.url)], "us-west-2": [http_backend(west.url)]}
    gw = start_gateway(world(backends, probes=True, extra=health))
    east.flap(1.0)
    assert ask(gw)[0] == "us-west-2"  # 503: ejected for 0.5 s
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and ask(gw)[0] != "us-east-1":
        time.sleep(0.1)
    served_east = ask(gw)[0]
    assert served_east == "us-east-1"
    # Each trial after an ejection was one request: east never saw two at once while flapping.
    assert all(r.fault.kind in ("status", "ok") for r in east.posts())
