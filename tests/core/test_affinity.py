"""Prompt-cache affinity in the pure policy: a warm cache breaks ties, never the scope or a clear gain."""

from __future__ import annotations

from regiongate.core import (
    Affinity,
    BackendState,
    DeploymentState,
    Endpoint,
    EndpointKind,
    Location,
    Plan,
    RouteRequest,
    WorldSnapshot,
    decide,
)
from tests.core.test_policy import DEMO_REGIONS, GROK4

# Halfway between Ashburn and Oregon's round trips matter little: the two US regions are near-equal from
# a client in Kansas, so without affinity the salt spreads a conversation over both.
KANSAS = Location(39.1, -98.0)


def snap(in_use: dict[str, int] | None = None, error_ms: float = 20.0) -> WorldSnapshot:
    in_use = in_use or {}
    deps = {
        ("grok-4", r): DeploymentState(
            "grok-4",
            r,
            8,
            in_use.get(r, 0),
            (BackendState(f"{r}/b0"), BackendState(f"{r}/b1")),
            80.0,
            0.5,
            0.0,
            error_ms,
        )
        for r in GROK4
    }
    return WorldSnapshot.build(DEMO_REGIONS, deps, KANSAS)


def route(s: WorldSnapshot, aff: Affinity | None, prompt: int = 2000, **kw: object) -> Plan:
    got = decide(s, RouteRequest("grok-4", prompt_tokens=prompt, affinity=aff, **kw), explain=True)  # type: ignore[arg-type]
    assert isinstance(got, Plan), got
    return got


def test_a_warm_prefix_wins_and_its_backend_goes_first() -> None:
    s = snap()
    plain = route(s, None)
    other = "us-west-2" if plain.first.region == "us-east-1" else "us-east-1"
    got = route(s, Affinity(other, f"{other}/b1", 1800))
    assert got.first.region == other
    assert got.first.backends[0] == f"{other}/b1"
    assert got.first.estimate.prefill_ms == 200 * 0.5  # only the new suffix is prefilled
    kept = got.considered[0] if got.considered[0].verdict == "kept" else None
    assert kept is not None and "affinity" in kept.reason


def test_affinity_never_leaves_the_scope() -> None:
    got = route(
        snap(), Affinity("eu-west-1", "eu-west-1/b0", 1800), endpoint=Endpoint(EndpointKind.ZONE, "us")
    )
    assert got.first.region in ("us-east-1", "us-west-2")
    got = route(snap(), Affinity("us-west-2", "", 1800), endpoint=Endpoint(EndpointKind.REGION, "us-east-1"))
    assert [c.region for c in got.candidates] == ["us-east-1"]


def test_affinity_yields_to_a_full_or_clearly_faster_region() -> None:
    full = route(snap({"ap-northeast-1": 8}), Affinity("ap-northeast-1", "", 1800))
    assert full.first.region != "ap-northeast-1"
    # Tokyo from Kansas is ~100 ms farther than the US regions: 90 ms of cached prefill does not buy it
    far = route(snap(error_ms=1.0), Affinity("ap-northeast-1", "", 180), prompt=200)
    assert far.first.region != "ap-northeast-1"
    assert any("holds this prefix but is" in c.reason for c in far.considered)


def test_affinity_to_the_same_pick_changes_nothing_but_the_note() -> None:
    s = snap()
    plain = route(s, None)
    same = route(s, Affinity(plain.first.region, "", 10))
    assert same.first.region == plain.first.region


def test_route_explain_takes_the_tier_and_the_affinity() -> None:
    from regiongate.app.explain import explain
    from regiongate.config import load_config

    text, refused = explain(
        load_config(None), "grok-4", "38.0,-98.9", "localhost", prompt_tokens=4000, affinity="us-west-2:3800"
    )
    assert not refused
    row = next(line for line in text.splitlines() if line.startswith("us-west-2"))
    assert "rank 1" in row and "prompt-cache affinity changed this" in row
    text, _ = explain(load_config(None), "grok-4", None, "localhost", tier="flex")
    assert "changed this" not in text  # nothing is full: the tier changes nothing
