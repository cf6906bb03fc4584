"""Every xai-sdk call in the SDK's own README examples, against the demo world: none answers UNIMPLEMENTED.

The README's code blocks and the examples it links to (function calling, image generation, structured
outputs, reasoning, deferred chat, tokenization, models, stored completions from the chat client's docs).
The README's model names (``grok-4.6``) are not in the demo world; they are asked for as written (a clear
NOT_FOUND naming what is offered) and again with the demo's ``grok-4``, which must succeed. The one example
that cannot be served (agentic tool calling: the tools run inside xAI's service) must say so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from pydantic import BaseModel
from xai_sdk import AsyncClient, Client
from xai_sdk.chat import image, system, tool, user
from xai_sdk.tools import code_execution, web_search, x_search

from tests.support.procs import DEMO_KEY, Proc, free_port, spawn, wait_http


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    tmp = tmp_path_factory.mktemp("readme")
    port, grpc_port = free_port(), free_port()
    env = {"REGIONGATE_DEMO_API_KEY": DEMO_KEY, "REGIONGATE_DATA_DIR": str(tmp / "data")}
    proc = Proc(
        spawn(["serve", "--port", str(port), "--grpc-port", str(grpc_port)], tmp / "gw.log", env),
        port,
        tmp / "gw.log",
    )
    try:
        wait_http(proc.url + "/healthz", proc.proc, log=proc.log)
        c = Client(
            api_key=DEMO_KEY, api_host=f"localhost:{grpc_port}", channel_options=[("grpc.enable_retries", 0)]
        )
        c.rg_host = f"localhost:{grpc_port}"  # type: ignore[attr-defined]  # for the async example
        yield c
        c.close()
    finally:
        proc.stop()


def chat_sample(c: Client, model: str) -> Any:
    chat = c.chat.create(model=model, messages=[system("You are a pirate assistant.")])
    chat.append(user("Hello"))
    return chat.sample()


def chat_stream(c: Client, model: str) -> Any:
    chat = c.chat.create(model=model)
    chat.append(user("Hello"))
    return list(chat.stream())[-1][0]


def image_understanding(c: Client, model: str) -> Any:
    chat = c.chat.create(model=model)
    chat.append(
        user(
            "Which animal looks happier in these images?",
            image("https://images.unsplash.com/photo-1561037404-61cd46aa615b"),
            image("https://images.unsplash.com/photo-1514888286974-6c03e2ca1dba"),
        )
    )
    return chat.sample()


def video_text(c: Client, _: str) -> Any:
    return c.video.generate(
        prompt="A serene lake at sunrise",
        model="grok-imagine-video",
        duration=5,
        aspect_ratio="16:9",
        resolution="720p",
    )


def video_image(c: Client, _: str) -> Any:
    return c.video.generate(
        prompt="The camera zooms in",
        model="grok-imagine-video",
        image_url="https://example.com/landscape.jpg",
        duration=5,
    )


def video_references(c: Client, _: str) -> Any:
    return c.video.generate(
        prompt="A person walking",
        model="grok-imagine-video",
        duration=10,
        aspect_ratio="16:9",
        reference_image_urls=["https://example.com/a.jpg", "https://example.com/b.jpg"],
    )


def video_edit(c: Client, _: str) -> Any:
    return c.video.generate(
        prompt="Add a rainbow", model="grok-imagine-video", video_url="https://example.com/my-video.mp4"
    )


def video_extend(c: Client, _: str) -> Any:
    first = c.video.extend(
        prompt="zoom out",
        model="grok-imagine-video",
        video_url="https://example.com/my-video.mp4",
        duration=6,
    )
    return c.video.extend(prompt="A bird flies", model="grok-imagine-video", video_url=first.url)


def async_chat_sample(c: Client, model: str) -> Any:
    async def main() -> Any:
        client = AsyncClient(
            api_key=DEMO_KEY,
            api_host=c.rg_host,
            channel_options=[("grpc.enable_retries", 0)],  # type: ignore[attr-defined]
        )
        try:
            chat = client.chat.create(model=model, messages=[system("You are a pirate assistant.")])
            chat.append(user("Hello"))
            return await chat.sample()
        finally:
            await client.close()

    return asyncio.run(main())


def function_calling(c: Client, model: str) -> Any:
    weather = tool(
        name="get_weather",
        description="The weather in a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    chat = c.chat.create(model=model, tools=[weather])
    chat.append(user("What is the weather in Paris?"))
    return chat.sample()


def image_generation(c: Client, _: str) -> Any:
    return c.image.sample(prompt="A cat in a tree", model="grok-imagine-image", image_format="url")


class Weather(BaseModel):
    city: str
    temperature_c: float


def structured_outputs(c: Client, model: str) -> Any:
    chat = c.chat.create(model=model)
    chat.append(user("The weather in Paris, as JSON."))
    _, parsed = chat.parse(Weather)
    return parsed


def reasoning(c: Client, model: str) -> Any:
    chat = c.chat.create(model=model, reasoning_effort="high")
    chat.append(user("What is 101 * 3?"))
    return chat.sample()


def deferred_chat(c: Client, model: str) -> Any:
    chat = c.chat.create(model=model)
    chat.append(user("What is the meaning of life?"))
    return chat.defer()


def tokenization(c: Client, model: str) -> Any:
    return c.tokenize.tokenize_text("Hello, world!", model=model)


def models(c: Client, model: str) -> Any:
    assert c.models.list_language_models() and c.models.list_image_generation_models()
    return c.models.get_language_model(model)


def proto_access(c: Client, model: str) -> Any:
    chat = c.chat.create(model=model)
    chat.append(user("Hello, how are you?"))
    return chat.sample().proto


def stored_completions(c: Client, model: str) -> Any:
    chat = c.chat.create(model=model, store_messages=True)
    chat.append(user("Hello"))
    first = chat.sample()
    assert c.chat.get_stored_completion(first.id)[0].content == first.content
    follow = c.chat.create(model=model, previous_response_id=first.id)
    follow.append(user("And then?"))
    assert follow.sample().content
    return c.chat.delete_stored_completion(first.id)


EXAMPLES: dict[str, Callable[[Client, str], Any]] = {
    "async chat.sample": async_chat_sample,
    "function calling": function_calling,
    "image generation": image_generation,
    "structured outputs": structured_outputs,
    "reasoning": reasoning,
    "deferred chat": deferred_chat,
    "tokenization": tokenization,
    "models": models,
    "proto access": proto_access,
    "stored completions": stored_completions,
    "chat.sample": chat_sample,
    "chat.stream": chat_stream,
    "image understanding": image_understanding,
    "video.generate": video_text,
    "video.generate image_url": video_image,
    "video.generate reference_image_urls": video_references,
    "video.generate video_url": video_edit,
    "video.extend": video_extend,
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_readme_example_is_served(client: Client, name: str) -> None:
    fn = EXAMPLES[name]
    assert fn(client, "grok-4") is not None
    try:
        fn(client, "grok-4.6")  # the README's model name, absent from the demo world
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, (name, e.code(), e.details())  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "server_tool",
    [web_search(), x_search(), code_execution()],
    ids=["web_search", "x_search", "code_execution"],
)
def test_readme_agentic_tool_calling_says_why_it_is_not_served(client: Client, server_tool: Any) -> None:
    """The README's one example regiongate cannot serve: the tools run inside xAI's service."""
    chat = client.chat.create(model="grok-4", tools=[server_tool])
    chat.append(user("What was Arsenal's most recent game result?"))
    with pytest.raises(grpc.RpcError) as e:
        chat.sample()
    kind = server_tool.WhichOneof("tool")
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    assert f"server-side tool '{kind}'" in e.value.details()  # type: ignore[attr-defined]
