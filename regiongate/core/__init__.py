"""The pure routing core: no I/O, no clock, no globals; stdlib imports only."""

from regiongate.core.affinity import Affinity
from regiongate.core.endpoint import GLOBAL, Endpoint, EndpointKind, resolve_endpoint
from regiongate.core.errors import ClientError, GatewayError, RouteError, UpstreamError
from regiongate.core.geo import Location, great_circle_km, parse_location, rtt_from_distance_ms
from regiongate.core.latency import Estimate
from regiongate.core.policy import Candidate, Considered, Plan, decide
from regiongate.core.request import ALL_ACCESS, Access, Grant, RouteRequest
from regiongate.core.tiers import Tier
from regiongate.core.world import BackendState, DeploymentState, Region, WorldSnapshot

__all__ = [
    "ALL_ACCESS",
    "GLOBAL",
    "Access",
    "Affinity",
    "BackendState",
    "Candidate",
    "ClientError",
    "Considered",
    "DeploymentState",
    "Endpoint",
    "EndpointKind",
    "Estimate",
    "GatewayError",
    "Grant",
    "Location",
    "Plan",
    "Region",
    "RouteError",
    "RouteRequest",
    "Tier",
    "UpstreamError",
    "WorldSnapshot",
    "decide",
    "great_circle_km",
    "parse_location",
    "resolve_endpoint",
    "rtt_from_distance_ms",
]
