"""Global, regional and zone routing through real HTTP with the official openai client."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.support.clients import MSG, aclient, client, in_use, sim_gauge
from tests.support.procs import Proc, wait_until
from tests.support.worlds import GROK4_REGIONS, http_backend, world


def test_demo_world_serves_the_product_page_request(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway()
    raw = client(gw, "us-east-1.localhost").chat.completions.with_raw_response.create(
        model="grok-4", messages=MSG
    )
    completion = raw.parse()
    assert raw.headers["x-regiongate-region"] == "us-east-1"
    assert raw.headers["x-regiongate-route"] == "pinned"
    assert raw.headers["x-request-id"]
    assert (
        "simulated" in completion.choices[0].message.content
        and "us-east-1" in completion.choices[0].message.content
    )
    assert completion.usage is not None and completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_client_in_tokyo_is_served_in_tokyo(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway()
    raw = client(gw).chat.completions.with_raw_response.create(
        model="grok-4", messages=MSG, extra_headers={"x-regiongate-client-location": "35.68,139.69"}
    )
    assert raw.headers["x-regiongate-region"] == "ap-northeast-1"
    assert raw.headers["x-regiongate-route"] == "nearest"
    assert "ap-northeast-1" in raw.parse().choices[0].message.content


def test_client_location_from_an_untrusted_peer_is_ignored(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway(
        world(
            {r: ['{ kind = "simulated", ttft_ms = 1, tokens_per_s = 5000 }'] for r in GROK4_REGIONS},
            gateway="trusted_proxies = []",
        )
    )
    raw = client(gw).chat.completions.with_raw_response.create(
        model="grok-4", messages=MSG, extra_headers={"x-regiongate-client-location": "35.68,139.69"}
    )
    assert raw.headers["x-regiongate-region"] == "us-east-1"


def test_zone_endpoint_serves_inside_the_zone(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway()
    raw = client(gw, "eu.localhost").chat.completions.with_raw_response.create(model="grok-4", messages=MSG)
    assert raw.headers["x-regiongate-region"] == "eu-west-1"
    assert raw.headers["x-regiongate-route"] == "zone"


def test_model_missing_in_region_is_404_naming_where_it_is(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway()
    with pytest.raises(openai.NotFoundError) as e:
        client(gw, "ap-southeast-2.localhost").chat.completions.create(model="grok-4", messages=MSG)
    assert e.value.code == "model_not_found"
    for r in GROK4_REGIONS:
        assert r in e.value.message


def test_unknown_region_label_is_404_not_global(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway()
    with pytest.raises(openai.NotFoundError) as e:
        client(gw, "us-east-2.localhost").chat.completions.create(model="grok-4", messages=MSG)
    assert e.value.code == "unknown_region"


def _long_stream_world(sim: Proc) -> str:
    return world({r: [http_backend(sim.url + "/v1")] for r in GROK4_REGIONS})


def hold_streams(
    gw: Proc, sim: Proc, host: str | None, n: int, held: int, while_held: Callable[[], None] = lambda: None
) -> list[tuple[str, str] | openai.APIStatusError]:
    """Open ``n`` long streams at once against a ``--hold`` sim backend. Every request is routed before any
    backend answers (the sim holds ``held`` of them), so no timing can reorder the decisions. Returns each
    stream's (region, route) headers or its refusal; then closes every stream mid-way and checks that all
    leases came back."""

    async def scenario() -> list[tuple[str, str] | openai.APIStatusError]:
        api = aclient(gw, host)
        results: list[tuple[str, str] | openai.APIStatusError] = []
        all_in, close = asyncio.Event(), asyncio.Event()

        async def one() -> None:
            try:
                async with api.chat.completions.with_streaming_response.create(
                    model="grok-4", messages=MSG, stream=True, max_tokens=100000
                ) as resp:
                    results.append((resp.headers["x-regiongate-region"], resp.headers["x-regiongate-route"]))
                    if len(results) == n:
                        all_in.set()
                    await close.wait()
            except openai.APIStatusError as e:
                results.append(e)
                if len(results) == n:
                    all_in.set()

        def release() -> None:
            wait_until(lambda: sim_gauge(sim, "regiongate_sim_held") == held)
            while_held()
            httpx.post(sim.url + "/sim/release")

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.to_thread(release)
        await asyncio.wait_for(all_in.wait(), 60)
        snapshot = list(results)
        close.set()  # clients go away mid-stream
        await asyncio.gather(*tasks)
        await api.close()
        return snapshot

    results = asyncio.run(scenario())
    wait_until(lambda: sum(in_use(gw).values()) == 0)  # every lease came back
    return results


def test_global_spillover_fills_regions_in_order(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    sim = start_sim_backend("shared", "--hold", "--slots", "100", "--ttft-ms", "1")
    gw = start_gateway(_long_stream_world(sim))
    full = {"us-east-1": 8, "us-west-2": 8, "eu-west-1": 8, "eu-central-1": 0, "ap-northeast-1": 0}
    results = hold_streams(gw, sim, None, 24, 24, lambda: _assert_eq(in_use(gw), full))
    assert Counter(results) == {
        ("us-east-1", "nearest"): 8,
        ("us-west-2", "spillover"): 8,
        ("eu-west-1", "spillover"): 8,
    }


def _assert_eq(a: object, b: object) -> None:
    assert a == b


def test_regional_endpoint_never_spills(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    sim = start_sim_backend("shared", "--hold", "--slots", "100", "--ttft-ms", "1")
    gw = start_gateway(_long_stream_world(sim))
    results = hold_streams(
        gw, sim, "us-east-1.localhost", 24, 8, lambda: _assert_eq(sum(in_use(gw).values()), 8)
    )
    served = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert served == [("us-east-1", "pinned")] * 8
    assert len(refused) == 16
    for e in refused:
        assert e.status_code == 503 and e.code == "region_unavailable"
        assert e.response.headers["retry-after"]
        assert "us-west-2" in e.message  # names who could serve it right now


def test_all_regions_full_is_capacity_exhausted(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    sim = start_sim_backend("shared", "--hold", "--slots", "100", "--ttft-ms", "1")
    gw = start_gateway(world({"us-east-1": [http_backend(sim.url + "/v1")]}, limit=2))
    results = hold_streams(gw, sim, None, 3, 2)
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert len(refused) == 1 and refused[0].status_code == 503 and refused[0].code == "capacity_exhausted"
