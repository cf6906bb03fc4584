"""Client location from a MaxMind-format database the test builds itself (nothing is downloaded), with
X-Forwarded-For believed only through trusted proxies and the explicit location header taking precedence."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from regiongate.config import ConfigError, parse_config
from tests.support.procs import DEMO_KEY, Proc
from tests.support.worlds import GROK4_REGIONS, world

MSG = [{"role": "user", "content": "Where am I served from?"}]
TOKYO = {"location": {"latitude": 35.68, "longitude": 139.69}, "city": {"names": {"en": "Tokyo"}}}
FRANKFURT = "50.11,8.68"


def build_mmdb(path: Path) -> Path:
    """127.0.0.2 (a client on this machine) and 203.0.113.0/24 (an address seen only in headers) are in
    Tokyo; nothing else is in the database."""
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City", languages=["en"])
    w.insert_network(IPSet(["127.0.0.2/32", "203.0.113.0/24"]), TOKYO)
    w.to_db_file(str(path))
    return path


def served_from(gw: Proc, source: str, headers: dict[str, str] | None = None) -> tuple[str, str, dict]:
    """(region, route, explain rows) of one global request sent from the local address ``source``."""
    http = httpx.Client(transport=httpx.HTTPTransport(local_address=source))
    api = openai.OpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, http_client=http, max_retries=0)
    try:
        raw = api.chat.completions.with_raw_response.create(
            model="grok-4",
            messages=MSG,
            max_tokens=4,
            extra_headers={"x-regiongate-explain": "1", **(headers or {})},
        )
    finally:
        http.close()
    rows = {r["region"]: r for r in json.loads(raw.headers["x-regiongate-explain"])}
    return raw.headers["x-regiongate-region"], raw.headers["x-regiongate-route"], rows


def test_geoip_locates_clients_through_trusted_proxies_only(
    start_gateway: Callable[..., Proc], tmp_path: Path
) -> None:
    db = build_mmdb(tmp_path / "city.mmdb")
    sims = {r: ['{ kind = "simulated", ttft_ms = 1, tokens_per_s = 1000 }'] for r in GROK4_REGIONS}
    gw = start_gateway(world(sims, gateway=f'geoip_database = "{db}"\ntrusted_proxies = ["127.0.0.1/32"]'))

    # A client connecting from an address the database puts in Tokyo is served in Tokyo.
    region, route, rows = served_from(gw, "127.0.0.2")
    assert (region, route) == ("ap-northeast-1", "nearest")
    assert rows["ap-northeast-1"]["rtt_source"] == "client-distance"

    # Behind the trusted proxy (127.0.0.1) the client is the address the proxy forwarded.
    assert served_from(gw, "127.0.0.1", {"x-forwarded-for": "203.0.113.7"})[0] == "ap-northeast-1"
    # The walk goes right to left past trusted hops...
    assert served_from(gw, "127.0.0.1", {"x-forwarded-for": "203.0.113.7, 127.0.0.1"})[0] == "ap-northeast-1"
    # ...and stops at the first untrusted one: an entry left of it may be forged by the client.
    region, _, rows = served_from(gw, "127.0.0.1", {"x-forwarded-for": "203.0.113.7, 198.51.100.9"})
    assert region == "us-east-1" and rows["us-east-1"]["rtt_source"] == "gateway-distance"

    # An untrusted peer's X-Forwarded-For is ignored; its own address is not in the database.
    assert served_from(gw, "127.0.0.3", {"x-forwarded-for": "203.0.113.7"})[0] == "us-east-1"

    # The explicit location header from a trusted proxy wins over GeoIP...
    headers = {"x-regiongate-client-location": FRANKFURT, "x-forwarded-for": "203.0.113.7"}
    assert served_from(gw, "127.0.0.1", headers)[0] == "eu-central-1"
    # ...and from anyone else it is ignored: the client's own address decides.
    assert served_from(gw, "127.0.0.2", {"x-regiongate-client-location": FRANKFURT})[0] == "ap-northeast-1"


def test_geoip_database_is_checked_with_the_config(tmp_path: Path) -> None:
    base = world({"us-east-1": ['{ kind = "simulated" }']}, gateway='geoip_database = "{path}"')
    with pytest.raises(ConfigError, match="geoip_database"):
        parse_config(base.replace("{path}", str(tmp_path / "missing.mmdb")))
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a maxmind database")
    with pytest.raises(ConfigError, match="not a readable MaxMind DB"):
        parse_config(base.replace("{path}", str(junk)))
    good = build_mmdb(tmp_path / "city.mmdb")
    assert parse_config(base.replace("{path}", str(good))).gateway.geoip_database == str(good)


def test_route_explain_locates_a_client_ip(tmp_path: Path) -> None:
    db = build_mmdb(tmp_path / "city.mmdb")
    sims = {r: ['{ kind = "simulated" }'] for r in GROK4_REGIONS}
    (tmp_path / "world.toml").write_text(world(sims, gateway=f'geoip_database = "{db}"'))
    cmd = [sys.executable, "-m", "regiongate", "route", "explain", "--model", "grok-4"]
    cmd += ["--config", str(tmp_path / "world.toml"), "--client-ip", "203.0.113.7"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert out[0].endswith("ranked from client at 35.68,139.69 (GeoIP of 203.0.113.7)")
    assert out[2].startswith("ap-northeast-1") and "client-distance" in out[2]


def test_grpc_clients_are_located_the_same_way(start_gateway: Callable[..., Proc], tmp_path: Path) -> None:
    """The xAI SDK over gRPC: the front passes the real peer on, and X-Forwarded-For metadata from a
    trusted proxy is walked exactly as the REST header is."""
    from xai_sdk import Client
    from xai_sdk.chat import user

    from tests.support.procs import free_port

    db = build_mmdb(tmp_path / "city.mmdb")
    sims = {r: ['{ kind = "simulated", ttft_ms = 1, tokens_per_s = 1000 }'] for r in GROK4_REGIONS}
    port = free_port()
    start_gateway(
        world(sims, gateway=f'geoip_database = "{db}"\ntrusted_proxies = ["127.0.0.1/32"]'),
        args=["--grpc-port", str(port)],
    )

    def served_in(metadata: tuple[tuple[str, str], ...]) -> str:
        client = Client(api_key=DEMO_KEY, api_host=f"localhost:{port}", metadata=metadata)
        try:
            chat = client.chat.create(model="grok-4", max_tokens=16)
            chat.append(user("Where am I served from?"))
            text = chat.sample().content
        finally:
            client.close()
        return next(r for r in GROK4_REGIONS if r in text)  # the simulated text names its region

    assert served_in((("x-forwarded-for", "203.0.113.7"),)) == "ap-northeast-1"  # located by GeoIP
    assert served_in((("x-forwarded-for", "203.0.113.7, 198.51.100.9"),)) == "us-east-1"  # stops at untrusted
    assert served_in(()) == "us-east-1"  # 127.0.0.1 itself is not in the database
