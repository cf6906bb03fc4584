"""The one-pass forms the policy uses per request say what the per-region rules say: ``scope.within``
is ``scope.in_scope`` for each region, ``tiers.views`` is ``tiers.view`` of each deployment, and
``geo.rtts_from_distance_ms`` is ``rtt_from_distance_ms`` of each location."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from regiongate.core import DeploymentState, Endpoint, EndpointKind, Location, Tier, scope
from regiongate.core.geo import rtt_from_distance_ms, rtts_from_distance_ms
from regiongate.core.request import Access
from regiongate.core.tiers import view, views
from tests.core.test_policy import DEMO_REGIONS

REGION_IDS = sorted(DEMO_REGIONS)
ZONES = sorted({r.zone for r in DEMO_REGIONS.values()})
endpoints = st.one_of(
    st.just(Endpoint(EndpointKind.GLOBAL, "")),
    st.sampled_from([*ZONES, "xx"]).map(lambda z: Endpoint(EndpointKind.ZONE, z)),
    st.sampled_from(REGION_IDS).map(lambda r: Endpoint(EndpointKind.REGION, r)),
)


@given(endpoints, st.sampled_from([None, *ZONES, "xx"]), st.lists(st.sampled_from(REGION_IDS), unique=True))
def test_within_is_in_scope_for_each_region(
    endpoint: Endpoint, fence: str | None, regions: list[str]
) -> None:
    access = Access(zone=fence)
    deps = [DeploymentState("m", r, 4) for r in regions]
    expected = [d for d in deps if scope.in_scope(endpoint, access, d.region, DEMO_REGIONS[d.region].zone)]
    assert scope.within(endpoint, access, deps, DEMO_REGIONS) == expected


@given(
    st.sampled_from(list(Tier)),
    st.lists(
        st.tuples(st.integers(0, 10), st.integers(0, 3), st.none() | st.integers(0, 10)),
        min_size=1,
        max_size=6,
    ),
)
def test_views_is_view_of_each(tier: Tier, specs: list[tuple[int, int, int | None]]) -> None:
    deps = [
        DeploymentState("m", f"r{i}", 10, in_use, (), priority_reserve=r, flex_limit=f)
        for i, (in_use, r, f) in enumerate(specs)
    ]
    assert list(views(deps, tier)) == [view(d, tier) for d in deps]


@given(st.floats(-89, 89), st.floats(-179, 179))
def test_rtts_is_rtt_of_each(lat: float, lon: float) -> None:
    here = Location(lat, lon)
    there = [r.location for r in DEMO_REGIONS.values()]
    assert rtts_from_distance_ms(here, there) == [rtt_from_distance_ms(here, b) for b in there]
