"""What a caller can see: models per endpoint and the regions with their live state, filtered by the
team's grants and the key's fence. Protocol-neutral; REST and gRPC render these values."""

from __future__ import annotations

from dataclasses import dataclass

from regiongate.config import ModelInfo
from regiongate.core import Access, Endpoint, EndpointKind, RouteError, scope
from regiongate.health.probes import backend_health
from regiongate.state.fleet import Fleet


@dataclass(frozen=True, slots=True)
class ModelView:
    id: str
    regions: tuple[str, ...]  # where this caller can be served it through this endpoint
    info: ModelInfo


def in_endpoint(fleet: Fleet, endpoint: Endpoint, access: Access, region: str) -> bool:
    return scope.in_scope(endpoint, access, region, fleet.regions[region].zone)


def visible_models(
    fleet: Fleet, endpoint: Endpoint, access: Access, infos: dict[str, ModelInfo]
) -> list[ModelView]:
    out = []
    for model, deps in fleet.by_model.items():
        regions = tuple(
            d.region
            for d in deps
            if access.permits(model, d.region) and in_endpoint(fleet, endpoint, access, d.region)
        )
        if regions:
            out.append(ModelView(model, regions, infos.get(model, ModelInfo())))
    return out


def find_model(
    fleet: Fleet,
    endpoint: Endpoint,
    access: Access,
    infos: dict[str, ModelInfo],
    name: str,
    *,
    kind: str | None = None,
    aliases: bool = False,
) -> ModelView:
    """The visible model ``name`` names (its id, or with ``aliases`` one of them; of ``kind`` when given),
    else a model_not_found that says where the caller is offered it. REST and gRPC both look models up here."""
    for m in visible_models(fleet, endpoint, access, infos):
        if (kind is None or m.info.kind == kind) and (name == m.id or (aliases and name in m.info.aliases)):
            return m
    where = "here" if endpoint.kind is EndpointKind.GLOBAL else f"on {endpoint}"
    raise RouteError.model_not_found(name, where, offering(fleet, name, access))


def offering(fleet: Fleet, model: str, access: Access) -> list[str]:
    """Regions that offer ``model`` to this caller anywhere (for 'it is offered in ...' hints)."""
    return [
        d.region
        for d in fleet.by_model.get(model, ())
        if access.permits(model, d.region)
        and scope.in_fence(access, fleet.regions[d.region].zone)
    ]


def region_views(fleet: Fleet, access: Access) -> list[dict[str, object]]:
    """Every region this caller may use, with its models, health, capacity in use and recent TTFT."""
    now = fleet.clock()
    out: list[dict[str, object]] = []
    for region in fleet.regions.values():
        if access.zone is not None and region.zone != access.zone:
            continue
        models = []
        for (model, rid), d in fleet.deployments.items():
            if rid != region.id or not access.permits(model, rid):
                continue
            healthy = sum(1 for b in d.backends if b.healthy(now))
            models.append(
                {
                    "id": model,
                    "capacity": {"in_use": fleet.capacity.in_use(d.key), "limit": d.limit},
                    # What the backends report of their own load (regiongate.health.load); free: None = unknown.
                    "load": {"queue_depth": d.queue_depth, "reported_free": d.reported_free},
                    "backends": {"healthy": healthy, "total": len(d.backends)},
                    "health": [backend_health(b, now) for b in d.backends],  # passive + active, RTT
                    "ttft_ms": round(d.ttft.value, 1) if d.ttft.value is not None else None,
                    "healthy": healthy > 0,
                }
            )
        if not models and access.grants is not None:
            continue  # a team never sees a region it has no grant in
        out.append(
            {
                "id": region.id,
                "name": region.name,
                "zone": region.zone,
                "location": {"lat": region.location.lat, "lon": region.location.lon},
                "healthy": any(m["healthy"] for m in models) if models else False,
                "models": models,
            }
        )
    return out
