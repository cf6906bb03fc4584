"""``route explain``: the plan the policy would make, with the reason for each region kept or dropped."""

from __future__ import annotations

from regiongate.config import Config
from regiongate.core import (
    ALL_ACCESS,
    Plan,
    RouteError,
    RouteRequest,
    decide,
    parse_location,
    resolve_endpoint,
)
from regiongate.fleet import Fleet
from regiongate.runtime import build_fleet


def explain_plan(fleet: Fleet, req: RouteRequest) -> Plan | RouteError:
    return decide(fleet.snapshot_for(req.model), req)


def render(plan: Plan | RouteError, req: RouteRequest) -> str:
    origin = (
        f"client at {req.client_location.lat:g},{req.client_location.lon:g}"
        if req.client_location
        else "this gateway's location"
    )
    head = f"model {req.model} on endpoint {req.endpoint}, ranked from {origin}"
    if isinstance(plan, RouteError):
        return f"{head}\nrefused: HTTP {plan.status} {plan.code}: {plan.message}"
    rows = [
        head,
        f"{'region':<16} {'verdict':<8} {'est ms':>8} {'network':>8} {'source':<17} {'queue':>7} {'free':>5}  reason",
    ]
    for c in sorted(plan.considered, key=lambda c: c.estimate.total_ms if c.estimate else 0.0):
        e = c.estimate
        assert e is not None
        rows.append(
            f"{c.region:<16} {c.verdict:<8} {e.total_ms:8.1f} {e.network_ms:8.1f} {e.network_source:<17} "
            f"{e.queue_ms:7.1f} {c.free if c.free is not None else '-':>5}  {c.reason}"
        )
    return "\n".join(rows)


def explain(cfg: Config, model: str, origin: str | None, endpoint_host: str) -> str:
    loc = None
    if origin:
        loc = parse_location(origin)
        if loc is None:
            raise ValueError(f"--from must be LAT,LON in degrees, got {origin!r}")
    fleet = build_fleet(cfg)
    try:
        endpoint = resolve_endpoint(
            endpoint_host, cfg.gateway.base_domains, list(fleet.regions), {r.zone for r in cfg.regions}
        )
    except RouteError as e:
        raise ValueError(e.message) from None
    req = RouteRequest(model, endpoint, loc, ALL_ACCESS)
    return render(explain_plan(fleet, req), req)
