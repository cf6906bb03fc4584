"""Continuation end to end against llama.cpp's ``llama-server`` as the second region's backend: the first
region's backend (the fault server) cuts the stream, llama-server continues it from the delivered text.

Its fixture: ``llama_server`` (``tests/support/llama.py``; skipped when not built, failed under CI). Found
with llama-server 0.3.36: given a bare assistant
prefill it repeats the prefill in its first delta (the relay takes the echo off); with vLLM's
``continue_final_message`` + ``add_generation_prompt: false`` it sends only the new tokens. Its own
``/v1/responses`` continues a final assistant input item given with ``"type": "message"`` (400 without)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support import llama
from tests.support.clients import client
from tests.support.faults import Fault, FaultServer
from tests.support.procs import Proc
from tests.support.worlds import world


def _cut_then_llama(
    request: pytest.FixtureRequest,
    start_gateway: Callable[..., Proc],
    fault_server: FaultServer,
    settings: str,
    first_settings: str = "",
) -> Proc:
    """A gateway whose us-east-1 backend (the fault server) cuts every stream after 5 tokens and whose
    us-west-2 backend is llama-server with ``settings``."""
    server: Proc = request.getfixturevalue("llama_server")
    fault_server.default = Fault("cut", at=5)
    cont = f'{{ kind = "http", url = "{server.url}/v1", {settings} }}'
    first = f'{{ kind = "http", url = "{fault_server.url}"{first_settings} }}'
    return start_gateway(world({"us-east-1": [first], "us-west-2": [cont]}, model=llama.MODEL))


@pytest.mark.parametrize("prefill", ["vllm", "llama.cpp"])
def test_llama_server_continues_a_stream_cut_in_the_first_region(
    prefill: str,
    request: pytest.FixtureRequest,
    start_gateway: Callable[..., Proc],
    fault_server: FaultServer,
) -> None:
    gw = _cut_then_llama(request, start_gateway, fault_server, f'prefill = "{prefill}"')
    chunks = list(
        client(gw, max_retries=0).chat.completions.create(
            model=llama.MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=12
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    delivered = "t0 t1 t2 t3 t4"
    assert text.startswith(delivered) and len(text) > len(delivered)
    assert text.count("t0") == 1  # the prefill was not repeated
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("mode", ["native", "chat"])
def test_llama_server_continues_a_responses_stream_cut_in_the_first_region(
    mode: str,
    request: pytest.FixtureRequest,
    start_gateway: Callable[..., Proc],
    fault_server: FaultServer,
) -> None:
    # native: llama-server's own /v1/responses gets the delivered text as the final assistant input item;
    # chat: the gateway translates, llama-server continues a chat prefill. Either way one Responses stream.
    via = ', responses = "chat"' if mode == "chat" else ""
    gw = _cut_then_llama(request, start_gateway, fault_server, f'prefill = "llama.cpp"{via}', via)
    with client(gw, max_retries=0).responses.stream(model=llama.MODEL, input="hi", max_output_tokens=12) as s:
        events = list(s)
    assert events[-1].type != "error", events[-1]
    final = events[-1].response  # type: ignore[union-attr]  # completed, or incomplete at the token limit
    kinds = [e.type for e in events]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    delivered = "t0 t1 t2 t3 t4"
    assert text.startswith(delivered) and len(text) > len(delivered), text
    assert text.count("t0") == 1  # the prefill was not repeated
    assert final.output_text == text and kinds.count("response.created") == 1
    assert kinds[-1] in ("response.completed", "response.incomplete") and "error" not in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created = next(e for e in events if e.type == "response.created")
    assert final.id == created.response.id
    print(f"\nMEASURED Responses ({mode}) cut at 5, continued by llama-server: {text!r}")
