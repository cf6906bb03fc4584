"""The control plane through a real gateway process: admin API, grants and key fences on routing,
/v1/models and /v1/regions, usage metering (also across SIGTERM), receipts, and bad admin input."""

from __future__ import annotations

import asyncio
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from regiongate.app.runtime import build_runtime
from regiongate.config import parse_config
from regiongate.control.store import open_store
from regiongate.pipeline import receipts
from regiongate.rest.app import RestApp
from tests.support.control import ADMIN_KEY, CHAT, admin, chat, code, control_config, get, http, new_key, poll
from tests.support.procs import DEMO_KEY

ENV = {"REGIONGATE_ADMIN_KEY": ADMIN_KEY}


def test_teams_keys_grants_and_fences_through_real_http(start_gateway: Any) -> None:
    gw = start_gateway(control_config(refresh_s=0.3), env=ENV)
    assert http().get(gw.url + "/admin/teams").status_code == 401
    r = http().get(gw.url + "/admin/teams", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and code(r) == "invalid_admin_key"

    # A team with every model: the OpenAI client works with its key.
    assert admin(gw, "POST", "/admin/teams", {"name": "acme"}).status_code == 201
    created = admin(gw, "POST", "/admin/teams/acme/keys", {"name": "ci"})
    assert created.status_code == 201
    acme_key, key_id = created.json()["key"], created.json()["id"]
    assert acme_key.startswith("rg-") and key_id.startswith("key_")
    assert created.json()["hint"] == acme_key[:7] + "…"
    # Shown once: listing and the team view never contain the secret.
    for path in ("/admin/keys", "/admin/teams/acme", "/admin/keys?team=acme"):
        listing = admin(gw, "GET", path)
        assert listing.status_code == 200 and acme_key not in listing.text and key_id in listing.text
    poll(lambda: get(gw, acme_key, "/v1/models").status_code == 200)
    client = openai.OpenAI(api_key=acme_key, base_url=gw.url + "/v1", max_retries=0)
    assert {m.id for m in client.models.list()} == {
        "grok-4",
        "grok-4-fast",
        "grok-3-mini",
        "grok-code-fast-1",
        "grok-embed",
        "grok-imagine-image",
        "grok-imagine-video",
    }
    done = client.chat.completions.create(model="grok-4", **CHAT)  # type: ignore[call-overload]
    assert done.choices[0].message.content

    # Grants: grok-4 only in eu-west-1, grok-3-mini anywhere. Nothing else is visible or reachable.
    grants = [{"model": "grok-4", "region": "eu-west-1"}, {"model": "grok-3-mini"}]
    assert admin(gw, "POST", "/admin/teams", {"name": "eu-team", "grants": grants}).status_code == 201
    eu_key = new_key(gw, "eu-team")
    models = {m["id"]: m["regions"] for m in get(gw, eu_key, "/v1/models").json()["data"]}
    assert models == {"grok-4": ["eu-west-1"], "grok-3-mini": ["us-east-1", "us-west-2", "eu-west-1"]}
    regions = [r["id"] for r in get(gw, eu_key, "/v1/regions").json()["data"]]
    assert regions == ["us-east-1", "us-west-2", "eu-west-1"]
    assert get(gw, eu_key, "/v1/models/grok-4-fast").status_code == 404
    r = chat(gw, eu_key, "grok-4-fast")
    assert r.status_code == 404 and code(r) == "model_not_found"
    r = chat(gw, eu_key, "grok-4", host="us-east-1.localhost")
    assert r.status_code == 404 and "eu-west-1" in r.json()["error"]["message"]
    r = chat(gw, eu_key, "grok-4")
    assert r.status_code == 200 and r.headers["x-regiongate-region"] == "eu-west-1"
    matrix = admin(gw, "GET", "/admin/teams/eu-team/models").json()
    assert [m["id"] for m in matrix["models"]] == ["grok-4", "grok-3-mini"]
    assert matrix["models"][0]["regions"] == {"us-east-1": False, "us-west-2": False, "eu-west-1": True}
    assert matrix["models"][0]["global"] is True

    # A grant change applies within the refresh interval, on this gateway without a restart.
    grants.append({"model": "grok-4-fast", "region": "ap-southeast-2"})
    assert admin(gw, "PUT", "/admin/teams/eu-team/grants", {"grants": grants}).status_code == 200
    poll(lambda: chat(gw, eu_key, "grok-4-fast").status_code == 200, timeout=10)
    assert chat(gw, eu_key, "grok-4-fast").headers["x-regiongate-region"] == "ap-southeast-2"

    # A key fenced to the eu zone: the global endpoint stays in eu; us endpoints answer 403.
    eu_only = new_key(gw, "acme", zone="eu")
    r = chat(gw, eu_only, "grok-4")
    assert r.status_code == 200 and r.headers["x-regiongate-region"] in ("eu-west-1", "eu-central-1")
    for host in ("us-east-1.localhost", "us.localhost"):
        r = chat(gw, eu_only, "grok-4", host=host)
        assert r.status_code == 403 and code(r) == "region_not_allowed", r.text
    assert chat(gw, eu_only, "grok-4", host="eu.localhost").status_code == 200
    assert {r["zone"] for r in get(gw, eu_only, "/v1/regions").json()["data"]} == {"eu"}
    r = chat(gw, eu_only, "grok-code-fast-1")  # only offered in us-east-1: outside the fence
    assert r.status_code == 404 and code(r) == "model_not_found"
    assert "us-east-1" not in r.json()["error"]["message"]  # never pointed outside its zone

    # Revocation: the key stops working within the refresh interval.
    assert admin(gw, "DELETE", f"/admin/keys/{key_id}").json()["active"] is False
    _, took = poll(lambda: chat(gw, acme_key, "grok-4").status_code == 401, timeout=10)
    assert code(chat(gw, acme_key, "grok-4")) == "invalid_api_key"
    print(f"revocation applied after {took:.2f}s (refresh_s=0.3)")

    # The config's own demo key keeps working next to store keys.
    assert chat(gw, DEMO_KEY, "grok-4").status_code == 200
    # The console is served by the gateway and tells a key who it belongs to.
    assert http().get(gw.url + "/console").status_code == 308
    page = http().get(gw.url + "/console/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    assert get(gw, eu_key, "/console/api/session").json()["team"] == "eu-team"
    assert http().get(gw.url + "/console/api/session").status_code == 401


def test_bad_admin_input_gets_clear_errors_and_changes_nothing(start_gateway: Any) -> None:
    gw = start_gateway(control_config(refresh_s=0.3), env=ENV)
    assert admin(gw, "POST", "/admin/teams", {"name": "acme"}).status_code == 201
    key_id = admin(gw, "POST", "/admin/teams/acme/keys", {}).json()["id"]

    def state() -> tuple[str, str]:
        return admin(gw, "GET", "/admin/teams").text, admin(gw, "GET", "/admin/keys").text

    before = state()
    cases: list[tuple[str, str, Any, bytes | None, int, str, str]] = [
        ("POST", "/admin/teams", None, b"{not json", 400, "invalid_value", "not valid JSON"),
        ("POST", "/admin/teams", None, b"[1, 2]", 400, "invalid_value", "JSON object"),
        ("POST", "/admin/teams", {}, None, 400, "invalid_value", "'name' is required"),
        (
            "POST",
            "/admin/teams",
            {"name": "b", "colour": "red"},
            None,
            400,
            "invalid_value",
            "Unknown field(s) colour",
        ),
        ("POST", "/admin/teams", {"name": "acme"}, None, 409, "conflict", "already exists"),
        ("POST", "/admin/teams", {"name": "demo"}, None, 409, "conflict", "declared in the config"),
        (
            "POST",
            "/admin/teams",
            {"name": "x'; DROP TABLE teams;--"},
            None,
            400,
            "invalid_value",
            "Invalid team name",
        ),
        ("POST", "/admin/teams", {"name": 42}, None, 400, "invalid_value", "Invalid team name"),
        ("POST", "/admin/teams", {"name": "b", "grants": "all"}, None, 400, "invalid_value", "must be null"),
        (
            "POST",
            "/admin/teams",
            {"name": "b", "grants": [{"model": "gpt-9"}]},
            None,
            400,
            "invalid_value",
            "Unknown model 'gpt-9'",
        ),
        (
            "POST",
            "/admin/teams",
            {"name": "b", "grants": [{"model": "grok-4", "region": "mars-1"}]},
            None,
            400,
            "invalid_value",
            "Unknown region 'mars-1'",
        ),
        (
            "POST",
            "/admin/teams",
            {"name": "b", "grants": [{"model": "grok-4", "region": "ap-southeast-2"}]},
            None,
            400,
            "invalid_value",
            "not offered in ap-southeast-2",
        ),
        (
            "POST",
            "/admin/teams",
            {"name": "b", "grants": [{"model": "grok-4", "zone": "eu"}]},
            None,
            400,
            "invalid_value",
            "'model' and optionally 'region'",
        ),
        ("PUT", "/admin/teams/acme/grants", {}, None, 400, "invalid_value", "'grants' is required"),
        (
            "PUT",
            "/admin/teams/ghost/grants",
            {"grants": None},
            None,
            404,
            "not_found",
            "Unknown team 'ghost'",
        ),
        ("POST", "/admin/teams/ghost/keys", {}, None, 404, "not_found", "Unknown team 'ghost'"),
        (
            "POST",
            "/admin/teams/acme/keys",
            {"zone": "mars"},
            None,
            400,
            "invalid_value",
            "Unknown data zone 'mars'",
        ),
        (
            "POST",
            "/admin/teams/acme/keys",
            {"spill_budget_ms": -1},
            None,
            400,
            "invalid_value",
            "non-negative",
        ),
        (
            "POST",
            "/admin/teams/acme/keys",
            {"spill_budget_ms": True},
            None,
            400,
            "invalid_value",
            "non-negative",
        ),
        ("POST", "/admin/teams/acme/keys", {"name": "x" * 200}, None, 400, "invalid_value", "at most 128"),
        (
            "POST",
            "/admin/teams",
            {"name": "b", "service_tiers": ["turbo"]},
            None,
            400,
            "invalid_value",
            "'turbo'",
        ),
        (
            "POST",
            "/admin/teams",
            {"name": "b", "service_tiers": "flex"},
            None,
            400,
            "invalid_value",
            "a list",
        ),
        ("POST", "/admin/teams/acme/keys", {"service_tier": "auto"}, None, 400, "invalid_value", "'auto'"),
        ("POST", "/admin/teams/acme/keys", {"service_tier": ["flex"]}, None, 400, "invalid_value", "Unknown"),
        (
            "PUT",
            "/admin/teams/acme/service_tiers",
            {},
            None,
            400,
            "invalid_value",
            "'service_tiers' is required",
        ),
        ("PUT", "/admin/teams/ghost/service_tiers", {"service_tiers": None}, None, 404, "not_found", "ghost"),
        ("GET", "/admin/teams/ghost", None, None, 404, "not_found", "Unknown team 'ghost'"),
        ("GET", "/admin/teams/acme/models?region=mars-1", None, None, 400, "invalid_value", "Unknown region"),
        ("GET", "/admin/teams/acme/usage?days=abc", None, None, 400, "invalid_value", "whole number"),
        ("GET", "/admin/keys?team=ghost", None, None, 404, "not_found", "Unknown team"),
        ("DELETE", "/admin/keys/key_000000000000", None, None, 404, "not_found", "Unknown key id"),
        ("DELETE", "/admin/teams/ghost", None, None, 404, "not_found", "Unknown team"),
        ("PATCH", "/admin/teams", {}, None, 405, "method_not_allowed", "use GET, POST"),
        ("GET", "/admin/nothing", None, None, 404, "unknown_url", "Unknown admin path"),
    ]
    for method, path, body, raw, status, err_code, text in cases:
        r = admin(gw, method, path, body, raw)
        assert r.status_code == status, (method, path, r.text)
        err = r.json()["error"]
        assert err["code"] == err_code and text in err["message"], (method, path, err)
    assert state() == before

    # Revoking twice: the second is a conflict and the first stands.
    assert admin(gw, "DELETE", f"/admin/keys/{key_id}").status_code == 200
    after_revoke = state()
    r = admin(gw, "DELETE", f"/admin/keys/{key_id}")
    assert r.status_code == 409 and "already revoked" in r.json()["error"]["message"]
    assert state() == after_revoke


def test_usage_is_metered_by_day_model_region_and_receipts_verify(start_gateway: Any) -> None:
    gw = start_gateway(control_config(refresh_s=0.3, usage_flush_s=0.2), env=ENV)
    jwks = http().get(gw.url + receipts.JWKS_PATH).json()
    assert [k["kty"] for k in jwks["keys"]] == ["OKP"]
    sent = [
        ("grok-4", "localhost"),
        ("grok-4", "localhost"),
        ("grok-4", "eu-west-1.localhost"),
        ("grok-4-fast", "eu.localhost"),
    ]
    for model, host in sent:
        r = chat(gw, DEMO_KEY, model, host=host, stream=True)
        assert r.status_code == 200
        claims = receipts.verify(r.headers[receipts.HEADER], jwks)
        assert claims["rid"] == r.headers["x-request-id"]
        assert (claims["team"], claims["key"], claims["model"]) == ("demo", "demo", model)
        assert claims["region"] == r.headers["x-regiongate-region"]
        assert claims["route"] == r.headers["x-regiongate-route"]
        assert claims["zone"] == claims["region"].split("-")[0].replace("ap", "apac")
        assert abs(claims["iat"] - time.time()) < 60
        endpoint = {
            "localhost": "global",
            "eu-west-1.localhost": "region:eu-west-1",
            "eu.localhost": "zone:eu",
        }
        assert claims["endpoint"] == endpoint[host]
    assert chat(gw, DEMO_KEY, "grok-4", host="mars-1.localhost").status_code == 404  # not routed: no receipt
    # A receipt whose claims were edited no longer verifies.
    token = chat(gw, DEMO_KEY, "grok-4").headers[receipts.HEADER]
    head, payload, sig = token.split(".")
    forged = receipts.b64url(receipts.b64url_decode(payload).replace(b"us-east-1", b"eu-west-1"))
    with pytest.raises(receipts.ReceiptError, match="altered or forged"):
        receipts.verify(f"{head}.{forged}.{sig}", jwks)

    def usage() -> list[dict[str, Any]] | None:
        rows = get(gw, DEMO_KEY, "/v1/usage").json()["data"]
        return rows if sum(r["requests"] for r in rows) == 5 else None

    rows, _ = poll(usage, timeout=10)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    by = {(r["day"], r["model"], r["region"]): r for r in rows}
    assert by[(day, "grok-4", "us-east-1")]["requests"] == 3
    assert by[(day, "grok-4", "eu-west-1")]["requests"] == 1
    assert sum(r["requests"] for k, r in by.items() if k[1] == "grok-4-fast") == 1
    assert all(r["completion_tokens"] > 0 and r["avg_ttft_ms"] > 0 for r in rows)
    team_usage = admin(gw, "GET", "/admin/teams/demo/usage?days=1").json()["data"]
    assert sorted(map(str, team_usage)) == sorted(map(str, rows))


def test_no_usage_record_is_lost_on_sigterm(start_gateway: Any, tmp_path: Path) -> None:
    # A flush interval far longer than the test: every record is still pending when SIGTERM arrives.
    db = tmp_path / "usage.db"
    gw = start_gateway(
        control_config(store=f"sqlite:///{db}", usage_flush_s=300, usage_batch=100000), env=ENV
    )
    n = 48
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(lambda i: chat(gw, DEMO_KEY, "grok-4-fast", stream=i % 2 == 0).status_code, range(n))
        )
    assert statuses == [200] * n

    async def count() -> int:
        store = open_store(f"sqlite:///{db}")
        try:
            return sum(r.requests for r in await store.usage("demo"))
        finally:
            await store.aclose()

    assert asyncio.run(count()) == 0  # all still pending in the gateway's writer
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(20) == 0
    assert asyncio.run(count()) == n
    assert "usage records lost" not in gw.output()


SPILL_WORLD = """
[gateway]
lat = 39.04
lon = -77.49
[[regions]]
id = "us-east-1"
lat = 39.04
lon = -77.49
zone = "us"
[[regions]]
id = "us-west-2"
lat = 45.84
lon = -119.70
zone = "us"
[[deployments]]
region = "us-east-1"
models = ["m"]
limit = 1
backends = [{ kind = "simulated", ttft_ms = 5, tokens_per_s = 2 }]
[[deployments]]
region = "us-west-2"
models = ["m"]
limit = 4
backends = [{ kind = "simulated", ttft_ms = 5, tokens_per_s = 200 }]
[[teams]]
name = "demo"
keys = [{ id = "demo", env = "REGIONGATE_DEMO_API_KEY" }]
[control]
refresh_s = 0.3
"""


def test_spillover_budget_is_bound_to_the_key(start_gateway: Any) -> None:
    gw = start_gateway(SPILL_WORLD, env=ENV)
    assert admin(gw, "POST", "/admin/teams", {"name": "acme"}).status_code == 201
    tight = new_key(gw, "acme", spill_budget_ms=1)
    loose = new_key(gw, "acme", spill_budget_ms=500)
    # Hold us-east-1's only slot with a slow stream, then ask the global endpoint again.
    with http().stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json={
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 200,
            "stream": True,
        },
        headers={"Authorization": f"Bearer {DEMO_KEY}"},
        timeout=30,
    ) as held:
        assert held.headers["x-regiongate-region"] == "us-east-1"
        chunks = held.iter_bytes()  # keep a reference: a collected iterator closes the stream
        next(chunks)
        capacity = get(gw, DEMO_KEY, "/v1/regions").json()["data"][0]["models"][0]["capacity"]
        assert capacity == {"in_use": 1, "limit": 1}
        r = chat(gw, tight, "m")
        assert r.status_code == 503 and code(r) == "region_unavailable", r.text
        assert "spillover latency budget" in r.json()["error"]["message"]
        assert "us-west-2" in r.json()["error"]["message"]  # what could serve it
        r = chat(gw, loose, "m")
        assert r.status_code == 200 and r.headers["x-regiongate-route"] == "spillover"
        assert r.headers["x-regiongate-region"] == "us-west-2"


