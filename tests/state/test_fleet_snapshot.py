"""``Fleet.snapshot_for`` keeps a deployment's state while nothing it is built from changed: the snapshot it
hands out must be the one a fresh build gives (``Fleet.snapshot``, which keeps nothing) at every instant,
across everything that moves a state with time alone (an ejection's end, a Retry-After's end, a TTFT
estimate relaxing while idle) and everything that moves it by a write (leases, in-flight counts, probes,
scraped load, samples, a fit set by hand), with a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from regiongate.app.runtime import build_fleet
from regiongate.config import parse_config
from regiongate.core import ALL_ACCESS, GLOBAL, Location, Plan, RouteRequest, decide
from regiongate.state.fleet import Fleet
from regiongate.state.outlier import Ewma
from tests.support.worlds import world

HTTP = '{ kind = "http", url = "http://127.0.0.1:9/v1" }'
REQUESTS = [
    RouteRequest("grok-4", GLOBAL, None, ALL_ACCESS),
    RouteRequest("grok-4", GLOBAL, Location(50.11, 8.68), ALL_ACCESS, 400),
]


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _fleet() -> tuple[Fleet, Clock]:
    cfg = parse_config(world({"us-east-1": [HTTP, HTTP], "us-west-2": [HTTP], "eu-west-1": [HTTP]}))
    fleet = build_fleet(cfg)
    clock = Clock()
    fleet.clock = clock
    return fleet, clock


def _same_as_rebuilt(fleet: Fleet) -> None:
    kept, fresh = fleet.snapshot_for("grok-4"), fleet.snapshot()
    assert kept == fresh
    for req in REQUESTS:
        a, b = decide(kept, req, explain=True), decide(fresh, req, explain=True)
        assert isinstance(a, Plan) and isinstance(b, Plan)
        assert a.candidates == b.candidates and a.considered == b.considered


def test_an_unchanged_fleet_hands_out_its_last_snapshot_and_a_change_rebuilds_only_its_deployment() -> None:
    fleet, clock = _fleet()
    first = fleet.snapshot_for("grok-4")
    clock.t += 30.0  # nothing measured: time alone changes nothing
    assert fleet.snapshot_for("grok-4") is first
    fleet.deployments[("grok-4", "us-west-2")].backends[0].in_flight += 1
    second = fleet.snapshot_for("grok-4")
    assert second is not first and second.deployment("grok-4", "us-west-2").backends[0].in_flight == 1  # type: ignore[union-attr]
    assert second.deployment("grok-4", "eu-west-1") is first.deployment("grok-4", "eu-west-1")
    _same_as_rebuilt(fleet)


# us-east-1 has two backends, the others one (the fleet reads a single backend's inputs apart).
REGIONS = pytest.mark.parametrize("region", ["us-west-2", "us-east-1"])


@REGIONS
def test_ejections_and_their_ends_give_the_state_a_fresh_build_gives(region: str) -> None:
    fleet, clock = _fleet()
    east = fleet.deployments[("grok-4", region)].backends[-1]
    _same_as_rebuilt(fleet)
    for _ in range(3):
        fleet.record_attempt(east)
        fleet.record_failure(east)  # the third ejects it for 5 s
    _same_as_rebuilt(fleet)
    until = east.outlier.ejected_until
    for t in (until - 1.0, until - 1e-9, until, until + 0.5):  # up to the instant it ends, and after
        clock.t = t
        _same_as_rebuilt(fleet)
    fleet.record_attempt(east)  # half-open: the one trial runs, the others avoid it again
    _same_as_rebuilt(fleet)
    fleet.record_failure(east)  # ejected again at once, for twice as long
    _same_as_rebuilt(fleet)
    clock.t = east.outlier.ejected_until
    _same_as_rebuilt(fleet)
    clock.t = until - 1.0  # a clock set back (tests do it): back inside the first ejection
    _same_as_rebuilt(fleet)
    clock.t = east.outlier.ejected_until + 1.0
    fleet.record_attempt(east)
    fleet.record_success(east)
    _same_as_rebuilt(fleet)


@REGIONS
def test_retry_after_ends_give_the_state_a_fresh_build_gives(region: str) -> None:
    fleet, clock = _fleet()
    west = fleet.deployments[("grok-4", region)].backends[-1]
    start = clock.t
    _same_as_rebuilt(fleet)
    fleet.record_busy(west, 2.0)
    for t in (start, start + 1.999, start + 2.0, start + 2.5):
        clock.t = t
        _same_as_rebuilt(fleet)
    fleet.record_busy(west, 1.0)  # a second 429 from the later instant
    for t in (start + 3.0, start + 3.5, start + 4.0):
        clock.t = t
        _same_as_rebuilt(fleet)


def test_ttft_samples_and_their_decay_while_idle_give_the_state_a_fresh_build_gives() -> None:
    fleet, clock = _fleet()
    east = fleet.deployments[("grok-4", "us-east-1")]
    west = fleet.deployments[("grok-4", "us-west-2")]
    _same_as_rebuilt(fleet)
    fleet.record_ttft(east, 120.0, east.backends[0], prompt=400)
    _same_as_rebuilt(fleet)  # at the sample's instant: the fit itself
    start = clock.t
    for dt in (1e-6, 1.0, 60.0, 600.0, 6000.0):  # the base relaxes toward the typical one
        clock.t = start + dt
        _same_as_rebuilt(fleet)
    fleet.record_ttft(west, 300.0, west.backends[0])  # the typical numbers move for the third region
    _same_as_rebuilt(fleet)
    clock.t += 5.0
    fleet.record_ttft(west, 280.0, west.backends[0], queued=2)  # a sample sent behind a queue
    _same_as_rebuilt(fleet)
    east.ttft.base = 50.0  # a fit set by hand
    _same_as_rebuilt(fleet)
    clock.t = east.ttft.at  # back at the last sample's instant, where the state does not move with time
    _same_as_rebuilt(fleet)
    east.ttft.error = 3.0  # by hand, at the same instant
    _same_as_rebuilt(fleet)
    east.ttft.slope = 0.5
    _same_as_rebuilt(fleet)


@REGIONS
def test_leases_probes_and_scraped_load_give_the_state_a_fresh_build_gives(region: str) -> None:
    fleet, clock = _fleet()
    east = fleet.deployments[("grok-4", region)]
    eu = fleet.deployments[("grok-4", "eu-west-1")]
    _same_as_rebuilt(fleet)
    lease = asyncio.run(fleet.capacity.acquire(eu.key, eu.limit))
    assert lease is not None
    _same_as_rebuilt(fleet)
    asyncio.run(fleet.capacity.release(lease))
    _same_as_rebuilt(fleet)
    east.backends[-1].in_flight += 2
    _same_as_rebuilt(fleet)
    east.backends[-1].probe_healthy = False
    _same_as_rebuilt(fleet)
    east.backends[-1].rtt = Ewma(30.0)
    east.backends[-1].rtt.add(40.0, clock.t)
    _same_as_rebuilt(fleet)
    clock.t += 1.0
    east.backends[-1].rtt.add(80.0, clock.t)  # the same object, a new value
    _same_as_rebuilt(fleet)
    # scraped load (health.load), then limits and tier reserves, one field at a time
    for d, name, value in [
        (eu, "queue_depth", 3),
        (eu, "reported_free", 1),
        (eu, "reported_free", 0),
        (east, "limit", 2),
        (east, "priority_reserve", 1),
        (east, "flex_limit", 1),
    ]:
        setattr(d, name, value)
        _same_as_rebuilt(fleet)
