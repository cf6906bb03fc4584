"""Every xai-sdk call in the SDK's own README examples, against the demo world: none answers UNIMPLEMENTED.

The README's model names (``grok-4.6``) are not in the demo world; they are asked for as written (a clear
NOT_FOUND naming what is offered) and again with the demo's ``grok-4``, which must succeed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from xai_sdk import Client
from xai_sdk.chat import image, system, user

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


EXAMPLES: dict[str, Callable[[Client, str], Any]] = {
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
