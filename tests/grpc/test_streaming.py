"""A stream whose backend dies after the first message: the SDK gets an error, not a retry, and the
capacity lease is released."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import httpx
import pytest
from xai_sdk import Client
from xai_sdk.chat import user

from tests.support.procs import DEMO_KEY, Proc, free_port


def config(backend_url: str) -> str:
    return f"""
[[regions]]
id = "eu-west-1"
lat = 53.35
lon = -6.26
zone = "eu"

[[deployments]]
region = "eu-west-1"
models = ["remote"]
limit = 2
backends = [{{ kind = "http", url = "{backend_url}/v1" }}]

[[teams]]
name = "demo"
keys = [{{ id = "demo", env = "REGIONGATE_DEMO_API_KEY" }}]
"""


def requests_for(gw: Proc, model: str) -> dict[str, float]:
    """status -> count of regiongate_requests_total for ``model``."""
    out: dict[str, float] = {}
    for line in httpx.get(gw.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("regiongate_requests_total{") and f'model="{model}"' in line:
            status = line.split('status="', 1)[1].split('"', 1)[0]
            out[status] = out.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def in_use(gw: Proc) -> int:
    r = httpx.get(gw.url + "/v1/regions", headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=5)
    return sum(m["capacity"]["in_use"] for reg in r.json()["data"] for m in reg["models"])


def test_backend_dies_mid_stream_no_retry_lease_released(
    start_sim_backend: Callable[..., Proc], start_gateway: Callable[..., Proc]
) -> None:
    sim = start_sim_backend("eu-west-1", "--tokens-per-s", "4")
    grpc_port = free_port()
    gw = start_gateway(config(sim.url), args=["--grpc-port", str(grpc_port)])
    client = Client(
        api_key=DEMO_KEY,
        api_host=f"localhost:{grpc_port}",
        channel_options=[("grpc.default_authority", "eu-west-1.localhost")],
    )
    try:
        chat = client.chat.create(model="remote")
        chat.append(user("What is the meaning of life?"))
        received = []
        with pytest.raises(grpc.RpcError) as e:
            for _resp, chunk in chat.stream():
                received.append(chunk.content)
                if len(received) == 1:
                    assert in_use(gw) == 1
                    sim.proc.kill()  # the backend vanishes after the client has its first message
        # Messages already on their way when the backend died may still arrive; the answer stays cut short
        # (a whole simulated answer is at least 24 tokens) and ends in an error, never a clean end.
        assert received[0] == "This" and len(received) < 24
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "mid-" in e.value.details() and "incomplete" in e.value.details()  # failed / dropped
        assert dict(e.value.trailing_metadata())["grpc-retry-pushback-ms"] == "-1"
        assert requests_for(gw, "remote") == {"502": 1.0}  # one attempt; a retry would show a second
        deadline = time.monotonic() + 60
        while in_use(gw) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert in_use(gw) == 0
    finally:
        client.close()
