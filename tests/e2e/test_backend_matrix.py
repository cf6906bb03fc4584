"""The backend-compatibility matrix (README, docs/backends.md): each cell is one call of an official client
(``openai``, ``anthropic`` over REST; ``xai-sdk`` over gRPC) through a real gateway in front of one kind of
backend, checked for the shape that client parses.

One gateway for the module (``matrix``), each column a model of its own there with one backend:
llama.cpp's ``llama-server`` with the tiny random-weight model (gibberish text; the server's own protocol,
grammar-constrained JSON and tool calls), the simulated engine, and the recorded-protocol stand-ins for vLLM
and SGLang (``tests.support.standin``). ``CELLS`` and ``UNSUPPORTED`` are what the README's table claims;
``test_readme_shows_the_matrix`` holds the two together. A cell a server does not support is not a fake
green: its test shows the server's own answer reaching the client unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field
from xai_sdk import Client
from xai_sdk.chat import tool, user

from tests.support import llama
from tests.support.procs import DEMO_KEY, Proc, free_port, spawn_gateway
from tests.support.standin import Standin
from tests.support.worlds import world

MODEL = llama.MODEL  # what every backend is asked for
VIA_CHAT = MODEL + "-via-chat"  # llama-server with responses = "chat"
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
FAST_SIM = '{ kind = "simulated", ttft_ms = 1, tokens_per_s = 5000 }'
ROOT = Path(__file__).resolve().parents[2]


class Weather(BaseModel):
    """Bounded in every field, so that a grammar-constrained random model always closes the object. Asked
    for at temperature 0: sampled, the random model could end a string on part of a UTF-8 character, which
    the grammar counts as one character and the decoded text as several (a city of 11 > 8 seen in CI)."""

    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=8)
    unit: Literal["celsius", "fahrenheit"]
    days: int = Field(ge=0, le=9)


WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "weather", "parameters": Weather.model_json_schema()},
}

# llama-server's grammar forces a call of this tool; without parallel_tool_calls = false it lets the
# random model go on calling until max_tokens (finish "length").
ONE_CALL = {"tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 200}
# The random model writes JSON strings of hundreds of tokens under json_object's open grammar; biased toward
# '"', '}' and '"}' (GPT-2 ids) it closes the object within a few tokens. Other backends ignore it.
CLOSE_JSON = {"1": 30, "92": 30, "20662": 30}

COLUMNS = {"llama-server": "llama-server", "simulated": "simulated", "vllm": "vLLM", "sglang": "SGLang"}
# Cells a server does not offer: what the README says instead of a tick (and the test checks instead).
UNSUPPORTED: dict[tuple[str, str], str] = {
    # llama-server's own /v1/responses ignores text.format (its conversion to chat drops it).
    ("llama-server", "Responses parse"): "text.format ignored",
    # The stand-ins record servers without the Anthropic API (vLLM has it from 0.11.1 on; not recorded).
    **{
        (k, c): "no /v1/messages"
        for k in ("vllm", "sglang")
        for c in ("Anthropic messages", "Anthropic messages stream")
    },
}


@dataclass
class Target:
    backend: str  # the column
    gw: Proc
    grpc_port: int
    upstream: str | None  # the backend's own base URL (…/v1), when it is a separate server
    standin: bool = False

    @property
    def model(self) -> str:
        """The column's model on the gateway (the backend is asked for its own name, ``MODEL``)."""
        return f"{MODEL}-{self.backend}"

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gw.url, auth_token=DEMO_KEY, max_retries=0)

    def xai(self) -> Client:
        return Client(api_key=DEMO_KEY, api_host=f"localhost:{self.grpc_port}")

    def lacks(self, cell: str) -> bool:
        return (self.backend, cell) in UNSUPPORTED


@dataclass
class Matrix:
    gw: Proc
    grpc_port: int
    upstreams: dict[str, str | None]  # column -> its backend's base URL (None: in process, or not running)
    why_not: str = ""  # why the llama-server column is not running (skipped outside CI)


