"""A reload in process: the config, fleet and keys it swaps are what the listeners use on the very next
request (one ``Live`` reference, read per request), with no restart and no listener told."""

from __future__ import annotations

import httpx
import pytest

from regiongate.app.reload import apply
from regiongate.app.runtime import build_runtime
from regiongate.config import parse_config
from regiongate.rest.app import RestApp
from tests.support.procs import DEMO_KEY
from tests.support.worlds import world

FAST = '{ kind = "simulated", ttft_ms = 1, tokens_per_s = 5000 }'
AUTH = {"authorization": f"Bearer {DEMO_KEY}"}


def _chat(model: str, pad: int = 0) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi" + " " * pad}], "max_tokens": 4}


async def test_a_reload_is_what_the_next_request_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIONGATE_DEMO_API_KEY", DEMO_KEY)  # a reload reads the environment again
    before = parse_config(world({"us-east-1": [FAST]}, gateway='base_domains = ["a.example"]'))
    after = parse_config(
        world(
            {"us-east-1": [FAST], "eu-west-1": [FAST]},
            model="grok-5",
            gateway='base_domains = ["b.example"]\nmax_body_bytes = 2048',
        )
    )
    rt = build_runtime(before, env={"REGIONGATE_DEMO_API_KEY": DEMO_KEY})
    app = RestApp(rt, rt.mounts)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        eu = {**AUTH, "host": "eu-west-1.b.example"}
        r = await c.post("/v1/chat/completions", json=_chat("grok-5"), headers=eu)
        assert r.status_code == 404, r.text  # b.example is no base domain of this config yet
        r = await c.post("/v1/chat/completions", json=_chat("grok-4", pad=4000), headers=AUTH)
        assert r.status_code == 200, r.text

        apply(rt, after)  # what SIGHUP does

        r = await c.post("/v1/chat/completions", json=_chat("grok-5"), headers=eu)
        assert r.status_code == 200, r.text  # the new base domain (callers) and the new fleet (gateway)
        assert r.headers["x-regiongate-region"] == "eu-west-1"
        models = (await c.get("/v1/models", headers=AUTH)).json()["data"]
        assert [m["id"] for m in models] == ["grok-5"]  # the catalog reads the new fleet
        r = await c.post("/v1/chat/completions", json=_chat("grok-5", pad=4000), headers=AUTH)
        assert r.status_code == 413, r.text  # the new body limit
        r = await c.post("/v1/chat/completions", json=_chat("grok-4"), headers=AUTH)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    await rt.aclose()


async def test_a_reload_turns_hedging_on_and_off() -> None:
    plain = world({"us-east-1": [FAST]})
    hedged = plain + "\n[hedging]\nenabled = true\nafter_factor = 2.0\nfloor_s = 0.5\n"
    rt = build_runtime(parse_config(plain), env={"REGIONGATE_DEMO_API_KEY": DEMO_KEY})
    assert rt.gateway.hedging is None
    apply(rt, parse_config(hedged))
    policy = rt.gateway.hedging
    assert policy is not None and (policy.after_factor, policy.floor_s) == (2.0, 0.5)
    apply(rt, parse_config(plain))
    assert rt.gateway.hedging is None
    await rt.aclose()
