"""The REST surface: auth, models, regions, health, metrics, and bad input that must not hurt."""

from __future__ import annotations

import subprocess
import sys

import httpx
import openai
import pytest

from tests.support.clients import MSG, client
from tests.support.procs import DEMO_KEY, Proc
from tests.support.worlds import world

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> object:
    """One demo gateway (small body limit) shared by the read-only tests of this module."""
    from tests.support.procs import free_port, spawn, wait_http

    tmp = tmp_path_factory.mktemp("api")
    cfg = tmp / "demo.toml"
    from regiongate.config import demo_config_text

    cfg.write_text(
        demo_config_text().replace(
            'base_domains = ["api.regiongate.test"]',
            'base_domains = ["api.regiongate.test"]\nmax_body_bytes = 4096',
        )
    )
    port = free_port()
    log = tmp / "gw.log"
    proc = spawn(
        ["serve", "--config", str(cfg), "--port", str(port), "--grpc-port", "0"],
        log,
        {"REGIONGATE_DEMO_API_KEY": DEMO_KEY},
    )
    p = Proc(proc, port, log)
    wait_http(p.url + "/healthz", proc, log=log)
    yield p
    p.stop()


def test_missing_or_wrong_key_is_401(gw: Proc) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=gw.url + "/v1", api_key="rg-wrong").chat.completions.create(
            model="grok-4", messages=MSG
        )
    assert e.value.code == "invalid_api_key"
    r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "grok-4", "messages": MSG})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_models_depend_on_the_endpoint(gw: Proc) -> None:
    everywhere = {m.id for m in client(gw).models.list()}
    assert everywhere == {
        "grok-4",
        "grok-4-fast",
        "grok-3-mini",
        "grok-code-fast-1",
        "grok-embed",
        "grok-imagine-image",
        "grok-imagine-video",
    }
    sydney = {m.id for m in client(gw, "ap-southeast-2.localhost").models.list()}
    assert sydney == {"grok-4-fast"}
    assert client(gw).models.retrieve("grok-code-fast-1").id == "grok-code-fast-1"
    with pytest.raises(openai.NotFoundError) as e:
        client(gw, "eu-west-1.localhost").models.retrieve("grok-code-fast-1")
    assert "us-east-1" in e.value.message


def test_regions_show_zone_models_health_and_capacity(gw: Proc) -> None:
    data = httpx.get(gw.url + "/v1/regions", headers=AUTH).json()["data"]
    by_id = {r["id"]: r for r in data}
    assert set(by_id) == {
        "us-east-1",
        "us-west-2",
        "eu-west-1",
        "eu-central-1",
        "ap-northeast-1",
        "ap-southeast-2",
    }
    tokyo = by_id["ap-northeast-1"]
    assert tokyo["zone"] == "apac" and tokyo["location"] == {"lat": 35.68, "lon": 139.69} and tokyo["healthy"]
    assert {m["id"] for m in tokyo["models"]} == {"grok-4", "grok-4-fast"}
    assert tokyo["models"][0]["capacity"]["limit"] == 8


def test_health_ready_and_metrics(gw: Proc) -> None:
    assert httpx.get(gw.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(gw.url + "/readyz").status_code == 200
    client(gw, "us-east-1.localhost").chat.completions.create(model="grok-4", messages=MSG)
    text = httpx.get(gw.url + "/metrics").text
    assert 'regiongate_requests_total{model="grok-4",region="us-east-1",route="pinned",status="200"}' in text
    assert 'regiongate_capacity_limit{model="grok-4",region="us-east-1"} 8.0' in text


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_json", None),
        (b"", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_json", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "invalid_value", "model"),
        (b'{"model": 4, "messages": []}', 400, "invalid_value", "model"),
        (b'{"model": "grok-4", "messages": "hi"}', 400, "invalid_value", "messages"),
        (
            b'{"model": "grok-4", "messages": [{"role":"user","content":"x"}], "stream": "yes"}',
            400,
            "invalid_type",
            "stream",
        ),
        (
            b'{"model": "grok-4", "messages": [{"role":"user","content":"x"}], "max_tokens": "9"}',
            400,
            "invalid_value",
            "max_tokens",
        ),
        (
            b'{"model": "grok-4", "messages": [{"role":"user","content":"x"}], "n": 0}',
            400,
            "invalid_value",
            "n",
        ),
        (
            b'{"model": "no-such-model", "messages": [{"role":"user","content":"x"}]}',
            404,
            "model_not_found",
            "model",
        ),
        (
            b'{"model": "grok-4", "messages": [{"role":"user","content":"' + b"x" * 5000 + b'"}]}',
            413,
            "request_too_large",
            None,
        ),
    ],
)
def test_bad_input_gets_a_clear_openai_error(
    gw: Proc, body: bytes, status: int, code: str, param: str | None
) -> None:
    r = httpx.post(
        gw.url + "/v1/chat/completions", content=body, headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code == status
    err = r.json()["error"]
    assert (err["code"], err["param"]) == (code, param)
    assert err["message"] and err["type"]
    # The service stays healthy and serves the next request.
    assert client(gw).chat.completions.create(model="grok-3-mini", messages=MSG).choices[0].message.content


def test_unknown_paths_and_methods(gw: Proc) -> None:
    r = httpx.get(gw.url + "/v2/nothing", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = httpx.delete(gw.url + "/v1/models", headers=AUTH)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.get(gw.url + "/v1/nothing", headers=AUTH)
    assert r.status_code == 404
    r = httpx.get(gw.url + "/v1/models", headers={**AUTH, "Host": "evil.example.org"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_host"
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "grok-4", "messages": MSG},
        headers={**AUTH, "x-regiongate-client-location": "north,pole"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_client_location"


def test_curl_with_the_product_page_body(gw: Proc) -> None:
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-D",
            "-",
            f"http://us-east-1.localhost:{gw.port}/v1/chat/completions",
            "-H",
            "Content-Type: application/json",
            "-H",
            f"Authorization: Bearer {DEMO_KEY}",
            "-d",
            '{"messages": [{"role": "user", "content": "What is the meaning of life, the universe, and everything?"}], "model": "grok-4", "stream": false}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "x-regiongate-region: us-east-1" in out and '"object":"chat.completion"' in out


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "regiongate", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_route_explain_and_check_config(tmp_path: object) -> None:
    out = _cli("route", "explain", "--model", "grok-4", "--from", "35.68,139.69").stdout
    lines = out.splitlines()
    assert lines[2].startswith("ap-northeast-1") and "nearest" in lines[2]
    out = _cli("route", "explain", "--model", "grok-4", "--endpoint", "ap-southeast-2.localhost").stdout
    assert "404 model_not_found" in out
    assert _cli("check-config").returncode == 0


def test_cli_check_config_names_the_bad_field(tmp_path: pytest.TempPathFactory) -> None:
    import pathlib

    bad = pathlib.Path(str(tmp_path)) / "bad.toml"
    bad.write_text(
        world({"us-east-1": ['{ kind = "simulated", ttft_ms = -1 }']}).replace("lat = 45.84", "lat = 145.84")
    )
    r = _cli("check-config", "--config", str(bad))
    assert r.returncode == 2
    assert "regions.1.lat" in r.stderr and "deployments.0.backends.0.simulated.ttft_ms" in r.stderr
    bad.write_text("[[regions]\n")
    r = _cli("check-config", "--config", str(bad))
    assert r.returncode == 2 and "not valid TOML" in r.stderr
