"""A key's data-zone fence also bounds what refusals reveal: a fenced key is never told to go to a region
outside its zone (it could not use it). Pure policy checks; the HTTP side is in test_control_http."""

from __future__ import annotations

from regiongate.core import (
    Access,
    BackendState,
    DeploymentState,
    Endpoint,
    EndpointKind,
    Location,
    Region,
    RouteError,
    RouteRequest,
    WorldSnapshot,
    decide,
)

REGIONS = {
    "us-east-1": Region("us-east-1", Location(39.04, -77.49), "us"),
    "eu-west-1": Region("eu-west-1", Location(53.35, -6.26), "eu"),
}
SNAP = WorldSnapshot.build(
    REGIONS,
    {
        ("m", "us-east-1"): DeploymentState("m", "us-east-1", 4, backends=(BackendState("a"),)),
        ("m", "eu-west-1"): DeploymentState("m", "eu-west-1", 1, in_use=1, backends=(BackendState("b"),)),
        ("us-only", "us-east-1"): DeploymentState("us-only", "us-east-1", 4, backends=(BackendState("c"),)),
    },
    Location(39.04, -77.49),
)
EU_KEY = Access("t", None, "eu")
EU_WEST = Endpoint(EndpointKind.REGION, "eu-west-1")


def refusal(request: RouteRequest) -> RouteError:
    out = decide(SNAP, request)
    assert isinstance(out, RouteError)
    return out


def test_a_fenced_key_is_not_pointed_outside_its_zone() -> None:
    for request in (RouteRequest("m", EU_WEST, access=EU_KEY), RouteRequest("m", access=EU_KEY)):
        err = refusal(request)
        assert err.status == 503 and "us-east-1" not in err.message, err.message
    err = refusal(RouteRequest("us-only", access=EU_KEY))
    assert err.status == 404 and "us-east-1" not in err.message, err.message


def test_an_unfenced_key_still_gets_the_hints() -> None:
    err = refusal(RouteRequest("m", EU_WEST))
    assert err.status == 503 and "us-east-1" in err.message
    err = refusal(RouteRequest("us-only", EU_WEST))
    assert err.status == 404 and "us-east-1" in err.message
