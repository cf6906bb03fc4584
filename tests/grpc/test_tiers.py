"""Service tiers over gRPC with the xAI SDK unchanged: the request's ``service_tier`` field, flex by
metadata (the proto has none), the tier in the answer and its metadata, and bad or forbidden tiers
refused with the matching status codes."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from xai_sdk import Client
from xai_sdk.chat import user

from regiongate.pipeline.auth import hash_key
from tests.support.procs import DEMO_KEY, Proc, free_port
from tests.support.worlds import world

FAST = '{ kind = "simulated", ttft_ms = 5, tokens_per_s = 4000 }'
FLEX_ONLY_KEY = "rg-test-grpc-flex-only-team-key"


def config() -> str:
    text = world({"us-east-1": [FAST], "us-west-2": [FAST]}, limit=4) + "\n[load]\nscrape_interval_s = 0\n"
    return text + (
        '\n[[teams]]\nname = "batch"\nservice_tiers = ["flex"]\n'
        f'keys = [{{ id = "batch", sha256 = "{hash_key(FLEX_ONLY_KEY)}", service_tier = "flex" }}]\n'
    )


def sdk(port: int, key: str = DEMO_KEY, metadata: tuple[tuple[str, str], ...] = ()) -> Client:
    return Client(api_key=key, api_host=f"localhost:{port}", metadata=metadata)


def test_service_tier_over_grpc(start_gateway: Callable[..., Proc]) -> None:
    port = free_port()
    start_gateway(config(), args=["--grpc-port", str(port)])
    chat = sdk(port).chat.create(model="grok-4", service_tier="priority")
    chat.append(user("hi"))
    assert chat.sample().service_tier == "priority"
    chat = sdk(port).chat.create(model="grok-4")
    chat.append(user("hi"))
    assert chat.sample().service_tier == "default"
    # flex: as metadata; the proto reports it as default, the metadata says flex
    chat = sdk(port, metadata=(("x-regiongate-service-tier", "flex"),)).chat.create(model="grok-4")
    chat.append(user("hi"))
    streamed = [r for r, _ in chat.stream()][-1]
    assert streamed.service_tier == "default"
    # a bad tier: INVALID_ARGUMENT; a tier outside the team's list: PERMISSION_DENIED
    bad = sdk(port, metadata=(("x-regiongate-service-tier", "scale"),)).chat.create(model="grok-4")
    bad.append(user("hi"))
    with pytest.raises(grpc.RpcError) as e:
        bad.sample()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "service_tier" in (e.value.details() or "")
    batch = sdk(port, FLEX_ONLY_KEY).chat.create(model="grok-4", service_tier="priority")
    batch.append(user("hi"))
    with pytest.raises(grpc.RpcError) as e:
        batch.sample()
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
