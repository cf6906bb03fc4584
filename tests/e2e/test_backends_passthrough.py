"""A gateway process in front of the stand-ins (tests/support/standin.py), driven with the official openai SDK
(``max_retries=0``): what each backend said reaches the client (4xx unchanged, the 5xx's message with where it
was tried), llama-cpp-python's server works with its dialect, and its usage-less streams are metered."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import httpx
import openai
import pytest
from xai_sdk.chat import user

from tests.support.faults import grpc_gateway
from tests.support.procs import DEMO_KEY, Proc
from tests.support.standin import POISON, Standin
from tests.support.worlds import world

MSG = [{"role": "user", "content": "hi"}]


def _spec(s: Standin, extra: str = "") -> str:
    return f'{{ kind = "http", url = "{s.url}", metrics_url = ""{extra} }}'


def _client(gw: Proc, region_host: str | None = None) -> openai.OpenAI:
    headers = {"host": region_host} if region_host else None
    return openai.OpenAI(api_key=DEMO_KEY, base_url=gw.url + "/v1", max_retries=0, default_headers=headers)


def test_backend_errors_reach_the_openai_sdk(
    start_gateway: Callable[..., Proc], standin: Callable[..., Standin]
) -> None:
    east, west = standin("vllm", model="m"), standin("sglang", model="m")
    gw = start_gateway(
        world({"us-east-1": [_spec(east, ', server = "vllm"')], "us-west-2": [_spec(west)]}, model="m")
    )
    c = _client(gw)

    east.fail(400, "This model's maximum context length is 8 tokens. However, you requested 9 tokens.")
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
    assert bad.value.status_code == 400
    assert bad.value.response.json() == {
        "object": "error",
        "message": "This model's maximum context length is 8 tokens. However, you requested 9 tokens.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }, "vLLM's own body, unchanged"
    assert bad.value.response.headers["x-regiongate-region"] == "us-east-1"
    assert west.posts() == [], "a 4xx is never failed over"

    poison = [{"role": "user", "content": POISON}]
    for _ in range(4):  # more than [health] consecutive_failures
        with pytest.raises(openai.InternalServerError) as err:
            c.chat.completions.create(model="m", messages=poison)  # type: ignore[arg-type]
        assert err.value.status_code == 500
        msg = err.value.message
        assert "answered HTTP 500: poisoned request: cannot build the prompt" in msg, msg
        assert "us-east-1/m/0: answered HTTP 500" in msg and "us-west-2/m/0: answered HTTP 500" in msg, msg
        assert err.value.code == "backend_error"
    done = c.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
    assert done.choices[0].message.content, "no backend was ejected by the poisoned requests"
    regions = httpx.get(gw.url + "/v1/regions", headers={"authorization": f"Bearer {DEMO_KEY}"}).json()
    health = [b for r in regions["data"] for d in r.get("models", []) for b in d.get("health", [])]
    assert health and not any(b["ejected"] for b in health), health


def test_llama_cpp_python_server_with_its_dialect(
    start_gateway: Callable[..., Proc], standin: Callable[..., Standin]
) -> None:
    s = standin("llama-cpp-python", model="m", tokens=40)
    gw = start_gateway(world({"us-east-1": [_spec(s, ', server = "llama-cpp-python"')]}, model="m"))
    c = _client(gw)
    done = c.chat.completions.create(model="m", messages=MSG, max_completion_tokens=3)  # type: ignore[arg-type]
    assert done.choices[0].message.content == "w0 w1 w2", "the request id was accepted and the limit honoured"
    stream = c.chat.completions.create(model="m", messages=MSG, max_tokens=5, stream=True)  # type: ignore[arg-type]
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == "w0 w1 w2 w3 w4"
    rows = _usage(gw)
    assert rows and sum(r["estimated_requests"] for r in rows) == 1, rows
    assert sum(r["completion_tokens"] for r in rows) == 3 + 5, "3 reported, 5 estimated (one per delta)"
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'regiongate_usage_estimated_total{region="us-east-1"} 1.0' in metrics


def _usage(gw: Proc) -> list[dict[str, int]]:
    """The team's usage rows, once the stream's record has been written (records are batched)."""
    deadline = time.monotonic() + 10
    while True:
        rows = httpx.get(gw.url + "/v1/usage", headers={"authorization": f"Bearer {DEMO_KEY}"}).json()["data"]
        if sum(r["requests"] for r in rows) >= 2 or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_the_500_message_reaches_xai_sdk_over_grpc(
    start_gateway: Callable[..., Proc], standin: Callable[..., Standin]
) -> None:
    s = standin("vllm", model="m")
    config = world({"us-east-1": [_spec(s, ', server = "vllm"')]}, model="m")
    _, client = grpc_gateway(start_gateway, config)
    chat = client.chat.create(model="m")
    chat.append(user(f"hi {POISON}"))
    with pytest.raises(grpc.RpcError) as err:
        chat.sample()
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "answered HTTP 500: poisoned request: cannot build the prompt" in (err.value.details() or "")
    assert "Tried: us-east-1/us-east-1/m/0" in (err.value.details() or "")
