"""Config texts for tests: the demo geography with chosen backends."""

from __future__ import annotations

from regiongate.config import demo_config_text

DEMO_REGIONS = {
    "us-east-1": ("Ashburn", 39.04, -77.49, "us"),
    "us-west-2": ("Oregon", 45.84, -119.70, "us"),
    "eu-west-1": ("Dublin", 53.35, -6.26, "eu"),
    "eu-central-1": ("Frankfurt", 50.11, 8.68, "eu"),
    "ap-northeast-1": ("Tokyo", 35.68, 139.69, "apac"),
    "ap-southeast-2": ("Sydney", -33.87, 151.21, "apac"),
}
GROK4_REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1"]


def http_backend(url: str, **timeouts: float) -> str:
    t = ""
    if timeouts:
        t = ", timeouts = { " + ", ".join(f"{k} = {v}" for k, v in timeouts.items()) + " }"
    return f'{{ kind = "http", url = "{url}"{t} }}'


def region_lines(regions: dict[str, tuple[str, float, float, str]]) -> list[str]:
    """``[[regions]]`` tables for {id: (name, lat, lon, zone)}."""
    out: list[str] = []
    for rid, (name, lat, lon, zone) in regions.items():
        out += ["[[regions]]", f'id = "{rid}"', f'name = "{name}"', f"lat = {lat}", f"lon = {lon}", f'zone = "{zone}"', ""]
    return out


def world(
    backends: dict[str, list[str]],
    *,
    model: str = "grok-4",
    limit: int = 8,
    gateway: str = "",
    extra: str = "",
    probes: bool = False,
    regions: dict[str, tuple[str, float, float, str]] = DEMO_REGIONS,
    outage: dict[str, str] | None = None,
) -> str:
    """``regions`` (the demo's by default); ``backends`` maps region -> backend specs (TOML inline tables)
    for ``model``; ``outage`` maps region -> its ``on_redis_outage`` mode.

    Active probes are off unless asked for: every test backend sits on loopback, so measured round trips
    would (rightly) erase the geography these tests are about."""
    out = ["[gateway]", "lat = 39.04", "lon = -77.49", gateway, ""]
    if not probes:
        out += ["[health]", "probe_interval_s = 0", ""]
    out += region_lines(regions)
    for rid, specs in backends.items():
        out += [
            "[[deployments]]",
            f'region = "{rid}"',
            f'models = ["{model}"]',
            f"limit = {limit}",
            *([f'on_redis_outage = "{outage[rid]}"'] if outage and rid in outage else []),
            f"backends = [{', '.join(specs)}]",
            "",
        ]
    out += ["[[teams]]", 'name = "demo"', 'keys = [{ id = "demo", env = "REGIONGATE_DEMO_API_KEY" }]', extra]
    return "\n".join(out)


def capture_world(url: str, gateway: str = "") -> str:
    """One region whose only backend is ``url`` (a ``bench.capture`` backend), with no load scraping."""
    return world({"us-east-1": [f'{{ kind = "http", url = "{url}", metrics_url = "" }}']}, gateway=gateway)


def demo() -> str:
    return demo_config_text()
