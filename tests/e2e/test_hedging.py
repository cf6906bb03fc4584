"""Hedging a slow first byte (``[hedging]``, ``regiongate.pipeline.hedge``): once a stream has waited past
its early mark, the next candidate in scope is started beside it and the first to answer is kept; the other
is cancelled, its lease freed and the hedge counted. Off by default; ``x-regiongate-hedge: off`` or
``x-regiongate-continue: off`` opts a request out. The slow backends wait on events, not clocks."""

from __future__ import annotations

import threading
from collections.abc import Callable

from regiongate.state.first_byte import MIN_SAMPLES
from tests.support.clients import MSG, client, in_use
from tests.support.faults import WHOLE, Fault, FaultServer, grpc_gateway, grpc_text
from tests.support.procs import Proc, wait_until
from tests.support.scale import metric
from tests.support.worlds import http_backend, world

HEDGING = "[hedging]\nenabled = true\n"


def east_west(east: FaultServer, west: FaultServer) -> str:
    """us-east-1 (nearest) and us-west-2 on two fault servers, hedging on."""
    return world(
        {"us-east-1": [http_backend(east.url)], "us-west-2": [http_backend(west.url)]}, extra=HEDGING
    )


def stream(gw: Proc, host: str | None = None, headers: dict[str, str] | None = None) -> tuple[str, str, str]:
    """(region, the x-regiongate-hedge header or "", the answer's text) of one streamed completion."""
    with client(gw, host).chat.completions.with_streaming_response.create(
        model="grok-4", messages=MSG, stream=True, extra_headers=headers or {}
    ) as resp:
        region, hedge = resp.headers["x-regiongate-region"], resp.headers.get("x-regiongate-hedge", "")
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    return region, hedge, text


def warm(gw: Proc, host: str | None = None) -> None:
    for _ in range(MIN_SAMPLES):  # the first region learns its usual TTFT (a few ms): the mark is its floor
        stream(gw, host)


def hedges(gw: Proc, region: str, outcome: str) -> float:
    return (
        metric(gw.url + "/metrics", "regiongate_hedges_total", {"region": region, "outcome": outcome}) or 0.0
    )


def idle(gw: Proc) -> None:
    """Every lease freed and no backend with a request in flight: the cancelled attempt cleaned up."""
    wait_until(lambda: sum(in_use(gw).values()) == 0, what="leases freed")
    wait_until(
        lambda: (
            metric(gw.url + "/metrics", "regiongate_backend_in_flight", {"backend": "us-east-1/grok-4/0"})
            == 0
        )
    )
    assert sum(in_use(gw).values()) == 0


def after_requests(server: FaultServer, n: int, then: Callable[[], None]) -> threading.Thread:
    """Run ``then`` once ``server`` has read ``n`` requests (from a thread: the client call blocks)."""

    def run() -> None:
        wait_until(lambda: len(server.posts()) >= n, what="the hedge's request")
        then()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_slow_first_byte_is_hedged_and_the_slow_attempt_cancelled(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    gw = start_gateway(east_west(east, west))
    warm(gw)
    assert west.posts() == []
    east.script(Fault("never"))  # reads the request, never answers: only a hedge can rescue it early
    region, hedge, text = stream(gw)
    assert (region, hedge, text) == ("us-west-2", "won", WHOLE)
    assert len(west.posts()) == 1 and len(east.posts()) == MIN_SAMPLES + 1
    idle(gw)
    assert hedges(gw, "us-east-1", "won") == 1 and hedges(gw, "us-east-1", "lost") == 0
    # the next request starts in its first region again, unhedged
    assert stream(gw) == ("us-east-1", "", WHOLE)


def test_the_hedge_is_cancelled_when_the_slow_attempt_answers_first(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    gw = start_gateway(east_west(east, west))
    warm(gw)
    gate = threading.Event()
    east.script(Fault("gate", gate=gate))
    west.script(Fault("never"))
    releaser = after_requests(west, 1, gate.set)  # the hedge reached west: now east answers
    assert stream(gw) == ("us-east-1", "lost", WHOLE)
    releaser.join(5)
    wait_until(lambda: sum(in_use(gw).values()) == 0, what="the hedge's lease freed")
    wait_until(
        lambda: (
            metric(gw.url + "/metrics", "regiongate_backend_in_flight", {"backend": "us-west-2/grok-4/0"})
            == 0
        )
    )
    assert hedges(gw, "us-east-1", "lost") == 1 and hedges(gw, "us-east-1", "won") == 0


def test_hedging_is_off_by_default_and_a_request_may_opt_out(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    backends = {"us-east-1": [http_backend(east.url)], "us-west-2": [http_backend(west.url)]}
    cases: list[tuple[str, dict[str, str]]] = [
        ("", {}),  # no [hedging]: off
        (HEDGING, {"x-regiongate-hedge": "off"}),
        (HEDGING, {"x-regiongate-continue": "off"}),  # one generation at a time: not hedged either
    ]
    for extra, headers in cases:
        gw = start_gateway(world(backends, extra=extra))
        warm(gw)
        gate = threading.Event()
        east.script(Fault("gate", gate=gate))
        # East answers once the first request of the next case could have been hedged many times over: the
        # mark is 0.25 s; a hedge would have reached west by then (its request is read at once).
        timer = threading.Timer(1.0, gate.set)
        timer.start()
        assert stream(gw, headers=headers) == ("us-east-1", "", WHOLE), (extra, headers)
        timer.join()
        assert west.posts() == [], (extra, headers)
        gw.stop()


def test_a_regional_endpoint_hedges_only_inside_its_region(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    a, b, west = fault_servers
    gw = start_gateway(
        world(
            {"us-east-1": [http_backend(a.url), http_backend(b.url)], "us-west-2": [http_backend(west.url)]},
            extra=HEDGING,
        )
    )
    host = "us-east-1.localhost"
    warm(gw, host)
    seen = len(a.posts()) + len(b.posts())
    gates = {id(a): threading.Event(), id(b): threading.Event()}
    a.script(Fault("gate", gate=gates[id(a)]))
    b.script(Fault("gate", gate=gates[id(b)]))

    def release_the_later() -> None:  # both were asked: the attempt and its hedge, both in us-east-1
        wait_until(lambda: len(a.posts()) + len(b.posts()) == seen + 2, what="the hedge's request")
        later = max((a, b), key=lambda s: s.posts()[-1].at)
        gates[id(later)].set()

    t = threading.Thread(target=release_the_later, daemon=True)
    t.start()
    assert stream(gw, host) == ("us-east-1", "won", WHOLE)
    t.join(5)
    assert west.posts() == []
    for g in gates.values():
        g.set()
    wait_until(lambda: sum(in_use(gw).values()) == 0, what="leases freed")
    assert hedges(gw, "us-east-1", "won") == 1


def test_a_grpc_stream_is_hedged_through_the_same_plan(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    gw, c = grpc_gateway(
        start_gateway,
        east_west(east, west),
    )
    try:
        for _ in range(MIN_SAMPLES):
            grpc_text(c)
        assert west.posts() == []
        east.script(Fault("never"))
        text, last = grpc_text(c)
        assert text == WHOLE and last.finish_reason == "REASON_STOP"
    finally:
        c.close()
    assert len(west.posts()) == 1
    idle(gw)
    assert hedges(gw, "us-east-1", "won") == 1
