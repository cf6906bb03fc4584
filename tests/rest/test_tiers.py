"""Service tiers through a real gateway process and the official OpenAI SDK: flex spills first and is
refused with Retry-After, priority takes the reserve, nothing leaves a regional endpoint, bad or
forbidden tiers are refused in the OpenAI error shape, and the tier comes back in body, header, receipt."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import anthropic
import httpx
import openai
import pytest

from regiongate.pipeline.auth import hash_key
from regiongate.pipeline.receipts import unverified_claims
from tests.support.clients import MSG, client
from tests.support.control import poll
from tests.support.procs import DEMO_KEY, Proc
from tests.support.worlds import world

FAST = '{ kind = "simulated", ttft_ms = 5, tokens_per_s = 4000 }'
SLOW = '{ kind = "simulated", ttft_ms = 5, tokens_per_s = 2 }'  # a stream that holds its slot
PRIO_KEY = "rg-test-priority-default-key"
FLEX_ONLY_KEY = "rg-test-flex-only-team-key"


def config(backend: str) -> str:
    # no load scraping: a reading a few seconds old would count slots the test has already freed
    text = (
        world({"us-east-1": [backend], "us-west-2": [backend]}, limit=4) + "\n[load]\nscrape_interval_s = 0\n"
    )
    # 4 slots: 1 kept for priority (0.25, rounded up), flex only while fewer than 2 are in use
    text = text.replace("limit = 4\n", "limit = 4\npriority_reserve = 0.25\nflex_below = 0.5\n")
    return text.replace(
        'keys = [{ id = "demo", env = "REGIONGATE_DEMO_API_KEY" }]',
        'keys = [{ id = "demo", env = "REGIONGATE_DEMO_API_KEY" },'
        ' { id = "prio", sha256 = "' + hash_key(PRIO_KEY) + '", service_tier = "priority" }]\n\n'
        '[[teams]]\nname = "batch"\nservice_tiers = ["flex"]\n'
        'keys = [{ id = "batch", sha256 = "' + hash_key(FLEX_ONLY_KEY) + '", service_tier = "flex" }]',
    )


def post(gw: Proc, tier: str | None, host: str = "localhost", key: str = DEMO_KEY) -> httpx.Response:
    body: dict[str, object] = {"model": "grok-4", "messages": MSG, "max_tokens": 4}
    if tier is not None:
        body["service_tier"] = tier
    headers = {"Authorization": f"Bearer {key}", "Host": host}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


@contextlib.contextmanager
def held(gw: Proc) -> Iterator[Callable[[str], str]]:
    """Open streams that keep their slot until the block ends; ``hold(tier)`` returns the region."""
    with httpx.Client(timeout=30) as http, contextlib.ExitStack() as stack:

        def hold(tier: str) -> str:
            body = {
                "model": "grok-4",
                "messages": MSG,
                "max_tokens": 400,
                "stream": True,
                "service_tier": tier,
            }
            r = stack.enter_context(
                http.stream(
                    "POST",
                    gw.url + "/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {DEMO_KEY}"},
                )
            )
            assert r.status_code == 200, r.read()
            assert r.headers["x-regiongate-service-tier"] == tier
            return r.headers["x-regiongate-region"]

        yield hold


def test_flex_spills_first_priority_keeps_the_reserve(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway(config(SLOW))
    with held(gw) as hold:
        assert [hold("default"), hold("default")] == ["us-east-1", "us-east-1"]
        # 2 of 4 in use at home: flex is past its threshold there and spills to the next region
        flex = post(gw, "flex")
        assert flex.status_code == 200
        assert (flex.headers["x-regiongate-region"], flex.headers["x-regiongate-route"]) == (
            "us-west-2",
            "spillover",
        )
        assert hold("default") == "us-east-1"  # 3 of 4: default still fits beside the reserve
        assert hold("default") == "us-west-2"  # only the priority reserve is left at home
        prio = post(gw, "priority")
        assert prio.status_code == 200 and prio.headers["x-regiongate-region"] == "us-east-1"
        # a regional endpoint never sends flex elsewhere: refused, with when to come back
        pinned = post(gw, "flex", host="us-east-1.localhost")
        assert pinned.status_code == 503
        assert pinned.json()["error"]["code"] == "region_unavailable"
        assert "held back from this tier" in pinned.json()["error"]["message"]
        assert float(pinned.headers["retry-after"]) > 0
        again = post(gw, "priority", host="us-east-1.localhost")
        assert again.status_code == 200, again.text  # the reserve is free again
        assert hold("default") == "us-west-2"
        # us-west-2 now holds 2: flex has no region below its threshold left
        refused = post(gw, "flex")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "capacity_exhausted"
        assert "retry-after" in refused.headers
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'regiongate_service_tier_requests_total{region="none",status="503",tier="flex"} 2.0' in metrics
    assert (
        'regiongate_service_tier_requests_total{region="us-east-1",status="200",tier="priority"} 2.0'
        in metrics
    )


def test_tier_in_body_header_and_receipt_and_key_defaults(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway(config(FAST))
    raw = client(gw).chat.completions.with_raw_response.create(
        model="grok-4", messages=MSG, service_tier="flex"
    )  # type: ignore[arg-type]
    assert raw.parse().service_tier == "flex"
    assert raw.headers["x-regiongate-service-tier"] == "flex"
    assert unverified_claims(raw.headers["x-regiongate-receipt"])["tier"] == "flex"
    # nothing asked: the key's default; "auto" is the same
    assert client(gw).chat.completions.create(model="grok-4", messages=MSG).service_tier == "default"  # type: ignore[arg-type]
    prio = openai.OpenAI(base_url=gw.url + "/v1", api_key=PRIO_KEY, max_retries=0)
    assert (
        prio.chat.completions.create(model="grok-4", messages=MSG, service_tier="auto").service_tier
        == "priority"
    )  # type: ignore[arg-type]
    assert (
        prio.chat.completions.create(model="grok-4", messages=MSG, service_tier="flex").service_tier == "flex"
    )  # type: ignore[arg-type]
    # a stream that asked for a tier carries it in every chunk, as OpenAI streams it
    stream = client(gw).chat.completions.create(
        model="grok-4",
        messages=MSG,  # type: ignore[arg-type]
        stream=True,
        service_tier="priority",
    )
    chunks = list(stream)
    assert len(chunks) > 1 and {c.service_tier for c in chunks} == {"priority"}

    # /v1/usage breaks the team's requests down by the tier each ran at (2 flex, 2 priority, 1 default)
    def by_tier() -> dict[str, int] | None:
        rows = httpx.get(gw.url + "/v1/usage", headers={"Authorization": f"Bearer {DEMO_KEY}"}).json()["data"]
        counts: dict[str, int] = {}
        for row in rows:
            for tier, share in row["by_tier"].items():
                counts[tier] = counts.get(tier, 0) + share["requests"]
        return counts if sum(counts.values()) == 5 else None

    assert poll(by_tier, timeout=10)[0] == {"default": 1, "flex": 2, "priority": 2}


BAD = ["scale", "PRIORITY", 3, True, ["flex"], {"tier": "flex"}, ""]


def test_bad_and_forbidden_tiers_are_refused_in_the_openai_shape(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway(config(FAST))
    for value in [*BAD, None]:
        body = {"model": "grok-4", "messages": MSG, "service_tier": value}
        r = httpx.post(
            gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {DEMO_KEY}"}
        )
        if value is None:  # JSON null: as if not sent
            assert r.status_code == 200
            continue
        assert r.status_code == 400, (value, r.text)
        err = r.json()["error"]
        assert (err["code"], err["param"], err["type"]) == (
            "invalid_value",
            "service_tier",
            "invalid_request_error",
        )
    batch = openai.OpenAI(base_url=gw.url + "/v1", api_key=FLEX_ONLY_KEY, max_retries=0)
    assert batch.chat.completions.create(model="grok-4", messages=MSG).service_tier == "flex"  # type: ignore[arg-type]
    with pytest.raises(openai.PermissionDeniedError) as e:
        batch.chat.completions.create(model="grok-4", messages=MSG, service_tier="priority")  # type: ignore[arg-type]
    assert e.value.code == "service_tier_not_allowed"
    assert "allowed: flex" in e.value.message


def test_the_tier_in_every_answer_kind_that_defines_one(start_gateway: Callable[..., Proc]) -> None:
    """Responses objects and their lifecycle events carry ``service_tier`` (OpenAI's ``Response`` field);
    Anthropic's messages ``usage.service_tier`` (``priority`` / ``standard``, its only values we map to),
    in the JSON answer and in ``message_start``; the legacy completion object, which OpenAI's API gives no
    tier, gets none. Through the official SDKs."""
    gw = start_gateway(config(FAST))
    prio = openai.OpenAI(base_url=gw.url + "/v1", api_key=PRIO_KEY, max_retries=0)
    assert prio.responses.create(model="grok-4", input="hi").service_tier == "priority"
    assert client(gw).responses.create(model="grok-4", input="hi", service_tier="flex").service_tier == "flex"
    events = list(client(gw).responses.create(model="grok-4", input="hi", stream=True, service_tier="flex"))
    lifecycle = [
        e for e in events if e.type in ("response.created", "response.in_progress", "response.completed")
    ]
    assert len(lifecycle) == 3 and {e.response.service_tier for e in lifecycle} == {"flex"}  # type: ignore[union-attr]
    assert events[-1].type == "response.completed"
    raw = httpx.post(
        gw.url + "/v1/completions",
        json={"model": "grok-4", "prompt": "hi", "max_tokens": 4, "service_tier": "flex"},
        headers={"Authorization": f"Bearer {DEMO_KEY}"},
        timeout=30,
    )
    assert raw.status_code == 200 and "service_tier" not in raw.json()
    assert raw.headers["x-regiongate-service-tier"] == "flex"  # the header still says it
    assert client(gw).completions.create(model="grok-4", prompt="hi", max_tokens=4).choices

    ant = anthropic.Anthropic(base_url=gw.url, api_key=PRIO_KEY, max_retries=0)
    msg = ant.messages.create(model="grok-4", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert msg.usage.service_tier == "priority"
    std = anthropic.Anthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0)
    raw_msg = std.messages.with_raw_response.create(
        model="grok-4",
        max_tokens=8,
        messages=[{"role": "user", "content": "hi"}],
        service_tier="standard_only",
    )
    assert raw_msg.parse().usage.service_tier == "standard"
    assert raw_msg.headers["x-regiongate-service-tier"] == "default"  # Anthropic's standard_only: default
    with ant.messages.stream(model="grok-4", max_tokens=8, messages=[{"role": "user", "content": "hi"}]) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and final.usage.service_tier == "priority"
    flex = std.messages.create(
        model="grok-4",
        max_tokens=8,
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"service_tier": "flex"},
    )
    assert flex.usage.service_tier == "standard"  # Anthropic has no flex: the header says flex
