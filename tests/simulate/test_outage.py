"""A scheduled outage must move all traffic out of the region for exactly its window, under every policy;
requests pinned to the region are refused, never sent elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from regiongate.simulate.runner import simulate
from tests.support.simulate_worlds import config, metros, scenario

N = 6_000  # 100 requests/s on a day compressed to 60 s: each hour of the day lasts 2.5 s


@pytest.fixture
def two_regions(tmp_path: Path) -> tuple[object, object]:
    cfg = config(
        [("a", 0.0, 0.0, "z"), ("b", 0.0, 20.0, "z")],
        [
            {"region": "a", "models": ["m"], "limit": 500, "ttft_ms": 200, "tokens_per_s": 100},
            {"region": "b", "models": ["m"], "limit": 500, "ttft_ms": 200, "tokens_per_s": 100},
        ],
    )
    csv = metros(tmp_path / "metros.csv", [("Near A", "XX", "Nowhere", 0.0, 0.0, 1.0, 0.0)])
    sc = scenario(
        csv,
        {"m": 1.0},
        run={
            "requests": 8_640_000,
            "seed": 3,
            "samples": 24,
            "policies": ["gateway", "nearest-only", "least-loaded"],
        },
        traffic={"endpoints": {"global": 0.7, "region": 0.3}},
        events=[{"kind": "outage", "region": "a", "start": "06:00", "end": "12:00"}],
    )
    return cfg, sc


def test_outage_shifts_all_traffic(two_regions: tuple[object, object]) -> None:
    cfg, sc = two_regions
    r = simulate(cfg, sc, requests=N)  # type: ignore[arg-type]
    a, b = r.world.region_ids.index("a"), r.world.region_ids.index("b")
    assert r.world.duration_s == pytest.approx(60.0)
    for name, st in r.stats.items():
        outage = range(6, 12)  # buckets of one hour each, wholly inside 06:00-12:00
        for bucket in outage:
            assert st.routed_bucket[bucket][a] == 0, (name, bucket)
            assert st.routed_bucket[bucket][b] > 0, (name, bucket)
            assert st.utilisation(a)[bucket] is None  # no capacity while down
        # Regional requests for a (30%) have nowhere to go during the outage: refused, not moved.
        assert st.reject_codes, name
        assert st.violations == 0, name
        # After the outage a takes traffic again.
        assert sum(st.routed_bucket[bk][a] for bk in range(13, 24)) > 0, name
        # Every request is accounted for; in-flight work in a at 06:00 is lost.
        assert sum(st.served) + sum(st.rejected) + sum(st.failed) == N, name
        assert sum(st.failed) + st.interrupted > 0, name
    gw = r.stats["gateway"]
    # With room everywhere the gateway keeps clients in their nearest region outside the outage.
    before = sum(gw.routed_bucket[bk][a] for bk in range(6))
    assert before == sum(gw.routed_bucket[bk][a] + gw.routed_bucket[bk][b] for bk in range(6))
    # The nearest-only baseline never spills on capacity; only the outage sends it to b.
    near = r.stats["nearest-only"]
    assert sum(near.routed_bucket[bk][b] for bk in range(24) if bk not in range(6, 12)) <= sum(
        near.routed_bucket[bk][b] for bk in (5, 12)
    )
