"""orjson (what regiongate uses) against the stdlib json on the proxy path's payloads: parsing a request
body, parsing a completion for its usage, and encoding an SSE event."""

from __future__ import annotations

import json

import orjson
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

REQUEST = json.dumps(
    {
        "model": "grok-4",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. " * 8},
            {
                "role": "user",
                "content": "Summarise the following text in three sentences. " + "lorem ipsum " * 120,
            },
        ],
        "max_tokens": 256,
        "temperature": 0.2,
        "stream": False,
    }
).encode()
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1752019200,
        "model": "grok-4",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "token " * 200}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 310, "completion_tokens": 200, "total_tokens": 510},
    }
).encode()
CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1752019200,
    "model": "grok-4",
    "choices": [{"index": 0, "delta": {"content": " token"}, "finish_reason": None}],
}


@pytest.mark.parametrize("lib", ["orjson", "json"])
def test_loads_request(benchmark: BenchmarkFixture, lib: str) -> None:
    loads = orjson.loads if lib == "orjson" else json.loads
    assert benchmark(loads, REQUEST)["model"] == "grok-4"


@pytest.mark.parametrize("lib", ["orjson", "json"])
def test_loads_completion(benchmark: BenchmarkFixture, lib: str) -> None:
    loads = orjson.loads if lib == "orjson" else json.loads
    assert benchmark(loads, COMPLETION)["usage"]["total_tokens"] == 510


@pytest.mark.parametrize("lib", ["orjson", "json"])
def test_dumps_chunk(benchmark: BenchmarkFixture, lib: str) -> None:
    def enc() -> bytes:
        if lib == "orjson":
            return orjson.dumps(CHUNK)
        return json.dumps(CHUNK, separators=(",", ":")).encode()

    assert benchmark(enc).startswith(b"{")
