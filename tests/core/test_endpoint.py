"""Endpoint resolution from Host / :authority."""

from __future__ import annotations

import pytest

from regiongate.core import GLOBAL, Endpoint, EndpointKind, RouteError, resolve_endpoint

REGIONS = ["us-east-1", "eu-west-1"]
ZONES = ["us", "eu", "apac"]
BASES = ["api.example.com"]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", GLOBAL),
        ("localhost:8000", GLOBAL),
        ("127.0.0.1:8000", GLOBAL),
        ("[::1]:8000", GLOBAL),
        ("api.example.com", GLOBAL),
        ("API.Example.COM.", GLOBAL),
        ("us-east-1.localhost:8000", Endpoint(EndpointKind.REGION, "us-east-1")),
        ("us-east-1.api.example.com", Endpoint(EndpointKind.REGION, "us-east-1")),
        ("eu.localhost", Endpoint(EndpointKind.ZONE, "eu")),
        ("eu.api.example.com:443", Endpoint(EndpointKind.ZONE, "eu")),
    ],
)
def test_resolves(host: str, expected: Endpoint) -> None:
    assert resolve_endpoint(host, BASES, REGIONS, ZONES) == expected


@pytest.mark.parametrize("host", ["us-east-2.localhost", "us-east1.api.example.com", "a.us-east-1.localhost"])
def test_unknown_label_is_404_never_global(host: str) -> None:
    with pytest.raises(RouteError) as e:
        resolve_endpoint(host, BASES, REGIONS, ZONES)
    assert (e.value.status, e.value.code) == (404, "unknown_region")
    assert "us-east-1" in e.value.message


def test_foreign_host_is_rejected() -> None:
    with pytest.raises(RouteError) as e:
        resolve_endpoint("evil.example.org", BASES, REGIONS, ZONES)
    assert e.value.code == "unknown_host"
