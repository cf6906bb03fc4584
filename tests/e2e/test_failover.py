"""Failover before the first byte (refused, silent, 5xx backends), never after it."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest

from tests.support.clients import MSG, client, in_use
from tests.support.procs import DEMO_KEY, ClosingServer, Proc, free_port, wait_until
from tests.support.worlds import http_backend, world

FAST = '{ kind = "simulated", ttft_ms = 1, tokens_per_s = 5000 }'


def test_failed_backend_is_tried_then_the_next_region_serves(start_gateway: Callable[..., Proc]) -> None:
    dead = ClosingServer()  # accepts and hangs up: the attempt is seen, and it fails before any byte
    try:
        gw = start_gateway(world({"us-east-1": [http_backend(dead.url)], "us-west-2": [FAST]}))
        raw = client(gw).chat.completions.with_raw_response.create(model="grok-4", messages=MSG)
        assert raw.headers["x-regiongate-region"] == "us-west-2"
        assert raw.headers["x-regiongate-route"] == "failover"
        assert dead.accepted >= 1, "the nearest region's backend was tried first"
        assert sum(in_use(gw).values()) == 0
    finally:
        dead.close()


def test_regional_failover_stays_in_region(start_gateway: Callable[..., Proc]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gw = start_gateway(world({"us-east-1": [http_backend(dead), FAST], "us-west-2": [FAST]}))
    raw = client(gw, "us-east-1.localhost").chat.completions.with_raw_response.create(
        model="grok-4", messages=MSG
    )
    assert raw.headers["x-regiongate-region"] == "us-east-1"
    assert raw.headers["x-regiongate-route"] == "pinned"


def test_regional_with_only_dead_backends_fails_without_leaving(start_gateway: Callable[..., Proc]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gw = start_gateway(world({"us-east-1": [http_backend(dead)], "us-west-2": [FAST]}))
    c = client(gw, "us-east-1.localhost", max_retries=0)
    try:
        c.chat.completions.create(model="grok-4", messages=MSG)
        raise AssertionError("expected a refusal")
    except openai.APIStatusError as e:
        assert e.status_code == 503 and e.code == "region_unavailable"
        assert "us-west-2" in e.message


def test_5xx_backend_fails_over(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    broken = start_sim_backend("us-east-1", "--mode", "error500")
    gw = start_gateway(world({"us-east-1": [http_backend(broken.url + "/v1")], "us-west-2": [FAST]}))
    raw = client(gw).chat.completions.with_raw_response.create(model="grok-4", messages=MSG)
    assert raw.headers["x-regiongate-region"] == "us-west-2"


def test_silent_backend_fails_over_after_first_byte_timeout(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    hung = start_sim_backend("us-east-1", "--mode", "hang")
    gw = start_gateway(
        world({"us-east-1": [http_backend(hung.url + "/v1", first_byte_s=1)], "us-west-2": [FAST]})
    )
    raw = client(gw).chat.completions.with_raw_response.create(model="grok-4", messages=MSG)
    assert raw.headers["x-regiongate-region"] == "us-west-2"
    assert raw.headers["x-regiongate-route"] == "failover"


def test_stream_silent_before_first_byte_fails_over(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    hung = start_sim_backend("us-east-1", "--mode", "hang-stream")
    gw = start_gateway(
        world({"us-east-1": [http_backend(hung.url + "/v1", first_byte_s=1)], "us-west-2": [FAST]})
    )
    with client(gw).chat.completions.with_streaming_response.create(
        model="grok-4", messages=MSG, stream=True
    ) as resp:
        assert resp.headers["x-regiongate-region"] == "us-west-2"
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert "us-west-2" in text
    wait_until(lambda: sum(in_use(gw).values()) == 0)


def _kill_after_two(gw: Proc, sim: Proc, **kw: object) -> list[object]:
    got = []
    with client(gw, max_retries=0).chat.completions.with_streaming_response.create(
        model="grok-4", messages=MSG, stream=True, max_tokens=1000, **kw
    ) as resp:
        assert resp.headers["x-regiongate-region"] == "us-east-1"
        for chunk in resp.parse():
            got.append(chunk)
            if len(got) == 2:
                sim.proc.kill()  # the backend dies mid-stream
    return got


def test_stream_broken_after_first_byte_is_continued_in_the_next_region(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    sim = start_sim_backend("us-east-1", "--ttft-ms", "1", "--tokens-per-s", "20")
    gw = start_gateway(world({"us-east-1": [http_backend(sim.url + "/v1")], "us-west-2": [FAST]}))
    got = _kill_after_two(gw, sim)
    text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)  # type: ignore[attr-defined]
    # The simulated engine continues the same answer after the words already delivered (as vLLM does).
    # us-east-1 delivered the first words, us-west-2 the rest (its region is named later in the text).
    assert text.startswith("This is a simulated reply from grok-4 in us-west-2 (Oregon); ") and text.endswith(".")
    assert text.count("This") == 1
    assert len({c.id for c in got}) == 1  # type: ignore[attr-defined]
    wait_until(lambda: sum(in_use(gw).values()) == 0)


def test_stream_broken_after_first_byte_is_not_retried_when_continuation_is_off(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    sim = start_sim_backend("us-east-1", "--ttft-ms", "1", "--tokens-per-s", "20")
    gw = start_gateway(world({"us-east-1": [http_backend(sim.url + "/v1")], "us-west-2": [FAST]}))
    with pytest_raises_api_error():
        got = _kill_after_two(gw, sim, extra_headers={"x-regiongate-continue": "off"})
        assert 2 <= len(got) < 1000
    wait_until(lambda: sum(in_use(gw).values()) == 0)


class pytest_raises_api_error:
    """The client must see the interruption as an error event (openai raises APIError), not a clean end."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: object) -> bool:
        assert et is not None, "a stream cut by its backend must not end as if complete"
        assert issubclass(et, openai.APIError), et
        assert "incomplete" in str(ev)
        return True


