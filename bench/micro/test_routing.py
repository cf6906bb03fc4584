"""The routing decision for 30 regions x 100 models: building the snapshot the policy reads
(``Fleet.snapshot_for``) and the decision itself (``decide``: the ranking and the first candidate; later
candidates are built only when a failover walks on), separately and together."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from regiongate.core import (
    GLOBAL,
    Access,
    Endpoint,
    EndpointKind,
    Grant,
    Location,
    Plan,
    RouteRequest,
    decide,
)
from regiongate.state.fleet import Fleet

MODEL = "model-042"


def test_snapshot_for(benchmark: BenchmarkFixture, big_fleet: Fleet) -> None:
    snap = benchmark(big_fleet.snapshot_for, MODEL)
    assert len(snap.by_model[MODEL]) == 30


def test_decide_global(benchmark: BenchmarkFixture, big_fleet: Fleet) -> None:
    snap = big_fleet.snapshot_for(MODEL)
    plan = benchmark(decide, snap, RouteRequest(MODEL, GLOBAL))
    assert isinstance(plan, Plan) and len(plan.candidates) == 30


def test_decide_global_every_candidate(benchmark: BenchmarkFixture, big_fleet: Fleet) -> None:
    """The whole ranked plan materialised (what a failover through all 30 regions would walk); a request
    normally needs only the first candidate."""
    snap = big_fleet.snapshot_for(MODEL)
    cands = benchmark(lambda: decide(snap, RouteRequest(MODEL, GLOBAL)).candidates)  # type: ignore[union-attr]
    assert len(cands) == 30


def test_decide_client_location(benchmark: BenchmarkFixture, big_fleet: Fleet) -> None:
    """A trusted proxy told where the client is: a great-circle distance per region."""
    snap = big_fleet.snapshot_for(MODEL)
    plan = benchmark(decide, snap, RouteRequest(MODEL, GLOBAL, Location(48.85, 2.35)))
    assert isinstance(plan, Plan)


def test_decide_zone_with_grants(benchmark: BenchmarkFixture, big_fleet: Fleet) -> None:
    """A zone endpoint and a team with 10 grants: the filtering paths."""
    grants = tuple(Grant(f"model-{i:03d}") for i in range(36, 46))
    req = RouteRequest(MODEL, Endpoint(EndpointKind.ZONE, "z2"), None, Access("t", grants))
    plan = benchmark(decide, big_fleet.snapshot_for(MODEL), req)
    assert isinstance(plan, Plan) and len(plan.candidates) == 6


def test_snapshot_and_decide(benchmark: BenchmarkFixture, big_fleet: Fleet) -> None:
    """What the gateway does per request (``Gateway.plan``)."""
    req = RouteRequest(MODEL, GLOBAL)
    plan = benchmark(lambda: decide(big_fleet.snapshot_for(MODEL), req))
    assert isinstance(plan, Plan)
