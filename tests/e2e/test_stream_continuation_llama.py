"""Continuation end to end against llama.cpp's ``llama-server`` as the second region's backend: the first
region's backend (the fault server) cuts the stream, llama-server continues it from the delivered text.

Its fixture: ``llama_server`` (``tests/support/llama.py``; skipped when not built, failed under CI). Found
with llama-server 0.3.36: given a bare assistant
prefill it repeats the prefill in its first delta (the relay takes the echo off); with vLLM's
``continue_final_message`` + ``add_generation_prompt: false`` it sends only the new tokens."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support import llama
from tests.support.clients import client
from tests.support.faults import Fault, FaultServer
from tests.support.procs import Proc
from tests.support.worlds import world


@pytest.mark.parametrize("prefill", ["vllm", "llama.cpp"])
def test_llama_server_continues_a_stream_cut_in_the_first_region(
    prefill: str,
    request: pytest.FixtureRequest,
    start_gateway: Callable[..., Proc],
    fault_server: FaultServer,
) -> None:
    server: Proc = request.getfixturevalue("llama_server")
    fault_server.default = Fault("cut", at=5)
    cont = f'{{ kind = "http", url = "{server.url}/v1", prefill = "{prefill}" }}'
    cfg = world(
        {"us-east-1": [f'{{ kind = "http", url = "{fault_server.url}" }}'], "us-west-2": [cont]},
        model=llama.MODEL,
    )
    gw = start_gateway(cfg)
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
