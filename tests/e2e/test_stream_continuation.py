"""Mid-stream continuation through the gateway (REST with the openai SDK, ``max_retries=0``, and gRPC with
xai-sdk): a stream that breaks after its first byte is finished on another backend the endpoint allows,
from the text delivered, so the client gets the whole answer as one stream; never outside the endpoint's
scope; where nothing can continue, the in-band error names the original failure.

The fault server's answer is ``t0 ... t59``: a continued answer must equal the uninterrupted one."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anthropic
import grpc
import httpx
import openai
import orjson
import pytest
from xai_sdk.proto import chat_pb2, chat_pb2_grpc

from regiongate.pipeline import receipts
from tests.support.clients import MSG, client, in_use
from tests.support.faults import TOKENS, WHOLE, Fault, FaultServer, grpc_gateway, grpc_text
from tests.support.procs import DEMO_KEY, Proc, free_port, wait_until
from tests.support.worlds import world


def backend(fs: FaultServer, prefill: str = "vllm", idle_s: float = 1.0) -> str:
    return f'{{ kind = "http", url = "{fs.url}", prefill = "{prefill}", timeouts = {{ idle_s = {idle_s} }} }}'


def stream(gw: Proc, host: str | None = None, **kw: Any) -> tuple[str, list[Any]]:
    chunks = list(
        client(gw, host, max_retries=0).chat.completions.create(
            model="grok-4", messages=MSG, stream=True, **kw
        )
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def raw_stream(gw: Proc, host: str = "localhost", headers: dict[str, str] | None = None) -> str:
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "grok-4", "messages": MSG, "stream": True},
        headers={"authorization": f"Bearer {DEMO_KEY}", "host": host, **(headers or {})},
        timeout=30,
    )
    assert r.status_code == 200
    return r.text


def east_cut(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer], at: int = 20, **kw: Any
) -> tuple[Proc, FaultServer]:
    """us-east-1's backend cuts every stream after ``at`` tokens, us-west-2's is healthy; the gateway and
    the us-west-2 server (to see what reached it)."""
    east, west, _ = fault_servers
    east.default = Fault("cut", at=at)
    extra = kw.pop("extra", "")
    return start_gateway(world({"us-east-1": [backend(east)], "us-west-2": [backend(west)]}, extra=extra), **kw), west


@pytest.mark.parametrize(
    ("fault", "prefill"),
    [
        (Fault("cut", at=20), "vllm"),
        (Fault("stall", at=20), "llama.cpp"),
        (Fault("cut", at=35), "prefix"),
    ],
)
def test_global_stream_broken_mid_answer_is_continued_in_the_next_region(
    fault: Fault,
    prefill: str,
    start_gateway: Callable[..., Proc],
    fault_servers: list[FaultServer],
) -> None:
    east, west, _ = fault_servers
    east.default = fault
    gw = start_gateway(
        world({"us-east-1": [backend(east, idle_s=0.5)], "us-west-2": [backend(west, prefill)]})
    )
    started = time.monotonic()
    text, chunks = stream(gw, stream_options={"include_usage": True})
    took = time.monotonic() - started
    assert text == WHOLE, text
    assert {c.id for c in chunks} == {chunks[0].id} and {c.created for c in chunks} == {chunks[0].created}
    assert {c.model for c in chunks} == {"grok-4"}
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1  # one opening delta
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == TOKENS
    (cont,) = west.posts()
    last = cont.payload["messages"][-1]
    assert last["role"] == "assistant" and last["content"] == WHOLE[: len(last["content"])]
    assert len(last["content"].split()) == fault.at
    if prefill == "vllm":
        assert cont.payload["continue_final_message"] is True
        assert cont.payload["add_generation_prompt"] is False
    elif prefill == "prefix":
        assert last["prefix"] is True and "continue_final_message" not in cont.payload
    else:
        assert "continue_final_message" not in cont.payload and "prefix" not in last
    print(f"\nMEASURED {fault.kind} at {fault.at} on global -> continued in us-west-2 in {took:.2f}s")
    wait_until(lambda: sum(in_use(gw).values()) == 0)


def test_a_stall_is_left_after_the_learned_idle_budget_not_idle_s(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    # Default idle_s (30 s); a 1 s floor: with the next region able to continue, a backend that answered its
    # first token in milliseconds and then went silent is left after the floor, not after idle_s.
    east, west, _ = fault_servers
    east.default = Fault("stall", at=20)
    east_spec = f'{{ kind = "http", url = "{east.url}", timeouts = {{ first_byte_floor_s = 1.0 }} }}'
    gw = start_gateway(world({"us-east-1": [east_spec], "us-west-2": [backend(west)]}))
    started = time.monotonic()
    text, _ = stream(gw)
    took = time.monotonic() - started
    assert text == WHOLE
    assert 1.0 <= took < 10.0, took
    print(f"\nMEASURED stall at 20 with the default idle_s and a 1 s floor -> continued in {took:.2f}s")


def test_with_nowhere_to_go_a_stall_is_waited_for_up_to_idle_s(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    # A regional endpoint with one backend: no early give-up (the answer could not move), so a 1.5 s
    # silence under a 0.3 s floor is waited out and the answer arrives whole.
    east, west, _ = fault_servers
    east.default = Fault("stall", at=20, seconds=1.5)
    spec = f'{{ kind = "http", url = "{east.url}", timeouts = {{ first_byte_floor_s = 0.3, idle_s = 5.0 }} }}'
    gw = start_gateway(world({"us-east-1": [spec], "us-west-2": [backend(west)]}))
    text, _ = stream(gw, "us-east-1.localhost")
    assert text == WHOLE and west.posts() == []


def test_hops_are_on_the_record(start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]) -> None:
    east, west, _ = fault_servers
    east.default = Fault("cut", at=10)
    gw = start_gateway(world({"us-east-1": [backend(east)], "us-west-2": [backend(west)]}))
    text = raw_stream(gw)
    assert text.count("data: [DONE]") == 1 and text.endswith("data: [DONE]\n\n") and "error" not in text
    hops = next(ln for ln in text.splitlines() if ln.startswith(": x-regiongate-hops"))
    assert hops.index("us-east-1") < hops.index("us-west-2") and "dropped the connection" in hops
    r = httpx.get(gw.url + "/v1/usage", headers={"authorization": f"Bearer {DEMO_KEY}"})
    assert r.status_code == 200
    # The stream's closing receipt names the same hops, signed: each region, its zone, the backend, why.
    token = next(ln for ln in text.splitlines() if ln.startswith(": x-regiongate-receipt "))
    claims = _verified(gw, token.split(" ", 2)[2])
    assert [(h["region"], h["zone"], h["backend"]) for h in claims["hops"]] == [
        ("us-east-1", "us", "us-east-1/grok-4/0"),
        ("us-west-2", "us", "us-west-2/grok-4/0"),
    ]
    assert claims["hops"][0]["reason"] == "first" and "dropped the connection" in claims["hops"][1]["reason"]
    assert claims["region"] == "us-east-1" and claims["endpoint"] == "global"


def _verified(gw: Proc, token: str) -> dict[str, Any]:
    """The receipt's claims, checked against the gateway's published keys (fails on any alteration)."""
    jwks = httpx.get(gw.url + receipts.JWKS_PATH).json()
    claims = receipts.verify(token, jwks)
    h, _, sig = token.split(".")
    forged = receipts.b64url(orjson.dumps({**claims, "hops": claims["hops"][:1]}))
    with pytest.raises(receipts.ReceiptError, match="altered or forged"):
        receipts.verify(f"{h}.{forged}.{sig}", jwks)
    return claims


def test_regional_endpoint_continues_only_inside_its_region(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    bad, good, west = fault_servers
    bad.default = Fault("cut", at=20)
    cfg = world({"us-east-1": [backend(bad), backend(good)], "us-west-2": [backend(west)]})
    gw = start_gateway(cfg)
    # Both east backends rank equal (no probes): the faulty one (id 0) is tried first.
    text, _ = stream(gw, "us-east-1.localhost")
    assert text == WHOLE
    assert len(good.posts()) == 1 and west.posts() == []


def test_regional_endpoint_with_one_backend_ends_with_the_original_failure(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    bad, west, _ = fault_servers
    bad.default = Fault("cut", at=20)
    gw = start_gateway(world({"us-east-1": [backend(bad)], "us-west-2": [backend(west)]}))
    started = time.monotonic()
    with pytest.raises(openai.APIError, match=r"dropped the connection mid-answer.*incomplete"):
        stream(gw, "us-east-1.localhost")
    print(
        f"\nMEASURED cut on a one-backend regional endpoint -> in-band error in {time.monotonic() - started:.2f}s"
    )
    assert west.posts() == []  # the data never left us-east-1
    wait_until(lambda: sum(in_use(gw).values()) == 0)


def test_zone_endpoint_continues_inside_its_zone(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    dublin, frankfurt, virginia = fault_servers
    dublin.default = Fault("cut", at=20)
    cfg = world(
        {
            "eu-west-1": [backend(dublin)],
            "eu-central-1": [backend(frankfurt)],
            "us-east-1": [backend(virginia)],
        }
    )
    gw = start_gateway(cfg)
    text, _ = stream(gw, "eu.localhost")
    assert text == WHOLE
    assert len(frankfurt.posts()) == 1 and virginia.posts() == []


@pytest.mark.parametrize(("target", "prefill"), [(Fault("refuse_prefill"), "vllm"), (Fault(), "none")])
def test_a_target_that_cannot_continue_ends_with_the_original_failure(
    target: Fault, prefill: str, start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    east.default, west.default = Fault("cut", at=20), target
    gw = start_gateway(world({"us-east-1": [backend(east)], "us-west-2": [backend(west, prefill)]}))
    with pytest.raises(openai.APIError, match="us-east-1 dropped the connection mid-answer") as e:
        stream(gw)
    assert "continue" not in str(e.value)  # never the refused prefill
    assert len(west.posts()) == (1 if prefill == "vllm" else 0)
    wait_until(lambda: sum(in_use(gw).values()) == 0)


def test_continuation_can_be_turned_off_per_request(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    east.default = Fault("cut", at=20)
    gw = start_gateway(world({"us-east-1": [backend(east)], "us-west-2": [backend(west)]}))
    text = raw_stream(gw, headers={"x-regiongate-continue": "off"})
    assert "stream_interrupted" in text and west.posts() == []


def test_anthropic_messages_stream_is_continued_in_the_next_region(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    gw, west = east_cut(start_gateway, fault_servers)
    ac = anthropic.Anthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0)
    with ac.messages.stream(model="grok-4", max_tokens=100, messages=MSG) as s:  # type: ignore[arg-type]
        events = list(s)
        final = s.get_final_message()
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text == WHOLE and final.content[0].text == WHOLE  # type: ignore[union-attr]
    assert final.usage.output_tokens == TOKENS and final.stop_reason == "end_turn"
    assert sum(1 for e in events if e.type == "message_start") == 1
    assert sum(1 for e in events if e.type == "content_block_start") == 1
    (cont,) = west.posts("/v1/messages")
    last = cont.payload["messages"][-1]  # the Messages API's own prefill: a final assistant message
    assert last == {"role": "assistant", "content": WHOLE[: len(last["content"])]}
    assert len(last["content"].split()) == 20 and "continue_final_message" not in cont.payload
    assert cont.payload["max_tokens"] == 80  # the whole answer keeps the client's limit


def responses_backend(fs: FaultServer, mode: str, prefill: str = "vllm") -> str:
    """A backend that speaks /v1/responses itself (``native``) or takes it as chat completions (``chat``)."""
    via = ', responses = "chat"' if mode == "chat" else ""
    return f'{{ kind = "http", url = "{fs.url}", prefill = "{prefill}"{via}, timeouts = {{ idle_s = 0.5 }} }}'


def responses_stream(gw: Proc, host: str | None = None, **kw: Any) -> tuple[list[Any], Any]:
    """The openai SDK's Responses stream helper (it rebuilds the response from the events, by position)."""
    with client(gw, host, max_retries=0).responses.stream(model="grok-4", input="hi", **kw) as s:
        events = list(s)
        return events, s.get_final_response()