def test_usage_is_reported_only_when_asked(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway(world({"us-east-1": [FAST]}))
    c = client(gw)
    chunks = list(c.chat.completions.create(model="grok-4", messages=MSG, stream=True))
    assert all(ch.usage is None for ch in chunks)
    chunks = list(
        c.chat.completions.create(
            model="grok-4", messages=MSG, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == sum(
        1 for ch in chunks if ch.choices and ch.choices[0].delta.content
    )


def test_other_v1_posts_are_proxied_by_model(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    sim = start_sim_backend("eu-west-1")
    gw = start_gateway(world({"eu-west-1": [http_backend(sim.url + "/v1")]}, model="embed-sim"))
    raw = client(gw).embeddings.with_raw_response.create(model="embed-sim", input=["a", "b"])
    assert raw.headers["x-regiongate-region"] == "eu-west-1"
    assert len(raw.parse().data) == 2
    r = httpx.post(
        gw.url + "/v1/embeddings", json={"input": "x"}, headers={"Authorization": f"Bearer {DEMO_KEY}"}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_stream_that_stalls_mid_answer_ends_with_an_error_after_idle_s(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    """After its first event the backend keeps the connection open and sends nothing more: the client gets
    an in-band error naming the silence once ``idle_s`` has passed, never a clean end, and the lease is freed."""
    stalled = start_sim_backend("us-east-1", "--mode", "stall-stream")
    gw = start_gateway(world({"us-east-1": [http_backend(stalled.url + "/v1", idle_s=0.5)]}))
    got = []
    with pytest.raises(openai.APIError, match=r"went silent for 0\.5s"):
        stream = client(gw).chat.completions.create(model="grok-4", messages=MSG, stream=True)
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 1
    wait_until(lambda: sum(in_use(gw).values()) == 0)
