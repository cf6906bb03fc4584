"""The pure routing policy: unit cases on the demo world and properties over random worlds."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
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
    RouteError,
    RouteRequest,
    WorldSnapshot,
    decide,
)

ASHBURN = Location(39.04, -77.49)
TOKYO = Location(35.68, 139.69)
DEMO_REGIONS = {
    "us-east-1": Region("us-east-1", Location(39.04, -77.49), "us"),
    "us-west-2": Region("us-west-2", Location(45.84, -119.70), "us"),
    "eu-west-1": Region("eu-west-1", Location(53.35, -6.26), "eu"),
    "eu-central-1": Region("eu-central-1", Location(50.11, 8.68), "eu"),
    "ap-northeast-1": Region("ap-northeast-1", Location(35.68, 139.69), "apac"),
    "ap-southeast-2": Region("ap-southeast-2", Location(-33.87, 151.21), "apac"),
}
GROK4 = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1"]


def world(
    in_use: dict[str, int] | None = None, unhealthy: set[str] | None = None, ttft: float = 80.0
) -> WorldSnapshot:
    in_use = in_use or {}
    unhealthy = unhealthy or set()
    deps = {
        ("grok-4", r): DeploymentState(
            "grok-4", r, 8, in_use.get(r, 0), (BackendState(f"{r}/b0", r not in unhealthy),), ttft
        )
        for r in GROK4
    }
    return WorldSnapshot.build(DEMO_REGIONS, deps, ASHBURN)


def plan(snapshot: WorldSnapshot, **kw: object) -> Plan:
    result = decide(snapshot, RouteRequest("grok-4", **kw), explain=True)  # type: ignore[arg-type]
    assert isinstance(result, Plan), result
    return result


def test_nearest_from_the_gateway_location_is_us_east_1() -> None:
    p = plan(world())
    assert [c.region for c in p.candidates][:3] == ["us-east-1", "us-west-2", "eu-west-1"]
    assert p.candidates[0].route == "nearest"
    assert {c.route for c in p.candidates[1:]} == {"spillover"}


def test_client_in_tokyo_gets_tokyo() -> None:
    p = plan(world(), client_location=TOKYO)
    assert p.candidates[0].region == "ap-northeast-1"
    assert p.candidates[0].estimate.network_source == "client-distance"


def test_full_region_spills_to_next_closest() -> None:
    p = plan(world(in_use={"us-east-1": 8}))
    assert p.candidates[0].region == "us-west-2"
    assert p.candidates[0].route == "spillover"
    dropped = {c.region: c.reason for c in p.considered if c.verdict == "dropped"}
    assert dropped["us-east-1"].startswith("full")


def test_unhealthy_region_is_skipped() -> None:
    p = plan(world(unhealthy={"us-east-1"}))
    assert "us-east-1" not in [c.region for c in p.candidates]


def test_regional_endpoint_is_pinned_and_fails_when_full() -> None:
    ep = Endpoint(EndpointKind.REGION, "us-east-1")
    assert [c.region for c in plan(world(), endpoint=ep).candidates] == ["us-east-1"]
    err = decide(world(in_use={"us-east-1": 8}), RouteRequest("grok-4", ep))
    assert isinstance(err, RouteError)
    assert (err.status, err.code) == (503, "region_unavailable")
    assert "us-west-2" in err.message and err.retry_after


def test_regional_endpoint_without_the_model_names_where_it_is() -> None:
    err = decide(world(), RouteRequest("grok-4", Endpoint(EndpointKind.REGION, "ap-southeast-2")))
    assert isinstance(err, RouteError)
    assert (err.status, err.code) == (404, "model_not_found")
    for r in GROK4:
        assert r in err.message


def test_global_all_full_is_capacity_exhausted() -> None:
    err = decide(world(in_use=dict.fromkeys(GROK4, 8)), RouteRequest("grok-4"))
    assert isinstance(err, RouteError)
    assert (err.status, err.code) == (503, "capacity_exhausted")


def test_a_refusal_on_lease_counts_carries_the_regions_whose_leases_may_still_be_tried() -> None:
    """A count that says full may be a replica's stale view of the shared one: the refusal carries the
    full-looking regions (in scope, healthy, their backends not reporting themselves full), best first."""
    err = decide(world(in_use=dict.fromkeys(GROK4, 8), unhealthy={"eu-west-1"}), RouteRequest("grok-4"))
    assert isinstance(err, RouteError) and isinstance(err.plan, Plan)
    regions = [c.region for c in err.plan.candidates]
    assert regions[0] == "us-east-1" and sorted(regions) == sorted(set(GROK4) - {"eu-west-1"})
    ep = Endpoint(EndpointKind.REGION, "us-west-2")
    pinned = decide(world(in_use=dict.fromkeys(GROK4, 8)), RouteRequest("grok-4", ep))
    assert isinstance(pinned, RouteError) and pinned.code == "region_unavailable"
    assert isinstance(pinned.plan, Plan) and [c.region for c in pinned.plan.candidates] == ["us-west-2"]
    assert [c.route for c in pinned.plan.candidates] == ["pinned"]
    snap = world(in_use=dict.fromkeys(GROK4, 8))
    reported = {k: replace(d, reported_free=0) for k, d in snap.deployments.items()}
    none = decide(WorldSnapshot.build(DEMO_REGIONS, reported, ASHBURN), RouteRequest("grok-4"))
    assert isinstance(none, RouteError) and none.plan is None, "backends that report no room are not tried"
    unhealthy = decide(world(unhealthy=set(GROK4)), RouteRequest("grok-4"))
    assert isinstance(unhealthy, RouteError) and unhealthy.plan is None
    explained = decide(snap, RouteRequest("grok-4"), explain=True)
    assert isinstance(explained, RouteError) and isinstance(explained.plan, Plan)
    reasons = {c.region: c.reason for c in explained.plan.considered}
    assert "its lease is still tried" in reasons["us-east-1"]


def test_zone_endpoint_stays_in_zone() -> None:
    p = plan(world(), endpoint=Endpoint(EndpointKind.ZONE, "eu"))
    assert [c.region for c in p.candidates] == ["eu-west-1", "eu-central-1"]
    assert {c.route for c in p.candidates} == {"zone"}


def test_key_fenced_to_a_zone() -> None:
    fenced = Access("t", None, "eu")
    p = plan(world(), access=fenced)
    assert {c.region for c in p.candidates} == {"eu-west-1", "eu-central-1"}
    err = decide(world(), RouteRequest("grok-4", Endpoint(EndpointKind.REGION, "us-east-1"), None, fenced))
    assert isinstance(err, RouteError) and (err.status, err.code) == (403, "region_not_allowed")


def test_grants_hide_models_and_regions() -> None:
    access = Access("t", (Grant("grok-4", "eu-west-1"),))
    p = plan(world(), access=access)
    assert [c.region for c in p.candidates] == ["eu-west-1"]
    err = decide(world(), RouteRequest("grok-4", Endpoint(EndpointKind.REGION, "us-east-1"), None, access))
    assert isinstance(err, RouteError) and err.status == 404
    assert "us-east-1" not in err.message.split("offered in:")[-1]


def test_spill_budget_limits_spillover() -> None:
    access = Access("t", None, None, spill_budget_ms=60.0)
    p = plan(world(in_use={"us-east-1": 8}), access=access)
    assert [c.region for c in p.candidates] == ["us-west-2"]
    err = decide(world(in_use={"us-east-1": 8, "us-west-2": 8}), RouteRequest("grok-4", GLOBAL, None, access))
    assert isinstance(err, RouteError) and err.code == "region_unavailable"


def test_measured_queueing_ranks_a_busy_region_lower() -> None:
    snap = world()
    deps = dict(snap.deployments)
    deps[("grok-4", "us-east-1")] = DeploymentState(
        "grok-4",
        "us-east-1",
        8,
        0,
        (BackendState("b", True),),
        ttft_ms=80.0,
        queue_depth=5,
        wait_ms_per_queued=80.0,
    )
    p = plan(WorldSnapshot.build(DEMO_REGIONS, deps, ASHBURN))
    assert p.candidates[0].region == "us-west-2"


def test_measured_rtt_replaces_distance() -> None:
    snap = world()
    deps = dict(snap.deployments)
    deps[("grok-4", "us-east-1")] = DeploymentState(
        "grok-4", "us-east-1", 8, 0, (BackendState("b", True, rtt_ms=150.0),), ttft_ms=80.0
    )
    p = plan(WorldSnapshot.build(DEMO_REGIONS, deps, ASHBURN))
    assert p.candidates[0].region == "us-west-2"
    east = next(c for c in p.candidates if c.region == "us-east-1")
    assert east.estimate.network_source == "measured" and east.estimate.network_ms == 150.0


# --- properties over random worlds ---------------------------------------------------------------
ZONES = ["us", "eu", "apac"]
MODELS = ["m1", "m2", "m3"]


@st.composite
def worlds(draw: st.DrawFn) -> WorldSnapshot:
    n = draw(st.integers(1, 8))
    regions = {}
    for i in range(n):
        lat = draw(st.floats(-89, 89))
        lon = draw(st.floats(-179, 179))
        regions[f"r{i}"] = Region(f"r{i}", Location(lat, lon), draw(st.sampled_from(ZONES)))
    deps = {}
    for r in regions:
        for m in MODELS:
            if draw(st.booleans()):
                limit = draw(st.integers(1, 4))
                backends = tuple(
                    BackendState(f"{r}/{m}/{k}", draw(st.booleans())) for k in range(draw(st.integers(1, 2)))
                )
                deps[(m, r)] = DeploymentState(
                    m,
                    r,
                    limit,
                    draw(st.integers(0, limit)),
                    backends,
                    draw(st.floats(0, 500)),
                    draw(st.integers(0, 3)),
                )
    return WorldSnapshot.build(regions, deps, Location(draw(st.floats(-89, 89)), draw(st.floats(-179, 179))))


@st.composite
def requests(draw: st.DrawFn, snapshot: WorldSnapshot) -> RouteRequest:
    kind = draw(st.sampled_from(list(EndpointKind)))
    if kind is EndpointKind.REGION:
        ep = Endpoint(kind, draw(st.sampled_from(sorted(snapshot.regions))))
    elif kind is EndpointKind.ZONE:
        ep = Endpoint(kind, draw(st.sampled_from(ZONES)))
    else:
        ep = GLOBAL
    loc = draw(st.none() | st.builds(Location, st.floats(-89, 89), st.floats(-179, 179)))
    zone = draw(st.none() | st.sampled_from(ZONES))
    grants = draw(
        st.none()
        | st.lists(
            st.builds(
                Grant, st.sampled_from([*MODELS, "*"]), st.none() | st.sampled_from(sorted(snapshot.regions))
            ),
            max_size=3,
        ).map(tuple)
    )
    return RouteRequest(draw(st.sampled_from(MODELS)), ep, loc, Access("t", grants, zone))


def _servable(snapshot: WorldSnapshot, req: RouteRequest, room: bool = True) -> set[str]:
    """The regions that may and can serve ``req``, worked out here from the rule as the README states it
    (not through the code under test): endpoint, key fence, grant, room (unless not ``room``), a healthy
    backend."""
    out = set()
    for (model, region), dep in snapshot.deployments.items():
        zone = snapshot.regions[region].zone
        ep = req.endpoint
        if model != req.model or (ep.kind is EndpointKind.REGION and region != ep.name):
            continue
        if ep.kind is EndpointKind.ZONE and zone != ep.name:
            continue
        if req.access.zone is not None and zone != req.access.zone:
            continue
        if req.access.grants is not None and not any(
            g.model in ("*", model) and g.region in (None, region) for g in req.access.grants
        ):
            continue
        if (dep.free > 0 or not room) and any(b.healthy for b in dep.backends):
            out.add(region)
    return out


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_plans_respect_scope_model_grants_and_rank(data: st.DataObject) -> None:
    snapshot = data.draw(worlds())
    req = data.draw(requests(snapshot))
    result = decide(snapshot, req)
    servable = _servable(snapshot, req)
    if isinstance(result, RouteError):
        assert result.status in (403, 404, 503)
        assert not servable, f"refused ({result.code}) although {sorted(servable)} could serve it"
        if isinstance(result.plan, Plan):  # the full-looking regions whose leases are tried: in scope only
            tried = {c.region for c in result.plan.candidates}
            assert tried and tried <= _servable(snapshot, req, room=False), "leases tried outside the scope"
        return
    assert {c.region for c in result.candidates} == servable, "every region that can serve it, and no other"
    for c in result.candidates:
        dep = snapshot.deployment(req.model, c.region)
        assert dep is not None, "a plan never contains a region lacking the model"
        zone = snapshot.regions[c.region].zone
        if req.endpoint.kind is EndpointKind.REGION:
            assert c.region == req.endpoint.name, "a regional request is never planned elsewhere"
        if req.endpoint.kind is EndpointKind.ZONE:
            assert zone == req.endpoint.name, "a zone request never leaves its zone"
        if req.access.zone is not None:
            assert zone == req.access.zone, "a fenced key never leaves its zone"
        assert req.access.permits(req.model, c.region), "a team never reaches a region it has no grant for"
        assert dep.free > 0 and c.backends, "only regions with room and a healthy backend"
    # The first is the policy's pick (the nearest open region unless another beats it by more than the
    # margin, or one drawn among near-equals); the fallbacks after it follow predicted latency.
    totals = [c.estimate.total_ms for c in result.candidates[1:]]
    assert totals == sorted(totals), "fallback candidates follow predicted latency"


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_decide_is_pure(data: st.DataObject) -> None:
    snapshot = data.draw(worlds())
    req = data.draw(requests(snapshot))
    first, second = decide(snapshot, req), decide(snapshot, req)
    explained = decide(snapshot, req, explain=True)
    if isinstance(explained, Plan):
        assert isinstance(first, Plan) and explained.candidates == first.candidates, (
            "explaining never changes routing"
        )
        assert {c.region for c in explained.considered if c.verdict == "kept"} == {
            c.region for c in first.candidates
        }
    if isinstance(first, RouteError):
        assert isinstance(second, RouteError) and (first.code, first.message) == (second.code, second.message)
    else:
        assert first == second


def test_explain_gives_every_region_of_the_world_a_verdict_and_the_reason() -> None:
    """Issue 16 item 5: every region, kept or dropped, with the reason, and the prediction's parts for
    each region the policy ranked (the reasons not covered by ``test_latency``'s grants and fences)."""
    everywhere = set(DEMO_REGIONS)

    def why(snapshot: WorldSnapshot, req: RouteRequest) -> dict[str, tuple[str, str]]:
        p = decide(snapshot, req, explain=True)
        assert isinstance(p, Plan), p
        out = {c.region: (c.verdict, c.reason) for c in p.considered}
        assert set(out) == everywhere and len(p.considered) == len(everywhere), "every region, once"
        for c in p.considered:
            ranked = c.region in GROK4 and not c.reason.startswith("outside the endpoint")
            assert (c.estimate is not None) == ranked, c
            if c.estimate is not None:
                e = c.estimate
                assert e.total_ms == e.network_ms + e.queue_ms + e.base_ms + e.prefill_ms
        return out

    w = why(world(in_use={"us-east-1": 8}, unhealthy={"eu-west-1"}), RouteRequest("grok-4"))
    assert w["us-east-1"] == ("dropped", "full (8/8 in use)")
    assert w["eu-west-1"] == ("dropped", "no healthy backend")
    assert w["us-west-2"][0] == "kept" and w["us-west-2"][1].startswith("rank 1 (spillover)")
    assert w["ap-southeast-2"] == ("dropped", "model grok-4 not offered there")
    budget = Access("t", None, None, spill_budget_ms=60.0)
    w = why(world(), RouteRequest("grok-4", GLOBAL, None, budget))
    assert w["us-east-1"][1].startswith("rank 1 (nearest)")
    assert w["ap-northeast-1"] == ("dropped", "beyond this key's spillover budget (60 ms over the best region)")
    w = why(world(), RouteRequest("grok-4", Endpoint(EndpointKind.REGION, "us-east-1")))
    assert w["us-east-1"][1].startswith("rank 1 (pinned)")
    assert w["eu-west-1"] == ("dropped", "outside the endpoint (region us-east-1 only)")
    w = why(world(), RouteRequest("grok-4", Endpoint(EndpointKind.ZONE, "eu")))
    assert w["us-west-2"] == ("dropped", "outside the endpoint (data zone eu only)")
    assert w["ap-southeast-2"] == ("dropped", "model grok-4 not offered there")

