"""The simulated engine as an OpenAI-compatible (and Anthropic-compatible) server, through a real gateway.

Each test runs twice: against the in-process engine (``us-east-1``) and against ``regiongate sim-backend``
over HTTP (``eu-west-1``), both reached through the gateway on loopback with the official SDKs, so the
shapes checked are the ones the SDKs parse. gRPC (xai-sdk) goes through the gateway's translation.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel, Field
from xai_sdk import Client
from xai_sdk.chat import tool, tool_result, user

from tests.support.procs import DEMO_KEY, Proc, free_port, spawn, wait_http
from tests.support.worlds import http_backend, world

FAST = '{ kind = "simulated", ttft_ms = 1, tokens_per_s = 5000 }'
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
HOSTS = pytest.mark.parametrize("host", ["us-east-1.localhost", "eu-west-1.localhost"], ids=["inproc", "http"])


@dataclass
class Setup:
    gw: Proc
    sim: Proc
    grpc_port: int

    def openai(self, host: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gw.url + "/v1", api_key=DEMO_KEY, default_headers={"Host": host}, max_retries=0
        )

    def anthropic(self, host: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=self.gw.url, auth_token=DEMO_KEY, default_headers={"Host": host}, max_retries=0
        )

    def xai(self, host: str) -> Client:
        opts = [("grpc.default_authority", host)]
        return Client(api_key=DEMO_KEY, api_host=f"localhost:{self.grpc_port}", channel_options=opts)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp: Path = tmp_path_factory.mktemp("simengine")
    sim_port = free_port()
    sim = Proc(
        spawn(
            ["sim-backend", "--region", "eu-west-1", "--port", str(sim_port), "--ttft-ms", "1",
             "--tokens-per-s", "5000"],
            tmp / "sim.log",
        ),
        sim_port,
        tmp / "sim.log",
    )
    (tmp / "gw.toml").write_text(world({"us-east-1": [FAST], "eu-west-1": [http_backend(sim.url + "/v1")]}))
    port, grpc_port = free_port(), free_port()
    cmd = ["serve", "--config", str(tmp / "gw.toml"), "--port", str(port), "--grpc-port", str(grpc_port)]
    env = {"REGIONGATE_DEMO_API_KEY": DEMO_KEY, "REGIONGATE_DATA_DIR": str(tmp / "data")}
    gw = Proc(spawn(cmd, tmp / "gw.log", env), port, tmp / "gw.log")
    try:
        wait_http(sim.url + "/health", sim.proc, log=sim.log)
        wait_http(gw.url + "/healthz", gw.proc, log=gw.log)
        yield Setup(gw, sim, grpc_port)
    finally:
        gw.stop()
        sim.stop()


# --- legacy completions, n, stop, logprobs -----------------------------------------------------------
@HOSTS
def test_legacy_completions_have_their_own_shape(setup: Setup, host: str) -> None:
    c = setup.openai(host)
    done = c.completions.create(model="grok-4", prompt="Say hello", max_tokens=5)
    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    assert done.choices[0].text.startswith("This is a") and done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 5
    chunks = list(
        c.completions.create(
            model="grok-4", prompt="Say hello", max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(ch.object == "text_completion" for ch in chunks)
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == done.choices[0].text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    two = c.completions.create(model="grok-4", prompt=["a", "b"], n=2, max_tokens=3)
    assert sorted(ch.index for ch in two.choices) == [0, 1, 2, 3]


@HOSTS
def test_n_streams_carry_every_index_with_its_own_end(setup: Setup, host: str) -> None:
    c = setup.openai(host)
    plain = c.chat.completions.create(model="grok-4", messages=MSG, n=3)
    texts = {i: "" for i in range(3)}
    finishes: dict[int, list[str]] = {i: [] for i in range(3)}
    for ch in c.chat.completions.create(model="grok-4", messages=MSG, n=3, stream=True):
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index].append(choice.finish_reason)
    assert texts == {ch.index: ch.message.content for ch in plain.choices}
    assert finishes == {0: ["stop"], 1: ["stop"], 2: ["stop"]}
    assert plain.usage is not None and plain.usage.completion_tokens > 3 * 20


@HOSTS
def test_stop_cuts_the_text_before_the_stop_sequence(setup: Setup, host: str) -> None:
    c = setup.openai(host)
    full = c.chat.completions.create(model="grok-4", messages=MSG).choices[0].message.content or ""
    for stop in ("simulated", ["nothing-like-it", "reply from"]):
        got = c.chat.completions.create(model="grok-4", messages=MSG, stop=stop).choices[0]
        first = stop if isinstance(stop, str) else "reply from"
        assert got.finish_reason == "stop" and got.message.content == full[: full.index(first)]
        streamed = "".join(
            ch.choices[0].delta.content or ""
            for ch in c.chat.completions.create(model="grok-4", messages=MSG, stop=stop, stream=True)
            if ch.choices
        )
        assert streamed == got.message.content
    legacy = c.completions.create(model="grok-4", prompt="x", stop="simulated").choices[0]
    assert legacy.text == "This is a " and legacy.finish_reason == "stop"


@HOSTS
def test_logprobs_in_the_openai_shapes(setup: Setup, host: str) -> None:
    c = setup.openai(host)
    ch = c.chat.completions.create(model="grok-4", messages=MSG, logprobs=True, top_logprobs=3).choices[0]
    assert ch.logprobs is not None and ch.logprobs.content is not None
    assert "".join(t.token for t in ch.logprobs.content) == ch.message.content
    for t in ch.logprobs.content:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token
        assert t.logprob <= 0 and [a.logprob for a in t.top_logprobs] == sorted(
            (a.logprob for a in t.top_logprobs), reverse=True
        )
        assert bytes(t.bytes or []) == t.token.encode()
    for chunk in c.chat.completions.create(model="grok-4", messages=MSG, logprobs=True, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            lp = chunk.choices[0].logprobs
            assert lp is not None and lp.content and lp.content[0].token == chunk.choices[0].delta.content
    leg = c.completions.create(model="grok-4", prompt="x", max_tokens=4, logprobs=2).choices[0]
    assert leg.logprobs is not None and "".join(leg.logprobs.tokens or []) == leg.text
    assert leg.logprobs.text_offset == [0, 4, 7, 9] and all(len(t) == 2 for t in leg.logprobs.top_logprobs or [])
    bad = httpx.post(
        setup.gw.url + "/v1/chat/completions",
        json={"model": "grok-4", "messages": MSG, "logprobs": True, "top_logprobs": 99},
        headers={"Authorization": f"Bearer {DEMO_KEY}", "Host": host},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_logprobs"


# --- tools and structured output ------------------------------------------------------------------------
class Unit(StrEnum):
    C = "celsius"
    F = "fahrenheit"


class GetWeather(BaseModel):
    city: str = Field(min_length=2, max_length=40)
    unit: Unit
    days: int = Field(ge=1, le=14)


class Forecast(BaseModel):
    day: int = Field(ge=1)
    summary: Literal["sunny", "rain"]
    high_c: float = Field(gt=-60, lt=60)


class Report(BaseModel):
    city: str
    forecasts: list[Forecast] = Field(min_length=2)
    warning: str | None
    tags: list[str]


@HOSTS
def test_tool_calls_satisfy_the_schema_and_follow_tool_choice(setup: Setup, host: str) -> None:
    c = setup.openai(host)
    tools = [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(Report)]
    for choice in ("auto", "required", {"type": "function", "function": {"name": "Report"}}):
        done = c.chat.completions.parse(model="grok-4", messages=MSG, tools=tools, tool_choice=choice)  # type: ignore[arg-type]
        ch = done.choices[0]
        assert ch.finish_reason == "tool_calls" and ch.message.tool_calls
        call = ch.message.tool_calls[0]
        want = "Report" if isinstance(choice, dict) else "GetWeather"
        assert call.function.name == want and call.id.startswith("call_")
        assert isinstance(call.function.parsed_arguments, Report if want == "Report" else GetWeather)
    said = [{"role": "user", "content": "Give me a Report for Paris"}]
    picked = c.chat.completions.create(model="grok-4", messages=said, tools=tools)  # type: ignore[arg-type]
    assert picked.choices[0].message.tool_calls[0].function.name == "Report"  # type: ignore[index]
    none = c.chat.completions.create(model="grok-4", messages=MSG, tools=tools, tool_choice="none")  # type: ignore[arg-type]
    assert none.choices[0].finish_reason == "stop" and none.choices[0].message.content
    answered = [
        *MSG,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude={"function": {"parsed_arguments"}})]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    after = c.chat.completions.create(model="grok-4", messages=answered, tools=tools)  # type: ignore[arg-type]
    assert after.choices[0].finish_reason == "stop" and after.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        c.chat.completions.create(
            model="grok-4", messages=MSG, tools=tools, tool_choice={"type": "function", "function": {"name": "x"}}  # type: ignore[arg-type]
        )


@HOSTS
def test_streamed_tool_calls_name_once_and_arguments_in_pieces(setup: Setup, host: str) -> None:
    c = setup.openai(host)
    tools = [openai.pydantic_function_tool(GetWeather)]
    names, pieces, ids = [], [], []
    finish = None
    for ch in c.chat.completions.create(model="grok-4", messages=MSG, tools=tools, stream=True):
        for choice in ch.choices:
            for tc in choice.delta.tool_calls or ():
                assert tc.index == 0
                if tc.id:
                    ids.append(tc.id)
                if tc.function and tc.function.name:
                    names.append(tc.function.name)
                if tc.function and tc.function.arguments:
                    pieces.append(tc.function.arguments)
            finish = choice.finish_reason or finish
    assert names == ["GetWeather"] and len(ids) == 1 and len(pieces) > 3 and finish == "tool_calls"
    GetWeather.model_validate_json("".join(pieces))
    with c.chat.completions.stream(model="grok-4", messages=MSG, tools=tools) as s:
        final = s.get_final_completion()
    assert isinstance(final.choices[0].message.tool_calls[0].function.parsed_arguments, GetWeather)  # type: ignore[index]


@HOSTS
def test_response_format_gives_json_that_parse_accepts(setup: Setup, host: str) -> None:
    c = setup.openai(host)
    parsed = c.chat.completions.parse(model="grok-4", messages=MSG, response_format=Report)
    report = parsed.choices[0].message.parsed
    assert isinstance(report, Report) and len(report.forecasts) >= 2
    beta = c.beta.chat.completions.parse(model="grok-4", messages=MSG, response_format=GetWeather)
    assert isinstance(beta.choices[0].message.parsed, GetWeather)
    with c.chat.completions.stream(model="grok-4", messages=MSG, response_format=Report) as s:
        assert isinstance(s.get_final_completion().choices[0].message.parsed, Report)
    obj = c.chat.completions.create(model="grok-4", messages=MSG, response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content or ""), dict)


# --- embeddings ------------------------------------------------------------------------------------------
@HOSTS
def test_embeddings_as_floats_and_base64_with_dimensions(setup: Setup, host: str) -> None:
    c = setup.openai(host)
    default = c.embeddings.create(model="grok-4", input=["a", "b"])  # the SDK asks for base64 and decodes it
    floats = c.embeddings.create(model="grok-4", input=["a", "b"], encoding_format="float")
    assert [len(d.embedding) for d in floats.data] == [16, 16]
    for got, want in zip(default.data, floats.data, strict=True):
        assert got.embedding == pytest.approx(want.embedding, abs=1e-6)
    eight = c.embeddings.create(model="grok-4", input="a", dimensions=8, encoding_format="float")
    assert len(eight.data[0].embedding) == 8
    assert sum(v * v for v in eight.data[0].embedding) == pytest.approx(1.0)
    raw = httpx.post(
        setup.gw.url + "/v1/embeddings",
        json={"model": "grok-4", "input": ["a"], "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {DEMO_KEY}", "Host": host},
    ).json()
    vec = struct.unpack("<16f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(vec) == pytest.approx(floats.data[0].embedding, abs=1e-6)
    with pytest.raises(openai.BadRequestError, match="encoding_format"):
        c.embeddings.create(model="grok-4", input="a", encoding_format="int8")  # type: ignore[arg-type]


# --- the Responses API and Anthropic messages ----------------------------------------------------------
@HOSTS
def test_responses_api_plain_parse_and_tools(setup: Setup, host: str) -> None:
    c = setup.openai(host)
    r = c.responses.create(model="grok-4", input="Say hello")
    assert r.status == "completed" and r.output_text.startswith("This is a simulated reply")
    assert r.usage is not None and r.usage.output_tokens > 0
    cut = c.responses.create(model="grok-4", input="Say hello", max_output_tokens=3)
    assert cut.status == "incomplete" and cut.incomplete_details and cut.incomplete_details.reason == "max_output_tokens"
    parsed = c.responses.parse(model="grok-4", input="Weather?", text_format=Report)
    assert isinstance(parsed.output_parsed, Report)
    tools = [{"type": "function", "name": "get_weather", "parameters": GetWeather.model_json_schema()}]
    called = c.responses.create(model="grok-4", input="Weather?", tools=tools)  # type: ignore[list-item]
    fc = called.output[0]
    assert fc.type == "function_call" and fc.name == "get_weather"
    GetWeather.model_validate_json(fc.arguments)


def _responses_stream(c: openai.OpenAI) -> None:
    kinds = []
    with c.responses.stream(model="grok-4", input="Say hello") as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text.startswith("This is a simulated reply")


def _messages_stream(c: anthropic.Anthropic) -> None:
    with c.messages.stream(model="grok-4", max_tokens=50, messages=MSG) as s:  # type: ignore[arg-type]
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0
    assert final.content[0].type == "text" and final.content[0].text.startswith("This is a simulated reply")


def test_responses_and_messages_streams_from_the_sim_backend_directly(setup: Setup) -> None:
    """The engine's own event sequences, read by the SDKs' stream helpers without the gateway between."""
    _responses_stream(openai.OpenAI(base_url=setup.sim.url + "/v1", api_key="x", max_retries=0))
    _messages_stream(anthropic.Anthropic(base_url=setup.sim.url, api_key="x", max_retries=0))


@HOSTS
def test_responses_and_messages_streams_through_the_gateway(setup: Setup, host: str) -> None:
    _responses_stream(setup.openai(host))
    _messages_stream(setup.anthropic(host))


@HOSTS
def test_anthropic_messages_plain_stop_sequences_and_tools(setup: Setup, host: str) -> None:
    c = setup.anthropic(host)
    m = c.messages.create(model="grok-4", max_tokens=5, messages=MSG)  # type: ignore[arg-type]
    assert m.type == "message" and m.stop_reason == "max_tokens" and m.usage.output_tokens == 5
    assert m.content[0].type == "text" and m.content[0].text == "This is a simulated reply"
    s = c.messages.create(model="grok-4", max_tokens=200, messages=MSG, stop_sequences=["reply"])  # type: ignore[arg-type]
    assert s.stop_reason == "stop_sequence" and s.stop_sequence == "reply"
    assert s.content[0].type == "text" and s.content[0].text == "This is a simulated "
    tools = [{"name": "get_weather", "description": "w", "input_schema": GetWeather.model_json_schema()}]
    t = c.messages.create(model="grok-4", max_tokens=200, messages=MSG, tools=tools)  # type: ignore[arg-type,list-item]
    block = t.content[0]
    assert t.stop_reason == "tool_use" and block.type == "tool_use" and block.name == "get_weather"
    GetWeather.model_validate(block.input)
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        c.messages.create(model="grok-4", messages=MSG, max_tokens=0)  # type: ignore[arg-type]


# --- gRPC: the xAI SDK through the gateway's translation ------------------------------------------------
@HOSTS
def test_xai_sdk_tools_and_parse_over_grpc(setup: Setup, host: str) -> None:
    client = setup.xai(host)
    chat = client.chat.create(
        model="grok-4",
        tools=[tool("get_weather", "weather for a city", GetWeather.model_json_schema())],
    )
    chat.append(user("What is the weather in Paris?"))
    resp = chat.sample()
    assert [tc.function.name for tc in resp.tool_calls] == ["get_weather"]
    GetWeather.model_validate_json(resp.tool_calls[0].function.arguments)
    streamed = [resp for resp, _chunk in chat.stream()]
    assert [tc.function.name for tc in streamed[-1].tool_calls] == ["get_weather"]
    chat.append(resp)
    chat.append(tool_result("sunny"))
    assert chat.sample().content  # a tool has answered: auto now answers in text
    parse_chat = client.chat.create(model="grok-4")
    parse_chat.append(user("Weather report for Paris"))
    _resp, report = parse_chat.parse(Report)
    assert isinstance(report, Report) and len(report.forecasts) >= 2
