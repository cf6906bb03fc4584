"""Every capacity lease comes back: after each answer, plain or streamed, REST or gRPC, served where it was
first sent or after a failover. A lease that leaks fills a region for good, one request at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from xai_sdk import Client
from xai_sdk.chat import user

from tests.support.clients import MSG, client, in_use
from tests.support.procs import DEMO_KEY, ClosingServer, Proc, free_port, wait_until
from tests.support.worlds import http_backend, world

FAST = '{ kind = "simulated", ttft_ms = 1, tokens_per_s = 5000 }'


@pytest.fixture
def dead() -> Iterator[ClosingServer]:
    server = ClosingServer()
    yield server
    server.close()


@pytest.fixture
def gw(start_gateway: Callable[..., Proc], dead: ClosingServer) -> tuple[Proc, int]:
    """us-east-1 (nearest) has a failing backend, us-west-2 a working one; gRPC on its own port."""
    grpc_port = free_port()
    cfg = world({"us-east-1": [http_backend(dead.url)], "us-west-2": [FAST]}, limit=2)
    return start_gateway(cfg, args=["--grpc-port", str(grpc_port)]), grpc_port


def _held(gw: Proc) -> int:
    return sum(in_use(gw).values())


def test_rest_plain_answers_release_before_they_are_sent(gw: tuple[Proc, int], dead: ClosingServer) -> None:
    proc, _ = gw
    api = client(proc, "us-west-2.localhost")
    for _ in range(5):  # more than the limit of 2: a leak would refuse the third
        api.chat.completions.create(model="grok-4", messages=MSG, max_tokens=4)
        assert _held(proc) == 0  # released before the answer was written, so already 0 here


def test_rest_plain_answers_after_a_failover_release_both_leases(
    gw: tuple[Proc, int], dead: ClosingServer
) -> None:
    proc, _ = gw
    api = client(proc)
    for i in range(5):
        raw = api.chat.completions.with_raw_response.create(model="grok-4", messages=MSG, max_tokens=4)
        assert raw.headers["x-regiongate-route"] in ("failover", "nearest", "spillover")
        assert raw.headers["x-regiongate-region"] == "us-west-2"
        assert _held(proc) == 0, f"after request {i}: {in_use(proc)}"
    assert dead.accepted >= 1  # the failing region was tried (until its backend was ejected)


def test_rest_streams_release_when_they_end(gw: tuple[Proc, int]) -> None:
    proc, _ = gw
    api = client(proc)
    for _ in range(5):
        with api.chat.completions.create(model="grok-4", messages=MSG, max_tokens=8, stream=True) as s:
            assert "".join(c.choices[0].delta.content or "" for c in s if c.choices)
        wait_until(lambda: _held(proc) == 0, timeout=30, what="the stream's lease to come back")


def test_grpc_answers_and_streams_release_after_a_failover(gw: tuple[Proc, int], dead: ClosingServer) -> None:
    proc, grpc_port = gw
    xai = Client(api_key=DEMO_KEY, api_host=f"localhost:{grpc_port}")
    try:
        for _ in range(5):
            chat = xai.chat.create(model="grok-4", max_tokens=4)
            chat.append(user("hi"))
            assert chat.sample().content
            assert _held(proc) == 0
            chat = xai.chat.create(model="grok-4", max_tokens=8)
            chat.append(user("hi"))
            assert "".join(chunk.content for _, chunk in chat.stream())
            wait_until(lambda: _held(proc) == 0, timeout=30, what="the gRPC stream's lease to come back")
    finally:
        xai.close()
    assert dead.accepted >= 1