def test_a_store_keys_tier_and_its_teams_allow_list_apply_to_requests(start_gateway: Any) -> None:
    gw = start_gateway(control_config(refresh_s=0.3), env=ENV)
    r = admin(gw, "POST", "/admin/teams", {"name": "batch", "service_tiers": ["flex", "default"]})
    assert r.status_code == 201 and r.json()["service_tiers"] == ["flex", "default"]
    r = admin(gw, "POST", "/admin/teams/batch/keys", {"service_tier": "priority"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "service_tier", r.text
    nightly = new_key(gw, "batch", service_tier="flex")
    r = chat(gw, nightly, "grok-4")  # asks for no tier: the key's
    assert r.status_code == 200 and r.headers["x-regiongate-service-tier"] == "flex"
    assert chat(gw, nightly, "grok-4", service_tier="auto").headers["x-regiongate-service-tier"] == "flex"
    assert (
        chat(gw, nightly, "grok-4", service_tier="default").headers["x-regiongate-service-tier"] == "default"
    )
    r = chat(gw, nightly, "grok-4", service_tier="priority")
    assert r.status_code == 403 and code(r) == "service_tier_not_allowed", r.text

    # Narrowing the list past the key's own tier is refused; widening it applies within the refresh.
    keys = admin(gw, "GET", "/admin/keys?team=batch").json()["data"]
    assert [k["service_tier"] for k in keys] == ["flex"]
    r = admin(gw, "PUT", "/admin/teams/batch/service_tiers", {"service_tiers": ["default"]})
    assert r.status_code == 409 and keys[0]["id"] in r.json()["error"]["message"]
    r = admin(gw, "PUT", "/admin/teams/batch/service_tiers", {"service_tiers": None})
    assert r.status_code == 200 and r.json()["service_tiers"] is None

    def as_priority() -> str | None:
        r = chat(gw, nightly, "grok-4", service_tier="priority")
        return r.headers["x-regiongate-service-tier"] if r.status_code == 200 else None

    assert poll(as_priority, timeout=10)[0] == "priority"


async def test_admin_api_is_off_without_an_admin_key() -> None:
    cfg = parse_config(control_config(store="sqlite:///:memory:"))
    rt = build_runtime(cfg, env={})
    app = RestApp(rt, rt.mounts)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
        r = await c.get("/admin/teams", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
    assert "REGIONGATE_ADMIN_KEY" in r.json()["error"]["message"]


async def test_config_reload_keeps_the_store_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from regiongate.app.reload import apply

    monkeypatch.setenv("REGIONGATE_DEMO_API_KEY", DEMO_KEY)  # a reload reads the environment again

    cfg = parse_config(control_config(store=f"sqlite:///{tmp_path}/c.db", receipts=False))
    rt = build_runtime(cfg, env={"REGIONGATE_DEMO_API_KEY": DEMO_KEY})
    assert rt.control is not None
    await rt.control.start(rt.gateway)
    try:
        await rt.control.ops.create_team("acme")
        _, secret = await rt.control.ops.create_key("acme")
        assert rt.keys.lookup(secret) is not None  # the admin change refreshed this gateway at once
        apply(rt, cfg)  # what SIGHUP does: the config's keys are rebuilt
        assert rt.keys.lookup(secret) is not None and rt.keys.lookup(DEMO_KEY) is not None
    finally:
        await rt.aclose()


async def test_a_reload_applies_receipt_batching_and_window(tmp_path: Path) -> None:
    from regiongate.app.reload import apply

    def cfg(batch: bool, window_us: int) -> Any:
        return parse_config(
            control_config(
                store=f"sqlite:///{tmp_path}/c.db",
                receipt_key_dir=str(tmp_path / "keys"),
                receipt_batch=batch,
                receipt_window_us=window_us,
            )
        )

    rt = build_runtime(cfg(True, 2000), env={"REGIONGATE_DEMO_API_KEY": DEMO_KEY})
    assert rt.control is not None
    await rt.control.start(rt.gateway)
    try:
        hook = rt.control.receipts
        assert hook is not None and hook.batch and hook.window_s == pytest.approx(0.002)
        apply(rt, cfg(False, 0))  # what SIGHUP does
        assert rt.control.receipts is hook  # the same hook (and signing key), new settings
        assert not hook.batch and hook.window_s == 0
    finally:
        await rt.aclose()


async def test_metrics_count_receipts_and_the_signatures_they_shared(tmp_path: Path) -> None:
    text = control_config(store=f"sqlite:///{tmp_path}/c.db", receipt_key_dir=str(tmp_path / "keys"))
    rt = build_runtime(parse_config(text), env={"REGIONGATE_DEMO_API_KEY": DEMO_KEY})
    assert rt.control is not None
    await rt.control.start(rt.gateway)
    app = RestApp(rt, rt.mounts)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
            auth = {"Authorization": f"Bearer {DEMO_KEY}"}
            answers = await asyncio.gather(
                *(c.post("/v1/chat/completions", json={"model": "grok-4", **CHAT}, headers=auth) for _ in range(6))
            )
            assert all(r.status_code == 200 and receipts.HEADER in r.headers for r in answers)
            text = (await c.get("/metrics")).text
        hook = rt.control.receipts
        assert hook is not None and hook.receipts == 6 and 1 <= hook.signatures <= 6
        assert "regiongate_receipts_total 6.0" in text
        assert f"regiongate_receipt_signatures_total {float(hook.signatures)}" in text
    finally:
        await rt.aclose()
