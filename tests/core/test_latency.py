"""The per-request prediction in the pure core: the margin a move must beat, the power of two choices
among near-equal regions (randomness only from the request's salt), the reserve for pinned requests, and
``explain`` listing every region with its reason."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from regiongate.core import (
    GLOBAL,
    Access,
    BackendState,
    DeploymentState,
    Endpoint,
    EndpointKind,
    Grant,
    Location,
    Plan,
    Region,
    RouteRequest,
    WorldSnapshot,
    decide,
)
from regiongate.core.latency import margin_ms, two_choices

HOME = Location(40.0, -75.0)
# Three regions a client at HOME sees at about 0, 5 and 10 ms more round trip, one far away.
REGIONS = {
    "a": Region("a", HOME, "us"),
    "b": Region("b", Location(40.0, -72.0), "us"),
    "c": Region("c", Location(40.0, -78.5), "us"),
    "far": Region("far", Location(50.0, 8.0), "eu"),
}


def dep(region: str, **kw: object) -> DeploymentState:
    kw.setdefault("error_ms", 2.0)
    return DeploymentState("m", region, 10, backends=(BackendState(f"{region}/0"),), **kw)  # type: ignore[arg-type]


def snap(*deps: DeploymentState) -> WorldSnapshot:
    return WorldSnapshot.build(REGIONS, {("m", d.region): d for d in deps}, HOME)


def first(s: WorldSnapshot, salt: int = 0, **kw: object) -> str:
    p = decide(s, RouteRequest("m", GLOBAL, HOME, salt=salt, **kw))  # type: ignore[arg-type]
    assert isinstance(p, Plan), p
    return p.first.region


def test_a_farther_region_wins_only_by_more_than_the_margin() -> None:
    m = margin_ms(2.0, 2.0)  # 3 x sqrt(8) + 5, about 13.5 ms
    s = snap(dep("a", ttft_ms=100.0), dep("b", ttft_ms=0.0))
    p = decide(s, RouteRequest("m", GLOBAL, HOME), explain=True)
    assert isinstance(p, Plan)
    by = {c.region: c.estimate for c in p.considered if c.estimate is not None}
    extra = by["b"].network_ms - by["a"].network_ms
    # A learned base that is better by less than the margin (after the extra round trip) keeps "a" ...
    near = snap(dep("a", ttft_ms=100.0), dep("b", ttft_ms=100.0 - extra - (m - 1.0)))
    assert first(near) == "a"
    # ... and by more than the margin moves the request.
    beyond = snap(dep("a", ttft_ms=100.0), dep("b", ttft_ms=100.0 - extra - (m + 1.0)))
    assert first(beyond) == "b"
    # The same gain with unsure numbers (few samples): the margin widens and the request stays.
    unsure = snap(dep("a", ttft_ms=100.0, error_ms=20.0), dep("b", ttft_ms=100.0 - extra - (m + 1.0)))
    assert first(unsure) == "a"


def test_this_requests_own_prefill_is_predicted_at_each_regions_rate() -> None:
    """A region with slow prefill loses long prompts before it loses short ones."""
    s = snap(
        dep("a", ttft_ms=50.0, prefill_ms_per_token=0.4), dep("b", ttft_ms=50.0, prefill_ms_per_token=0.1)
    )
    assert first(s, prompt_tokens=10) == "a"
    assert first(s, prompt_tokens=4000) == "b"


def test_randomised_tie_breaking_spreads_requests_over_near_equal_regions() -> None:
    """The nearest region is slow beyond the margin; b and c are near-equal: which one a request gets
    depends on its salt alone, and each gets a fair share."""
    s = snap(dep("a", ttft_ms=500.0), dep("b", ttft_ms=100.0), dep("c", ttft_ms=100.0))
    picks = Counter(first(s, salt) for salt in range(1000))
    assert set(picks) == {"b", "c"} and min(picks.values()) > 400
    assert all(first(s, salt) == first(s, salt) for salt in range(50))  # same salt, same plan


@given(st.integers(2, 50), st.integers(0, 2**32 - 1))
def test_two_choices_are_two_distinct_indexes(n: int, salt: int) -> None:
    i, j = two_choices(n, salt)
    assert 0 <= i < n and 0 <= j < n and i != j


def test_a_movable_request_leaves_the_last_slots_to_pinned_ones() -> None:
    tight = dep("a", in_use=9)  # 1 of 10 free: within the reserved tenth
    s = snap(tight, dep("b"))
    assert first(s) == "b"  # global: it could go elsewhere, so it does
    pinned = decide(s, RouteRequest("m", Endpoint(EndpointKind.REGION, "a"), HOME))
    assert isinstance(pinned, Plan) and pinned.first.region == "a"  # pinned: takes the last slot
    alone = snap(tight)
    assert first(alone) == "a"  # nowhere else to go: takes it too


def test_explain_lists_every_region_with_its_reason() -> None:
    s = WorldSnapshot.build(
        {**REGIONS, "bare": Region("bare", Location(0.0, 0.0), "us")},
        {("m", r): dep(r) for r in ("a", "b", "c", "far")},
        HOME,
    )
    access = Access("t", (Grant("m", "a"), Grant("m", "b"), Grant("m", "far")), zone="us")
    p = decide(s, RouteRequest("m", GLOBAL, HOME, access), explain=True)
    assert isinstance(p, Plan)
    why = {c.region: (c.verdict, c.reason) for c in p.considered}
    assert set(why) == {"a", "b", "c", "far", "bare"}
    assert why["a"][0] == "kept" and why["a"][1].startswith("rank 1 (nearest)")
    assert why["b"][0] == "kept"
    assert why["c"] == ("dropped", "not granted to this team")
    assert why["far"] == ("dropped", "outside this key's fence (data zone us)")
    assert why["bare"] == ("dropped", "model m not offered there")
    kept = next(c for c in p.considered if c.region == "a").estimate
    assert (
        kept is not None and kept.total_ms == kept.network_ms + kept.queue_ms + kept.base_ms + kept.prefill_ms
    )
