"""``route explain``: the plan the policy would make, with the reason for each region kept or dropped.

Without ``--measure`` it ranks from the config alone (great-circle round trips, no queues). With it, the
configured HTTP backends are probed and their load metrics read first, as a running gateway does, so
the table shows measured round trips and live queues. ``--client-ip`` locates a client with the
configured GeoIP database. The running gateway shows the same rows per request on
``x-regiongate-explain: 1``.
"""

from __future__ import annotations

import asyncio

from regiongate.app.runtime import build_fleet
from regiongate.config import Config
from regiongate.core import (
    ALL_ACCESS,
    Affinity,
    Location,
    Plan,
    RouteError,
    RouteRequest,
    Tier,
    decide,
    parse_location,
    resolve_endpoint,
)
from regiongate.health.load import LoadScraper
from regiongate.health.probes import Prober
from regiongate.pipeline.geoip import GeoIP
from regiongate.state.fleet import Fleet
from regiongate.state.ttft import explain_rows

PROBE_ROUNDS = 3


def explain_plan(fleet: Fleet, req: RouteRequest) -> Plan | RouteError:
    return decide(fleet.snapshot_for(req.model), req, explain=True)


def render(plan: Plan | RouteError, req: RouteRequest, origin: str = "") -> str:
    if not origin:
        loc = req.client_location
        origin = f"client at {loc.lat:g},{loc.lon:g}" if loc else "this gateway"
    head = f"model {req.model} on endpoint {req.endpoint}, ranked from {origin}"
    refused = ""
    if isinstance(plan, RouteError):
        refused = f"refused: HTTP {plan.status} {plan.code}: {plan.message}"
        if not isinstance(plan.plan, Plan):
            return f"{head}\n{refused}"
        # every region looks full by this process's lease counts: the gateway tries those leases first
        refused = f"{refused} (unless a lease of a region marked full has room: the count may be stale)"
        plan = plan.plan
    rows = [
        head,
        f"{'region':<16} {'verdict':<8} {'est ms':>8} {'rtt ms':>8} {'rtt source':<17} {'queue ms':>8} "
        f"{'base ms':>8} {'prefill':>8} {'+/- ms':>7} {'free':>5}  reason",
    ]
    for r in explain_rows(plan):
        free = "-" if r["free"] is None else r["free"]
        rows.append(
            f"{r['region']:<16} {r['verdict']:<8} {_num(r['estimate_ms'])} {_num(r['rtt_ms'])} "
            f"{r['rtt_source'] or '-':<17} {_num(r['queue_ms'])} {_num(r['base_ms'])} "
            f"{_num(r['prefill_ms'])} {_num(r['error_ms'], 7)} {free:>5}  {r['reason']}"
        )
    rows.append(
        f"est = rtt + queue + base + prefill ({req.prompt_tokens} prompt tokens); +/- is the standard error "
        "of the learned part: a farther region wins only by more than 3 x the combined error + 5 ms"
    )
    if refused:
        rows.append(refused)
    return "\n".join(rows)


def _num(v: float | None, width: int = 8) -> str:
    return f"{v:{width}.1f}" if v is not None else f"{'-':>{width}}"


async def measure(fleet: Fleet, cfg: Config, rounds: int = PROBE_ROUNDS) -> None:
    """Probe every HTTP backend ``rounds`` times and read their load once, as the gateway would."""
    prober = Prober(lambda: fleet, lambda: cfg.health)
    scraper = LoadScraper(lambda: fleet, lambda: cfg)
    try:
        for _ in range(rounds + 1):  # the first round opens the connections and is not counted
            await prober.round()
        await scraper.round()
    finally:
        await scraper.aclose()
        await fleet.aclose()


def _affinity(spec: str | None) -> Affinity | None:
    """``REGION[:TOKENS]`` as the affinity table would hold it (the backend unknown: the region's order)."""
    if not spec:
        return None
    region, _, tokens = spec.partition(":")
    if tokens and not tokens.isdigit():
        raise ValueError(f"--affinity must be REGION[:TOKENS], got {spec!r}")
    return Affinity(region, "", int(tokens) if tokens else 0)


def _client(cfg: Config, origin: str | None, client_ip: str | None) -> tuple[Location | None, str]:
    if origin:
        loc = parse_location(origin)
        if loc is None:
            raise ValueError(f"--from must be LAT,LON in degrees, got {origin!r}")
        return loc, ""
    if client_ip:
        path = cfg.gateway.geoip_database
        if not path:
            raise ValueError("--client-ip needs [gateway].geoip_database in the config")
        geo = GeoIP(path)
        try:
            loc = geo.locate(client_ip)
        finally:
            geo.close()
        if loc is None:
            return None, f"this gateway ({client_ip} is not in the GeoIP database)"
        return loc, f"client at {loc.lat:g},{loc.lon:g} (GeoIP of {client_ip})"
    return None, ""


def explain(
    cfg: Config,
    model: str,
    origin: str | None,
    endpoint_host: str,
    *,
    client_ip: str | None = None,
    live: bool = False,
    prompt_tokens: int = 0,
    tier: str = "default",
    affinity: str | None = None,
) -> tuple[str, bool]:
    """The rendered plan for ``model`` from a place on an endpoint, and whether the request is refused."""
    loc, said = _client(cfg, origin, client_ip)
    fleet = build_fleet(cfg)
    try:
        endpoint = resolve_endpoint(
            endpoint_host, cfg.gateway.base_domains, list(fleet.regions), {r.zone for r in cfg.regions}
        )
    except RouteError as e:
        raise ValueError(e.message) from None
    if live:
        asyncio.run(measure(fleet, cfg))
    req = RouteRequest(
        model, endpoint, loc, ALL_ACCESS, max(prompt_tokens, 0), tier=Tier(tier), affinity=_affinity(affinity)
    )
    plan = explain_plan(fleet, req)
    return render(plan, req, said), isinstance(plan, RouteError)
