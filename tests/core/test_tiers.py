"""Service tiers in the pure policy: who keeps a region's last slots, never outside the scope."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from regiongate.core import (
    BackendState,
    DeploymentState,
    Endpoint,
    EndpointKind,
    Plan,
    RouteError,
    RouteRequest,
    Tier,
    WorldSnapshot,
    decide,
)
from regiongate.core.tiers import AUTO, held_back, resolve, view
from tests.core.test_policy import ASHBURN, DEMO_REGIONS, GROK4

US_EAST = Endpoint(EndpointKind.REGION, "us-east-1")


def tiered(in_use: dict[str, int], reserve: int = 2, flex_limit: int | None = 5) -> WorldSnapshot:
    deps = {
        ("grok-4", r): DeploymentState(
            "grok-4",
            r,
            10,
            in_use.get(r, 0),
            (BackendState(f"{r}/b0"),),
            80.0,
            priority_reserve=reserve,
            flex_limit=flex_limit,
        )
        for r in GROK4
    }
    return WorldSnapshot.build(DEMO_REGIONS, deps, ASHBURN)


def first(snap: WorldSnapshot, tier: Tier, **kw: object) -> str | RouteError:
    got = decide(snap, RouteRequest("grok-4", tier=tier, **kw))  # type: ignore[arg-type]
    return got if isinstance(got, RouteError) else got.first.region


def test_held_back_slots_per_tier() -> None:
    assert held_back(10, Tier.PRIORITY, 2, 5) == 0
    assert held_back(10, Tier.DEFAULT, 2, 5) == 2
    assert held_back(10, Tier.FLEX, 2, 5) == 5
    assert held_back(10, Tier.FLEX, 2, 9) == 2  # flex never takes the priority reserve
    assert held_back(10, Tier.FLEX, 0, None) == 0
    assert held_back(3, Tier.DEFAULT, 7, None) == 3


def test_view_only_copies_when_something_is_held() -> None:
    snap = tiered({}, reserve=0, flex_limit=None)
    dep = snap.deployments[("grok-4", "us-east-1")]
    assert view(dep, Tier.DEFAULT) is dep
    assert view(tiered({}).deployments[("grok-4", "us-east-1")], Tier.FLEX).free == 5


def test_resolve_auto_is_the_keys_default_and_the_team_list_binds() -> None:
    assert resolve(None, Tier.FLEX, None) is Tier.FLEX
    assert resolve(AUTO, Tier.PRIORITY, None) is Tier.PRIORITY
    assert resolve("flex", Tier.DEFAULT, frozenset({Tier.DEFAULT, Tier.FLEX})) is Tier.FLEX
    assert resolve("priority", Tier.DEFAULT, frozenset({Tier.DEFAULT, Tier.FLEX})) is None


def test_flex_spills_first_default_next_priority_keeps_home() -> None:
    snap = tiered({"us-east-1": 6})  # above flex's 5, below default's 8
    assert first(snap, Tier.FLEX) == "us-west-2"
    assert first(snap, Tier.DEFAULT) == "us-east-1"
    snap = tiered({"us-east-1": 8})  # only the priority reserve is left
    assert first(snap, Tier.DEFAULT) == "us-west-2"
    assert first(snap, Tier.PRIORITY) == "us-east-1"


def test_flex_refused_with_retry_after_when_every_region_is_past_its_threshold() -> None:
    snap = tiered({r: 5 for r in GROK4})
    refused = first(snap, Tier.FLEX)
    assert isinstance(refused, RouteError) and refused.status in (429, 503) and refused.retry_after
    assert first(snap, Tier.DEFAULT) == "us-east-1"


def test_priority_uses_the_reserve_but_never_leaves_a_regional_endpoint() -> None:
    snap = tiered({"us-east-1": 9})
    assert first(snap, Tier.PRIORITY, endpoint=US_EAST) == "us-east-1"
    refused = first(snap, Tier.DEFAULT, endpoint=US_EAST)
    assert isinstance(refused, RouteError) and refused.code == "region_unavailable"
    assert "held back from this tier" in refused.message
    snap = tiered({"us-east-1": 10})
    refused = first(snap, Tier.PRIORITY, endpoint=US_EAST)
    assert isinstance(refused, RouteError) and refused.code == "region_unavailable"


def test_explain_says_when_the_tier_moved_the_request() -> None:
    got = decide(tiered({"us-east-1": 6}), RouteRequest("grok-4", tier=Tier.FLEX), explain=True)
    assert isinstance(got, Plan)
    kept = next(c for c in got.considered if c.verdict == "kept")
    assert kept.region == "us-west-2"
    assert "tier flex changed this: a default request without affinity would go to us-east-1" in kept.reason
    dropped = next(c for c in got.considered if c.region == "us-east-1")
    assert dropped.verdict == "dropped" and "5 held back from this tier" in dropped.reason


@settings(max_examples=200, deadline=None)
@given(
    use=st.lists(st.integers(0, 10), min_size=len(GROK4), max_size=len(GROK4)),
    reserve=st.integers(0, 10),
    flex=st.one_of(st.none(), st.integers(0, 10)),
)
def test_priority_is_admitted_whenever_any_region_in_scope_has_a_slot(
    use: list[int], reserve: int, flex: int | None
) -> None:
    snap = tiered(dict(zip(GROK4, use, strict=True)), reserve, flex)
    any_slot = any(u < 10 for u in use)
    got = {t: first(snap, t) for t in Tier}
    assert isinstance(got[Tier.PRIORITY], str) == any_slot
    # a lower tier is admitted only where a higher one would be, and never into held-back slots
    if isinstance(got[Tier.FLEX], str):
        assert isinstance(got[Tier.DEFAULT], str)
        assert use[GROK4.index(got[Tier.FLEX])] < min(flex if flex is not None else 10, 10 - reserve)
    if isinstance(got[Tier.DEFAULT], str):
        assert isinstance(got[Tier.PRIORITY], str)
        assert use[GROK4.index(got[Tier.DEFAULT])] < 10 - reserve
