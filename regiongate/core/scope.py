"""The residency rule, the product's promise, written once.

A request may be processed in region R (and its state stored there) when all three allow it:
- the **endpoint**: global allows every region, a zone endpoint the regions of that data zone, a regional
  endpoint that region alone;
- the key's **fence**: a key fenced to a data zone may use only that zone's regions;
- the team's **grants**: the model is granted in R.

The policy, the catalog, the gateway's "who could serve" hint and the simulator's baselines all ask here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from regiongate.core.endpoint import Endpoint, EndpointKind
from regiongate.core.errors import RouteError
from regiongate.core.request import Access

if TYPE_CHECKING:
    from regiongate.core.world import Region


class _InRegion(Protocol):
    @property
    def region(self) -> str: ...


D = TypeVar("D", bound=_InRegion)


def in_fence(access: Access, zone: str) -> bool:
    """Inside the key's data zone, if it has one: refusals only ever point a fenced key at such regions."""
    return access.zone is None or zone == access.zone


def endpoint_allows(endpoint: Endpoint, region: str, zone: str) -> bool:
    if endpoint.kind is EndpointKind.REGION:
        return region == endpoint.name
    if endpoint.kind is EndpointKind.ZONE:
        return zone == endpoint.name
    return True


def in_scope(endpoint: Endpoint, access: Access, region: str, zone: str) -> bool:
    """Endpoint and fence together (grants are per model: see ``serves``)."""
    return endpoint_allows(endpoint, region, zone) and in_fence(access, zone)


def within(
    endpoint: Endpoint, access: Access, deps: Sequence[D], zone_of: Mapping[str, Region]
) -> list[D]:
    """The deployments of ``deps`` whose region is ``in_scope``, in one pass (the policy filters every
    region of a model per request); ``zone_of`` maps a region id to its ``Region`` (for its zone)."""
    fence, kind, name = access.zone, endpoint.kind, endpoint.name
    out = []
    for d in deps:
        zone = zone_of[d.region].zone
        if fence is not None and zone != fence:
            continue
        if kind is EndpointKind.REGION:
            if d.region != name:
                continue
        elif kind is EndpointKind.ZONE and zone != name:
            continue
        out.append(d)
    return out


def serves(endpoint: Endpoint, access: Access, model: str, region: str, zone: str) -> bool:
    """The whole rule: may ``model`` for this caller be processed in ``region`` through ``endpoint``?"""
    return access.permits(model, region) and in_scope(endpoint, access, region, zone)


def unbounded(endpoint: Endpoint, access: Access) -> bool:
    """Nothing narrows the scope: the global endpoint, no fence, no grants (the common case, kept cheap)."""
    return endpoint.kind is EndpointKind.GLOBAL and access.zone is None and access.grants is None


def fence_error(endpoint: Endpoint, access: Access, endpoint_zone: str | None) -> RouteError | None:
    """A key fenced to a zone may not address a region or zone outside it. ``endpoint_zone`` is the zone
    of a regional endpoint's region (None for other endpoints)."""
    zone = access.zone
    if zone is None or endpoint.kind is EndpointKind.GLOBAL:
        return None
    if endpoint.kind is EndpointKind.ZONE and endpoint.name != zone:
        return RouteError.region_not_allowed(f"data zone {endpoint.name}", f"data zone {zone}")
    if endpoint.kind is EndpointKind.REGION and endpoint_zone != zone:
        return RouteError.region_not_allowed(f"region {endpoint.name}", f"data zone {zone}")
    return None
