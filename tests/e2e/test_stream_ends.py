"""How each stream protocol ends, through the gateway over REST: a stream complete by its protocol's rule
never gets an error event, a truncated one always gets its protocol's; a malformed event is dropped and
counted, never passed to the client. Backends are the fault-injection server, one region, no continuation
target (continuation has its own tests)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import httpx
import openai
import orjson
import pytest

from tests.support.clients import MSG, client, in_use
from tests.support.faults import WHOLE, Fault, FaultServer, grpc_gateway, grpc_text
from tests.support.procs import DEMO_KEY, Proc, wait_until
from tests.support.scale import metric
from tests.support.worlds import http_backend, world


def _gateway(start_gateway: Callable[..., Proc], fs: FaultServer) -> Proc:
    return start_gateway(world({"us-east-1": [http_backend(fs.url, idle_s=1)]}))


def _chat_text(gw: Proc) -> str:
    stream = client(gw, max_retries=0).chat.completions.create(model="grok-4", messages=MSG, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_finish_reason_without_done_is_complete(
    start_gateway: Callable[..., Proc], fault_server: FaultServer
) -> None:
    fault_server.default = Fault("no_done")
    gw = _gateway(start_gateway, fault_server)
    assert _chat_text(gw) == WHOLE
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "grok-4", "messages": MSG, "stream": True},
        headers={"authorization": f"Bearer {DEMO_KEY}"},
    )
    assert r.text.endswith("data: [DONE]\n\n") and r.text.count("[DONE]") == 1
    assert "error" not in r.text
    assert metric(gw.url + "/metrics", "regiongate_requests_total", {"status": "200"}) == 2.0


@pytest.mark.parametrize("fault", [Fault("cut", at=20), Fault("stall", at=20)])
def test_stream_without_a_finish_is_a_failure(
    fault: Fault, start_gateway: Callable[..., Proc], fault_server: FaultServer
) -> None:
    fault_server.default = fault
    gw = _gateway(start_gateway, fault_server)
    with pytest.raises(openai.APIError, match="incomplete") as e:
        _chat_text(gw)
    assert isinstance(e.value.body, dict) and e.value.body["code"] == "stream_interrupted"
    wait_until(lambda: sum(in_use(gw).values()) == 0)


def test_malformed_event_is_dropped_and_counted(
    start_gateway: Callable[..., Proc], fault_server: FaultServer
) -> None:
    fault_server.default = Fault("malformed", at=10)
    gw = _gateway(start_gateway, fault_server)
    assert _chat_text(gw) == WHOLE  # the SDK would raise JSONDecodeError on the bad event
    assert (
        metric(gw.url + "/metrics", "regiongate_stream_malformed_events_total", {"region": "us-east-1"})
        == 1.0
    )
    assert "this is not json" not in gw.output()  # counted and logged without its content


def _sse(gw: Proc, path: str, body: dict[str, object]) -> list[tuple[str | None, dict[str, object]]]:
    r = httpx.post(gw.url + path, json=body, headers={"authorization": f"Bearer {DEMO_KEY}"}, timeout=15)
    assert r.status_code == 200, r.text
    out: list[tuple[str | None, dict[str, object]]] = []
    for block in r.text.split("\n\n"):
        name, data = None, None
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
        if data is not None and data != "[DONE]":
            out.append((name, orjson.loads(data)))
    assert "[DONE]" not in r.text  # neither protocol has it
    return out


def test_responses_stream_ends_with_response_completed(
    start_gateway: Callable[..., Proc], fault_server: FaultServer
) -> None:
    gw = _gateway(start_gateway, fault_server)
    events = client(gw, max_retries=0).responses.create(model="grok-4", input="hi", stream=True)
    kinds = [e.type for e in events]
    assert kinds[-1] == "response.completed" and "error" not in kinds
    fault_server.default = Fault("cut", at=5)
    got = _sse(gw, "/v1/responses", {"model": "grok-4", "input": "hi", "stream": True})
    assert got[-1][0] == "error" and got[-1][1]["type"] == "error"
    assert got[-1][1]["code"] == "stream_interrupted" and "incomplete" in str(got[-1][1]["message"])
    seqs = [e["sequence_number"] for _, e in got]
    assert seqs == list(range(len(seqs)))  # the error event continues the numbering


# The OpenAI spec's ResponseErrorEvent (openapi 2.3.0): exactly these members, all required.
RESPONSE_ERROR_EVENT = {"type", "code", "message", "param", "sequence_number"}


@pytest.mark.parametrize("fault", [Fault("cut", at=5), Fault("error_event", at=5)])
def test_translated_responses_stream_errors_have_the_spec_shape(
    fault: Fault, start_gateway: Callable[..., Proc], fault_server: FaultServer
) -> None:
    # responses = "chat": the gateway translates the backend's chat stream into Responses events.
    fault_server.default = fault
    spec = f'{{ kind = "http", url = "{fault_server.url}", responses = "chat", timeouts = {{ idle_s = 1 }} }}'
    gw = start_gateway(world({"us-east-1": [spec]}))
    got = _sse(gw, "/v1/responses", {"model": "grok-4", "input": "hi", "stream": True})
    name, err = got[-1]
    assert name == "error" and set(err) == RESPONSE_ERROR_EVENT, err
    assert err["type"] == "error" and isinstance(err["message"], str) and err["param"] is None
    assert err["code"] is None or isinstance(err["code"], str)
    assert [e["sequence_number"] for _, e in got] == list(range(len(got)))
    if fault.kind == "cut":
        assert err["code"] == "stream_interrupted" and "us-east-1" in err["message"]
    else:
        assert "injected in-band failure" in err["message"]
    events = list(client(gw, max_retries=0).responses.create(model="grok-4", input="hi", stream=True))
    assert events[-1].type == "error"  # the official SDK reads it as its ResponseErrorEvent


def test_messages_stream_ends_with_message_stop(
    start_gateway: Callable[..., Proc], fault_server: FaultServer
) -> None:
    gw = _gateway(start_gateway, fault_server)
    body = {"model": "grok-4", "max_tokens": 100, "messages": MSG, "stream": True}
    got = _sse(gw, "/v1/messages", body)
    assert got[-1][0] == "message_stop" and all(n != "error" for n, _ in got)
    fault_server.default = Fault("cut", at=5)
    got = _sse(gw, "/v1/messages", body)
    assert got[-1][0] == "error"
    err = got[-1][1]["error"]
    assert isinstance(err, dict) and err["type"] == "api_error" and "incomplete" in err["message"]


# --- the same over gRPC (xai-sdk) ------------------------------------------------------------------
@pytest.mark.parametrize("fault", [Fault("no_done"), Fault("malformed", at=10)])
def test_grpc_complete_streams_end_cleanly(
    fault: Fault, start_gateway: Callable[..., Proc], fault_server: FaultServer
) -> None:
    fault_server.default = fault
    _, c = grpc_gateway(start_gateway, world({"us-east-1": [http_backend(fault_server.url)]}))
    try:
        text, last = grpc_text(c)
        assert text == WHOLE and last.finish_reason == "REASON_STOP"
    finally:
        c.close()


def test_grpc_cut_stream_ends_with_an_error_status(
    start_gateway: Callable[..., Proc], fault_server: FaultServer
) -> None:
    fault_server.default = Fault("cut", at=20)
    _, c = grpc_gateway(start_gateway, world({"us-east-1": [http_backend(fault_server.url)]}))
    try:
        with pytest.raises(grpc.RpcError) as e:
            grpc_text(c)
        assert "incomplete" in str(e.value.details())  # type: ignore[attr-defined]
    finally:
        c.close()
