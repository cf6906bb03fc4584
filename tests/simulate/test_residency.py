"""Residency under random worlds: no policy ever serves a request outside the region or zone its endpoint
or key allows, whatever the fleet, the traffic mix and the outages; and the per-request check is live."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regiongate.core import RouteError, RouteRequest, WorldSnapshot
from regiongate.core.policy import Candidate, Estimate, Plan
from regiongate.simulate import runner
from regiongate.simulate.runner import SimResult, simulate
from tests.support.simulate_worlds import config, metros, scenario

MODELS = ["m1", "m2"]
ALL_POLICIES = ["gateway", "nearest-only", "least-loaded"]


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(2, 4))
    regions = [
        (
            f"r{i}",
            draw(st.floats(-60, 60)),
            draw(st.floats(-170, 170)),
            draw(st.sampled_from(["z1", "z2"])),
        )
        for i in range(n)
    ]
    deployments = []
    for rid, *_ in regions:
        models = draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=2, unique=True))
        limit = draw(st.integers(1, 6))
        deployments.append(
            {
                "region": rid,
                "models": models,
                "limit": limit,
                "slots": draw(st.integers(1, limit)),
                "ttft_ms": draw(st.sampled_from([0, 80, 300])),
                "tokens_per_s": draw(st.sampled_from([50, 200])),
            }
        )
    offered = sorted({m for d in deployments for m in d["models"]})
    shares = draw(st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4).filter(lambda s: sum(s) > 0.1))
    events = []
    for _ in range(draw(st.integers(0, 2))):
        start = draw(st.integers(0, 20))
        events.append(
            {
                "kind": draw(st.sampled_from(["outage", "capacity"])),
                "region": draw(st.sampled_from([r[0] for r in regions])),
                "start": start,
                "end": draw(st.integers(start + 1, 24)),
                "factor": draw(st.sampled_from([0.0, 0.5])),
            }
        )
    places = draw(st.lists(st.tuples(st.floats(-60, 60), st.floats(-170, 170)), min_size=1, max_size=3))
    return {
        "regions": regions,
        "deployments": deployments,
        "models": {m: 1.0 for m in offered},
        "endpoints": dict(zip(["global", "zone", "region", "fenced"], shares, strict=False)),
        "events": events,
        "places": places,
        "seed": draw(st.integers(0, 1000)),
    }


def run_world(w: dict[str, Any], policies: list[str]) -> SimResult:
    """600 requests of the world ``worlds`` drew through ``policies``."""
    with tempfile.TemporaryDirectory() as tmp:
        csv = metros(
            Path(tmp) / "metros.csv",
            [(f"P{i}", "XX", "Somewhere", lat, lon, 1.0, 0.0) for i, (lat, lon) in enumerate(w["places"])],
        )
        sc = scenario(
            csv,
            w["models"],
            run={"requests": 400_000, "seed": w["seed"], "samples": 24, "policies": policies},
            traffic={"endpoints": w["endpoints"], "completion_tokens": {"dist": "exponential", "mean": 150}},
            events=w["events"],
        )
        return simulate(config(w["regions"], w["deployments"]), sc, requests=600)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_no_policy_ever_violates_residency(w: dict[str, Any]) -> None:
    r = run_world(w, ALL_POLICIES)
    for name, stats in r.stats.items():
        assert stats.violations == 0, name
        assert sum(stats.requests) == 600
        assert sum(stats.served) + sum(stats.rejected) + sum(stats.failed) == 600, name


def _ignores_scope(snapshot: WorldSnapshot, request: RouteRequest) -> Plan | RouteError:
    """A broken policy: the first region with room, whatever the endpoint says."""
    for d in snapshot.by_model.get(request.model, ()):
        if d.free > 0:
            c = Candidate(
                d.region, tuple(b.id for b in d.backends), "nearest", Estimate(0.0, "x", 0.0), d.free
            )
            return Plan(request.model, (c,))
    return RouteError.capacity_exhausted(request.model, [], 1.0)


def test_the_residency_check_catches_a_policy_that_ignores_the_endpoint(
    tmp_path: Path, monkeypatch: Any
) -> None:
    cfg = config(
        [("r0", 0.0, 0.0, "z1"), ("r1", 0.0, 40.0, "z2")],
        [{"region": r, "models": ["m1"], "limit": 50} for r in ("r0", "r1")],
    )
    csv = metros(tmp_path / "metros.csv", [("Near r1", "XX", "Somewhere", 0.0, 40.0, 1.0, 0.0)])
    sc = scenario(csv, {"m1": 1.0}, traffic={"endpoints": {"region": 0.5, "zone": 0.5}})
    monkeypatch.setattr(runner, "make_policy", lambda name: _ignores_scope)
    r = simulate(cfg, sc, requests=200)
    # Every request comes from next to r1 and is scoped to r1 or its zone; the broken policy sends
    # them all to r0 while it has room.
    assert r.stats["gateway"].violations > 0