@pytest.mark.parametrize("mode", ["native", "chat"])
@pytest.mark.parametrize("fault", [Fault("cut", at=20), Fault("stall", at=35)])
def test_responses_stream_broken_mid_answer_is_continued_in_the_next_region(
    mode: str, fault: Fault, start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    east.default = fault
    gw = start_gateway(
        world({"us-east-1": [responses_backend(east, mode)], "us-west-2": [responses_backend(west, mode)]})
    )
    started = time.monotonic()
    events, final = responses_stream(gw, max_output_tokens=100)
    took = time.monotonic() - started
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert "".join(e.delta for e in deltas) == WHOLE  # only new text: no repeat of the prefill
    assert final.output_text == WHOLE and final.status == "completed"
    assert kinds.count("response.created") == 1 and kinds.count("response.completed") == 1
    assert kinds.count("response.output_item.added") == 1 and kinds.count("response.content_part.added") == 1
    assert "error" not in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created = next(e for e in events if e.type == "response.created")
    assert final.id == created.response.id and final.created_at == created.response.created_at
    (item,) = final.output
    assert {(e.item_id, e.output_index, e.content_index) for e in deltas} == {(item.id, 0, 0)}
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == WHOLE and done.item_id == item.id
    assert final.usage is not None and final.usage.output_tokens == TOKENS
    if mode == "native":
        (cont,) = west.posts("/v1/responses")
        last = cont.payload["input"][-1]  # the request again, the delivered text its final assistant input
        assert len(cont.payload["input"]) == 2 and cont.payload["input"][0]["content"] == "hi"
        assert cont.payload["max_output_tokens"] == 100 - fault.at
    else:
        (cont,) = west.posts()
        last = cont.payload["messages"][-1]
        assert cont.payload["continue_final_message"] is True and cont.payload["add_generation_prompt"] is False
        assert cont.payload["max_tokens"] == 100 - fault.at
    assert {k: v for k, v in last.items() if k != "type"} == {"role": "assistant", "content": WHOLE[: len(last["content"])]}
    assert last.get("type", "message") == "message" and len(last["content"].split()) == fault.at
    print(f"\nMEASURED Responses ({mode}) {fault.kind} at {fault.at} on global -> continued in us-west-2 in {took:.2f}s")
    wait_until(lambda: sum(in_use(gw).values()) == 0)


@pytest.mark.parametrize("mode", ["native", "chat"])
def test_responses_stream_continues_only_inside_a_regional_endpoints_region(
    mode: str, start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    bad, good, west = fault_servers
    bad.default = Fault("cut", at=20)
    spec = [responses_backend(bad, mode), responses_backend(good, mode)]
    gw = start_gateway(world({"us-east-1": spec, "us-west-2": [responses_backend(west, mode)]}))
    events, final = responses_stream(gw, "us-east-1.localhost")
    assert final.output_text == WHOLE and [e.type for e in events].count("response.created") == 1
    path = "/v1/responses" if mode == "native" else "/v1/chat/completions"
    assert len(good.posts(path)) == 1 and west.received == []
    # One backend in the region: nothing may continue it elsewhere, the original failure is named.
    gw2 = start_gateway(world({"us-east-1": [responses_backend(bad, mode)], "us-west-2": [spec[1]]}))
    events = list(client(gw2, "us-east-1.localhost").responses.create(model="grok-4", input="hi", stream=True))
    last = events[-1]
    assert last.type == "error" and last.code == "stream_interrupted"  # type: ignore[union-attr]
    assert "us-east-1 dropped the connection mid-answer" in last.message  # type: ignore[union-attr]
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize("mode", ["native", "chat"])
@pytest.mark.parametrize(("target", "prefill"), [(Fault("refuse_prefill"), "vllm"), (Fault(), "none")])
def test_a_responses_stream_that_cannot_continue_ends_with_the_original_failure(
    mode: str,
    target: Fault,
    prefill: str,
    start_gateway: Callable[..., Proc],
    fault_servers: list[FaultServer],
) -> None:
    east, west, _ = fault_servers
    east.default, west.default = Fault("cut", at=5), target
    gw = start_gateway(
        world({"us-east-1": [responses_backend(east, mode)], "us-west-2": [responses_backend(west, mode, prefill)]})
    )
    events = list(client(gw).responses.create(model="grok-4", input="hi", stream=True))
    last = events[-1]
    assert last.type == "error" and last.code == "stream_interrupted"  # type: ignore[union-attr]
    assert "us-east-1 dropped the connection mid-answer" in last.message  # type: ignore[union-attr]
    assert "continue" not in last.message  # type: ignore[union-attr]  # never the refused prefill
    assert [e.type for e in events].count("response.created") == 1
    assert len(west.received) == (1 if prefill == "vllm" else 0)
    wait_until(lambda: sum(in_use(gw).values()) == 0)


STRICT_KEY = "rg-test-key-that-never-continues"
STRICT_TEAM = '[[teams]]\nname = "strict"\nkeys = [{ id = "strict", env = "STRICT_KEY", continuation = false }]'


def test_continuation_can_be_turned_off_per_key(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    gw, west = east_cut(start_gateway, fault_servers, extra=STRICT_TEAM, env={"STRICT_KEY": STRICT_KEY})
    strict = openai.OpenAI(base_url=gw.url + "/v1", api_key=STRICT_KEY, max_retries=0)
    with pytest.raises(openai.APIError, match="us-east-1 dropped the connection mid-answer"):
        list(strict.chat.completions.create(model="grok-4", messages=MSG, stream=True))
    assert west.posts() == []
    text, _ = stream(gw)  # another key of the same gateway: continued
    assert text == WHOLE and len(west.posts()) == 1


def test_grpc_stream_is_continued_with_hops_in_trailing_metadata(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    east.default = Fault("cut", at=20)
    _, c = grpc_gateway(start_gateway, world({"us-east-1": [backend(east)], "us-west-2": [backend(west)]}))
    try:
        text, last = grpc_text(c)
        assert text == WHOLE and last.finish_reason == "REASON_STOP"
        assert last.usage.completion_tokens == TOKENS
    finally:
        c.close()
    assert len(west.posts()) == 1


def test_grpc_trailing_metadata_names_every_hop(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    east.default = Fault("cut", at=20)
    port = free_port()
    gw = start_gateway(
        world({"us-east-1": [backend(east)], "us-west-2": [backend(west)]}), args=["--grpc-port", str(port)]
    )
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        req = chat_pb2.GetCompletionsRequest(
            model="grok-4", messages=[chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[{"text": "hi"}])]
        )
        call = chat_pb2_grpc.ChatStub(channel).GetCompletionChunk(
            req, metadata=(("authorization", f"Bearer {DEMO_KEY}"),)
        )
        text = "".join(c.outputs[0].delta.content for c in call if c.outputs)
        trailing = dict(call.trailing_metadata())
        hops = trailing["x-regiongate-hops"]
        first_receipt = dict(call.initial_metadata())["x-regiongate-receipt"]
    assert text == WHOLE
    assert hops.startswith("us-east-1 us-east-1/grok-4/0 (first); us-west-2 us-west-2/grok-4/0 (")
    claims = _verified(gw, trailing["x-regiongate-receipt"])
    assert [h["region"] for h in claims["hops"]] == ["us-east-1", "us-west-2"]
    assert "hops" not in receipts.unverified_claims(first_receipt)  # sent before the stream moved


def test_a_continued_responses_stream_is_stored_whole(
    start_gateway: Callable[..., Proc], fault_servers: list[FaultServer]
) -> None:
    east, west, _ = fault_servers
    east.default = Fault("cut", at=20)
    gw = start_gateway(
        world({"us-east-1": [responses_backend(east, "native")], "us-west-2": [responses_backend(west, "native")]})
    )
    _, final = responses_stream(gw, store=True)
    kept = client(gw).responses.retrieve(final.id)  # under the id the client read, the whole answer
    assert kept.output_text == WHOLE and kept.usage is not None and kept.usage.output_tokens == TOKENS