def _deployment(model: str, spec: str) -> str:
    return f'[[deployments]]\nregion = "us-east-1"\nmodels = ["{model}"]\nbackends = [{spec}]\n'


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    """One gateway for every column, each column a model of its own in one region; the llama-server column
    is left out (and its cells skipped) where the server is not built, failed under CI by its fixture."""
    standins = {k: Standin(k, model=MODEL, tokens=24).start() for k in ("vllm", "sglang")}
    upstreams: dict[str, str | None] = {"simulated": None, **{k: s.url for k, s in standins.items()}}
    out = [_deployment(f"{MODEL}-simulated", FAST_SIM)]
    for k, s in standins.items():  # neither stand-in has /v1/responses: the gateway translates it to chat
        out.append(
            _deployment(
                f"{MODEL}-{k}",
                f'{{ kind = "http", server = "{k}", url = "{s.url}", model = "{MODEL}", responses = "chat" }}',
            )
        )
    why_not = ""
    try:
        server: Proc = request.getfixturevalue("llama_server")
    except pytest.skip.Exception as e:
        why_not = str(e)
    else:
        url = upstreams["llama-server"] = server.url + "/v1"
        base = f'kind = "http", server = "llama.cpp", url = "{url}", model = "{MODEL}"'
        out.append(_deployment(f"{MODEL}-llama-server", f'{{ {base}, prefill = "llama.cpp" }}'))
        # The same server with /v1/responses translated to chat by the gateway (see "Responses parse").
        out.append(_deployment(VIA_CHAT, f'{{ {base}, responses = "chat" }}'))
    grpc_port = free_port()
    try:
        gw = spawn_gateway(
            world({}, extra="\n".join(out)),
            tmp_path_factory.mktemp("matrix"),
            args=["--grpc-port", str(grpc_port)],
        )
        try:
            yield Matrix(gw, grpc_port, upstreams, why_not)
        finally:
            gw.stop()
    finally:
        for s in standins.values():
            s.stop()


@pytest.fixture(scope="module", params=list(COLUMNS))
def target(request: pytest.FixtureRequest, matrix: Matrix) -> Target:
    column: str = request.param
    if column not in matrix.upstreams:
        pytest.skip(matrix.why_not)
    return Target(column, matrix.gw, matrix.grpc_port, matrix.upstreams[column], column in ("vllm", "sglang"))


CELLS: dict[str, Callable[[Target], None]] = {}


def cell(name: str) -> Callable[[Callable[[Target], None]], Callable[[Target], None]]:
    def register(fn: Callable[[Target], None]) -> Callable[[Target], None]:
        CELLS[name] = fn
        return fn

    return register


# --- chat completions (openai) -------------------------------------------------------------------------
@cell("chat")
def _chat(t: Target) -> None:
    done = t.openai().chat.completions.create(model=t.model, messages=MSG, max_tokens=8)  # type: ignore[arg-type]
    ch = done.choices[0]
    assert done.object == "chat.completion" and ch.message.role == "assistant"
    assert ch.message.content and ch.finish_reason in ("stop", "length")
    assert done.usage is not None and done.usage.completion_tokens > 0 and done.usage.prompt_tokens > 0
    if t.upstream:  # what the gateway relays is what the backend says to the same request directly
        body = {"model": MODEL, "messages": MSG, "max_tokens": 8, "temperature": 0}
        direct = httpx.post(t.upstream + "/chat/completions", json=body, timeout=30).json()
        via = t.openai().chat.completions.create(**{**body, "model": t.model})  # type: ignore[call-overload]
        assert via.choices[0].message.content == direct["choices"][0]["message"]["content"]


