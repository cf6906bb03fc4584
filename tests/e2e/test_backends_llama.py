"""llama.cpp's llama-server (the real one, tests/support/llama.py) behind a gateway process, driven with the
official openai SDK (``max_retries=0``): the request id it is sent, the token limit under both names, its
4xx bodies unchanged, a 500 the request causes (a tool without a name) surfaced with where it was tried and
never ejecting it, and its stream usage metered as reported, not estimated."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.support import llama
from tests.support.procs import DEMO_KEY, Proc
from tests.support.worlds import world

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gateway(start_gateway: Callable[..., Proc], llama_server: Proc) -> Proc:
    spec = f'{{ kind = "http", server = "llama.cpp", url = "{llama_server.url}/v1", metrics_url = "" }}'
    return start_gateway(world({"us-east-1": [spec]}, model=llama.MODEL))


def _client(gw: Proc) -> openai.OpenAI:
    return openai.OpenAI(api_key=DEMO_KEY, base_url=gw.url + "/v1", max_retries=0)


def test_request_id_and_token_limits(gateway: Proc) -> None:
    c = _client(gateway)
    raw = c.chat.completions.with_raw_response.create(model=llama.MODEL, messages=MSG)  # type: ignore[arg-type]
    assert raw.headers["x-request-id"].startswith("req_"), "our id went upstream as-is and was taken"
    free = raw.parse()
    assert free.usage is not None and free.usage.completion_tokens > 3  # the model's own answer is longer
    for limit in ({"max_tokens": 3}, {"max_completion_tokens": 3}):
        done = c.chat.completions.create(model=llama.MODEL, messages=MSG, **limit)  # type: ignore[arg-type, call-overload]
        assert done.usage is not None and done.usage.completion_tokens == 3, limit
        assert done.choices[0].finish_reason == "length"


def test_a_4xx_reaches_the_sdk_unchanged(gateway: Proc, llama_server: Proc) -> None:
    too_long = [{"role": "user", "content": "hello " * 5000}]  # past the server's 4096-token context
    direct = httpx.post(
        llama_server.url + "/v1/chat/completions",
        json={"model": llama.MODEL, "messages": too_long},
        timeout=60,
    )
    assert direct.status_code == 400
    with pytest.raises(openai.BadRequestError) as bad:
        _client(gateway).chat.completions.create(model=llama.MODEL, messages=too_long)  # type: ignore[arg-type]
    assert bad.value.status_code == 400
    assert bad.value.response.json() == direct.json(), "llama-server's own body"
    assert bad.value.response.json()["error"]["type"] == "exceed_context_size_error"


def test_a_500_the_request_causes_is_surfaced_and_ejects_nothing(gateway: Proc) -> None:
    c = _client(gateway)
    nameless = [{"type": "function", "function": {"parameters": {"type": "object", "properties": {}}}}]
    for _ in range(4):  # more than [health] consecutive_failures
        with pytest.raises(openai.InternalServerError) as err:
            c.chat.completions.create(model=llama.MODEL, messages=MSG, tools=nameless)  # type: ignore[arg-type]
        assert err.value.status_code == 500
        assert "Failed to parse tools" in err.value.message, err.value.message
        assert "Tried: us-east-1/us-east-1/tiny-llama/0: answered HTTP 500" in err.value.message
    done = c.chat.completions.create(model=llama.MODEL, messages=MSG)  # type: ignore[arg-type]
    assert done.choices[0].message.content is not None, "still served: not 503 no healthy backend"


def test_stream_usage_is_reported_not_estimated(gateway: Proc) -> None:
    c = _client(gateway)
    stream = c.chat.completions.create(model=llama.MODEL, messages=MSG, max_tokens=4, stream=True)  # type: ignore[arg-type]
    chunks = list(stream)
    assert all(ch.usage is None for ch in chunks), "the client did not ask for usage: none is shown"
    deadline = time.monotonic() + 10
    while True:  # usage records are written in batches
        rows = httpx.get(gateway.url + "/v1/usage", headers={"authorization": f"Bearer {DEMO_KEY}"}).json()[
            "data"
        ]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(r["completion_tokens"], r["estimated_requests"]) for r in rows] == [(4, 0)]
