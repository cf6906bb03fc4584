"""The stand-ins speak what their servers' documentation says (tests/support/standin.py), checked directly
with httpx and the openai SDK, without the gateway: the gateway's tests rely on these differences."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.support.standin import KINDS, Standin


@pytest.mark.parametrize("kind", KINDS)
def test_chat_plain_and_stream(standin: Callable[..., Standin], kind: str) -> None:
    s = standin(kind, model="m")
    c = openai.OpenAI(api_key="x", base_url=s.url, max_retries=0)
    done = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert done.choices[0].message.content == "w0 w1 w2"
    assert done.usage is not None and done.usage.completion_tokens == 3
    chunks = list(
        c.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "w0 w1 w2"
    usage = [ch.usage for ch in chunks if ch.usage is not None]
    assert (usage[0].completion_tokens if usage else None) == (None if kind == "llama-cpp-python" else 3)


def test_llama_cpp_python_refuses_a_request_id_that_is_not_a_uuid(standin: Callable[..., Standin]) -> None:
    s = standin("llama-cpp-python", model="m")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    bad = httpx.post(s.url + "/chat/completions", json=body, headers={"x-request-id": "req_abc"})
    assert (bad.status_code, bad.content) == (400, b"")
    good = httpx.post(
        s.url + "/chat/completions",
        json=body,
        headers={"x-request-id": "0b8e4a4e-4f5c-5d7e-9a1b-2c3d4e5f6a7b"},
    )
    assert good.status_code == 200


def test_llama_cpp_python_ignores_max_completion_tokens(standin: Callable[..., Standin]) -> None:
    s = standin("llama-cpp-python", model="m", tokens=20)
    c = openai.OpenAI(api_key="x", base_url=s.url, max_retries=0)
    done = c.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=3
    )
    assert done.usage is not None and done.usage.completion_tokens == 20


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_error_body_is_the_flat_vllm_shape(standin: Callable[..., Standin], kind: str) -> None:
    s = standin(kind, model="m")
    r = httpx.post(s.url + "/chat/completions", json={"model": "other", "messages": []})
    assert r.status_code == (404 if kind == "vllm" else 400)
    assert r.json()["object"] == "error" and "does not exist" in r.json()["message"]


def test_sglang_repeats_the_function_name_in_every_tool_call_chunk(standin: Callable[..., Standin]) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    names = {}
    for kind in ("vllm", "sglang"):
        s = standin(kind, model="m")
        c = openai.OpenAI(api_key="x", base_url=s.url, max_retries=0)
        stream = c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], tools=tools, stream=True
        )
        calls = [tc for ch in stream if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
        names[kind] = [tc.function.name for tc in calls if tc.function is not None]
        args = "".join(tc.function.arguments or "" for tc in calls if tc.function is not None)
        assert args == '{"city":"w0"}'
    assert names["vllm"] == ["get_weather", None]
    assert names["sglang"] == ["get_weather", "get_weather"]


@pytest.mark.parametrize("kind", KINDS)
def test_health_and_metrics(standin: Callable[..., Standin], kind: str) -> None:
    s = standin(kind, model="m")
    origin = s.url.removesuffix("/v1")
    health, metrics = httpx.get(origin + "/health"), httpx.get(origin + "/metrics")
    if kind == "llama-cpp-python":
        assert (health.status_code, metrics.status_code) == (404, 404)
        return
    assert health.status_code == 200
    prefix = "vllm:num_requests_waiting" if kind == "vllm" else "sglang:num_queue_reqs"
    assert f'{prefix}{{model_name="m"}} 0.0' in metrics.text


def test_poison_is_a_500_on_every_kind(standin: Callable[..., Standin]) -> None:
    for kind in KINDS:
        s = standin(kind, model="m")
        r = httpx.post(
            s.url + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "__standin_poison__"}]},
        )
        assert r.status_code == 500 and "poisoned request" in r.text


def test_n_completions_embeddings_and_json_schema(standin: Callable[..., Standin]) -> None:
    s = standin("vllm", model="m")
    c = openai.OpenAI(api_key="x", base_url=s.url, max_retries=0)
    stream = c.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], n=2, max_tokens=2, stream=True
    )
    texts = ["", ""]
    for ch in stream:
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == ["w0 w1", "w0 w1"]
    legacy = c.completions.create(model="m", prompt="hi", max_tokens=2, stop=[" w1"])
    assert (legacy.choices[0].text, legacy.choices[0].finish_reason) == ("w0", "stop")
    emb = c.embeddings.create(model="m", input=["a", "b"], encoding_format="base64")
    assert len(emb.data) == 2
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    done = c.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], response_format=fmt
    )  # type: ignore[arg-type]
    assert done.choices[0].message.content == '{"n":0}'


def test_single_slot_answers_no_get_while_a_generation_runs(standin: Callable[..., Standin]) -> None:
    s = standin("vllm", model="m", single_slot=True)
    s.hold()
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    with httpx.Client() as client:
        t = threading.Thread(target=client.post, args=(s.url + "/chat/completions",), kwargs={"json": body})
        t.start()
        s.wait_busy()  # the generation has started and waits
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(s.url.removesuffix("/v1") + "/health", timeout=0.2)
        s.release()
        t.join()
    assert httpx.get(s.url.removesuffix("/v1") + "/health").status_code == 200