def _stream_text(chunks: list[openai.types.chat.ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@cell("chat stream")
def _chat_stream(t: Target) -> None:
    c = t.openai()
    chunks = list(c.chat.completions.create(model=t.model, messages=MSG, max_tokens=8, stream=True))  # type: ignore[arg-type]
    plain = c.chat.completions.create(model=t.model, messages=MSG, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    streamed = list(
        c.chat.completions.create(model=t.model, messages=MSG, max_tokens=8, temperature=0, stream=True)  # type: ignore[arg-type]
    )
    assert len({ch.id for ch in chunks}) == 1 and all(ch.usage is None for ch in chunks)
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in ("stop", "length")
    assert _stream_text(streamed) == plain.choices[0].message.content


@cell("stream usage")
def _stream_usage(t: Target) -> None:
    chunks = list(
        t.openai().chat.completions.create(
            model=t.model,
            messages=MSG,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0
    assert all(ch.usage is None for ch in chunks[:-1])


@cell("n>1 stream")
def _n_stream(t: Target) -> None:
    texts: dict[int, str] = {0: "", 1: ""}
    finishes: dict[int, list[str]] = {0: [], 1: []}
    for ch in t.openai().chat.completions.create(model=t.model, messages=MSG, max_tokens=6, n=2, stream=True):  # type: ignore[arg-type]
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index].append(choice.finish_reason)
    assert all(texts.values()) and [len(f) for f in finishes.values()] == [1, 1]


@cell("tool calls")
def _tools(t: Target) -> None:
    c = t.openai()
    done = c.chat.completions.create(
        model=t.model,
        messages=MSG,
        tools=[WEATHER_TOOL],
        **ONE_CALL,  # type: ignore[arg-type,list-item]
    )
    ch = done.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.tool_calls and len(ch.message.tool_calls) == 1
    call = ch.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    Weather.model_validate_json(call.function.arguments)


@cell("streamed tool calls")
def _streamed_tools(t: Target) -> None:
    c = t.openai()
    names, pieces, ids, finish = [], [], [], None
    for ch in c.chat.completions.create(
        model=t.model,
        messages=MSG,
        tools=[WEATHER_TOOL],
        stream=True,
        **ONE_CALL,  # type: ignore[arg-type,list-item]
    ):
        for choice in ch.choices:
            for tc in choice.delta.tool_calls or ():
                assert tc.index == 0
                ids += [tc.id] if tc.id else []
                names += [tc.function.name] if tc.function and tc.function.name else []
                pieces += [tc.function.arguments] if tc.function and tc.function.arguments else []
            finish = choice.finish_reason or finish
    assert names == ["get_weather"] and len(ids) == 1 and finish == "tool_calls"
    Weather.model_validate_json("".join(pieces))
    with c.chat.completions.stream(
        model=t.model,
        messages=MSG,
        tools=[openai.pydantic_function_tool(Weather)],
        **ONE_CALL,  # type: ignore[arg-type]
    ) as s:
        final = s.get_final_completion()
    assert isinstance(final.choices[0].message.tool_calls[0].function.parsed_arguments, Weather)  # type: ignore[index]


@cell("json_object")
def _json_object(t: Target) -> None:
    bias = CLOSE_JSON if t.backend == "llama-server" else None
    done = t.openai().chat.completions.create(
        model=t.model,
        messages=MSG,
        response_format={"type": "json_object"},
        max_tokens=400,
        logit_bias=bias,  # type: ignore[arg-type]
    )
    assert done.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(done.choices[0].message.content or ""), dict)


@cell("json_schema")
def _json_schema(t: Target) -> None:
    c = t.openai()
    parsed = c.chat.completions.parse(model=t.model, messages=MSG, response_format=Weather, max_tokens=200, temperature=0)  # type: ignore[arg-type]
    assert isinstance(parsed.choices[0].message.parsed, Weather)
    with c.chat.completions.stream(model=t.model, messages=MSG, response_format=Weather, max_tokens=200, temperature=0) as s:  # type: ignore[arg-type]
        assert isinstance(s.get_final_completion().choices[0].message.parsed, Weather)


@cell("logprobs")
def _logprobs(t: Target) -> None:
    c = t.openai()
    ask = {
        "model": MODEL,
        "messages": MSG,
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    ch = c.chat.completions.create(**{**ask, "model": t.model}).choices[0]  # type: ignore[call-overload]
    assert ch.logprobs is not None and ch.logprobs.content
    assert all(x.logprob <= 0 for x in ch.logprobs.content)
    if t.upstream:  # relayed as the backend wrote them
        direct = httpx.post(t.upstream + "/chat/completions", json=ask, timeout=30).json()
        assert ch.logprobs.model_dump(exclude_none=True) == direct["choices"][0]["logprobs"]
    if not t.standin:  # the stand-ins' logprobs are one entry a word, with no alternatives
        assert "".join(x.token for x in ch.logprobs.content) == ch.message.content
        assert all(len(x.top_logprobs) == 2 for x in ch.logprobs.content)
    seen = 0
    for chunk in c.chat.completions.create(
        model=t.model, messages=MSG, max_tokens=6, logprobs=True, stream=True
    ):  # type: ignore[arg-type]
        if chunk.choices and chunk.choices[0].delta.content:
            lp = chunk.choices[0].logprobs
            assert lp is not None and lp.content
            seen += 1
    assert seen > 0


@cell("stop")
def _stop(t: Target) -> None:
    c = t.openai()
    full = c.chat.completions.create(model=t.model, messages=MSG, max_tokens=12, temperature=0).choices[0]  # type: ignore[arg-type]
    text = full.message.content or ""
    stop = text[len(text) // 2 :][:2]  # a sequence from the middle of what the backend says unstopped
    cut = c.chat.completions.create(
        model=t.model, messages=MSG, max_tokens=12, temperature=0, stop=[stop]
    ).choices[0]  # type: ignore[arg-type]
    assert cut.finish_reason == "stop" and cut.message.content == text[: text.index(stop)]
    streamed = c.chat.completions.create(
        model=t.model,
        messages=MSG,
        max_tokens=12,
        temperature=0,
        stop=[stop],
        stream=True,  # type: ignore[arg-type]
    )
    assert _stream_text(list(streamed)) == cut.message.content


# --- the other OpenAI APIs --------------------------------------------------------------------------------
@cell("legacy completions")
def _legacy(t: Target) -> None:
    c = t.openai()
    done = c.completions.create(model=t.model, prompt="Say hello", max_tokens=5, temperature=0)
    assert done.object == "text_completion" and done.choices[0].text
    assert done.choices[0].finish_reason in ("stop", "length")
    assert done.usage is not None and done.usage.completion_tokens > 0
    chunks = list(
        c.completions.create(model=t.model, prompt="Say hello", max_tokens=5, temperature=0, stream=True)
    )
    assert all(ch.object == "text_completion" for ch in chunks)
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == done.choices[0].text


@cell("embeddings")
def _embeddings(t: Target) -> None:
    c = t.openai()
    floats = c.embeddings.create(model=t.model, input=["a", "b"], encoding_format="float")
    default = c.embeddings.create(model=t.model, input=["a", "b"])  # the SDK asks for base64 and decodes it
    assert len(floats.data) == 2 and len(floats.data[0].embedding) > 0
    for got, want in zip(default.data, floats.data, strict=True):
        assert got.embedding == pytest.approx(want.embedding, abs=1e-5)
    assert floats.usage.prompt_tokens > 0


@cell("Responses")
def _responses(t: Target) -> None:
    r = t.openai().responses.create(model=t.model, input="Say hello", max_output_tokens=8)
    assert r.object == "response" and r.status in ("completed", "incomplete")
    assert r.output_text and r.usage is not None and r.usage.output_tokens > 0


@cell("Responses parse")
def _responses_parse(t: Target) -> None:
    c = t.openai()
    model = t.model
    if t.lacks("Responses parse"):
        # Relayed as the server answers it: text that is not the JSON asked for, as it says directly.
        ask = {"model": MODEL, "input": "Weather?", "temperature": 0, "max_output_tokens": 16}
        fmt = {"format": {"type": "json_schema", "name": "Weather", "schema": Weather.model_json_schema()}}
        via = c.responses.create(**{**ask, "model": t.model}, text=fmt)  # type: ignore[call-overload]
        assert t.upstream is not None
        direct = httpx.post(t.upstream + "/responses", json={**ask, "text": fmt}, timeout=30).json()
        assert via.output_text == direct["output"][0]["content"][0]["text"]
        with pytest.raises(ValueError):
            Weather.model_validate_json(via.output_text)
        model = VIA_CHAT  # the remedy: the gateway translates /v1/responses to chat, where the grammar holds
    parsed = c.responses.parse(
        model=model, input="Weather?", text_format=Weather, max_output_tokens=200, temperature=0
    )
    assert isinstance(parsed.output_parsed, Weather)


@cell("Responses stream")
def _responses_stream(t: Target) -> None:
    with t.openai().responses.stream(model=t.model, input="Say hello") as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "error" not in kinds
    assert final.output_text


def _not_served(t: Target, path: str, call: Callable[[], object]) -> None:
    """A server without ``path``: its own 404, status and body, reaches the SDK, which raises it."""
    assert t.upstream is not None
    direct = httpx.post(
        t.upstream + path, json={"model": MODEL, "max_tokens": 8, "messages": MSG}, timeout=30
    )
    assert direct.status_code == 404
    with pytest.raises(anthropic.NotFoundError) as e:
        call()
    assert e.value.status_code == 404 and e.value.body == direct.json()


@cell("Anthropic messages")
def _messages(t: Target) -> None:
    def create() -> anthropic.types.Message:
        return t.anthropic().messages.create(model=t.model, max_tokens=8, messages=MSG)  # type: ignore[arg-type]

    if t.lacks("Anthropic messages"):
        return _not_served(t, "/messages", create)
    m = create()
    assert m.type == "message" and m.role == "assistant" and m.stop_reason in ("end_turn", "max_tokens")
    assert m.content[0].type == "text" and m.content[0].text and m.usage.output_tokens > 0


@cell("Anthropic messages stream")
def _messages_stream(t: Target) -> None:
    def stream() -> list[str]:
        with t.anthropic().messages.stream(model=t.model, max_tokens=8, messages=MSG) as s:  # type: ignore[arg-type]
            return [e.type for e in s]

    if t.lacks("Anthropic messages stream"):
        return _not_served(t, "/messages", stream)
    with t.anthropic().messages.stream(model=t.model, max_tokens=8, messages=MSG) as s:  # type: ignore[arg-type]
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "error" not in kinds
    assert final.content[0].type == "text" and final.content[0].text and final.usage.output_tokens > 0


@cell("models list")
def _models(t: Target) -> None:
    c = t.openai()
    assert t.model in [m.id for m in c.models.list()]
    assert c.models.retrieve(t.model).id == t.model


# --- gRPC (xai-sdk) -------------------------------------------------------------------------------------
@cell("gRPC tools")
def _grpc_tools(t: Target) -> None:
    client = t.xai()
    chat = client.chat.create(
        model=t.model,
        tools=[tool("get_weather", "weather", Weather.model_json_schema())],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=200,
    )
    chat.append(user("What is the weather in Paris?"))
    resp = chat.sample()
    assert [tc.function.name for tc in resp.tool_calls] == ["get_weather"]
    Weather.model_validate_json(resp.tool_calls[0].function.arguments)
    last = [resp for resp, _chunk in chat.stream()][-1]
    assert [tc.function.name for tc in last.tool_calls] == ["get_weather"]
    Weather.model_validate_json(last.tool_calls[0].function.arguments)


@cell("gRPC chat.parse")
def _grpc_parse(t: Target) -> None:
    chat = t.xai().chat.create(model=t.model, max_tokens=200, temperature=0)
    chat.append(user("Weather in Paris as JSON"))
    _resp, weather = chat.parse(Weather)
    assert isinstance(weather, Weather)


@cell("gRPC stream_batch")
def _grpc_stream_batch(t: Target) -> None:
    chat = t.xai().chat.create(model=t.model, max_tokens=6)
    chat.append(user("Say hello"))
    with pytest.warns(PendingDeprecationWarning):  # the SDK's own notice; the call is still served
        batches = list(chat.stream_batch(2))
    responses, _chunks = batches[-1]
    assert len(responses) == 2 and all(r.content for r in responses)
    assert all(r.finish_reason in ("REASON_STOP", "REASON_MAX_LEN") for r in responses)
    assert responses[0].usage.completion_tokens > 0


@pytest.mark.parametrize("name", list(CELLS))
def test_cell(target: Target, name: str) -> None:
    CELLS[name](target)


# --- the README's table ----------------------------------------------------------------------------------
def _readme_matrix() -> dict[str, dict[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- backend matrix -->", 2)[1]
    rows = [line for line in block.strip().splitlines() if line.startswith("|")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    out = {}
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[re.sub(r"`", "", cells[0])] = dict(zip(head[1:], cells[1:], strict=True))
    return out


def test_readme_shows_the_matrix() -> None:
    """Every row of the README's table is a cell tested here, and says what the test checks."""
    shown = _readme_matrix()
    assert list(shown) == list(CELLS)
    for name, row in shown.items():
        for column, title in COLUMNS.items():
            want = "n/s" if (column, name) in UNSUPPORTED else "✓"
            assert row[title] == want, (name, column)
