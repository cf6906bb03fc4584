"""The stream relay on its own (no I/O): each protocol's end, malformed events, and a continuation's
events rebased onto the stream they extend."""

from __future__ import annotations

import orjson

from regiongate.pipeline.sse import SseRelay, StreamKind


def chunk(cid: str, content: str | None = None, finish: str | None = None, **extra: object) -> bytes:
    delta = {} if content is None else {"content": content}
    obj = {
        "id": cid,
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    obj.update(extra)
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def events(raw: bytes) -> list[dict[str, object]]:
    return [orjson.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]


def test_chat_is_complete_after_every_finish_reason_even_without_done() -> None:
    r = SseRelay(strip_usage=False)
    r.feed(chunk("a", "Hel") + chunk("a", "lo"))
    assert not r.complete
    assert r.feed(chunk("a", finish="stop")) and r.complete and not r.done
    assert r.feed(b"data: [DONE]\n\n") == b""  # held back: the gateway ends the stream itself
    assert r.done and r.delivered == "Hello"


def test_a_cut_event_and_a_malformed_one_are_never_passed_on() -> None:
    r = SseRelay(strip_usage=False)
    assert r.feed(b"data: {not json\n\n") == b"" and r.malformed == 1
    r.feed(chunk("a", "x") + b'data: {"id": "a", "cho')
    assert r.flush() == b"" and r.malformed == 2 and not r.complete


def test_responses_and_messages_end_on_their_own_events() -> None:
    r = SseRelay(strip_usage=True, kind=StreamKind.RESPONSES)
    r.feed(b'event: response.created\ndata: {"type": "response.created", "sequence_number": 0}\n\n')
    assert not r.complete and r.sequence == 1
    r.feed(
        b'event: response.completed\ndata: {"type": "response.completed", "sequence_number": 1, "response": {"usage": {"input_tokens": 3, "output_tokens": 5}}}\n\n'
    )
    assert r.complete and r.usage == {"prompt_tokens": 3, "completion_tokens": 5}
    m = SseRelay(strip_usage=False, kind=StreamKind.MESSAGES)
    m.feed(b'event: message_delta\ndata: {"type": "message_delta", "usage": {"output_tokens": 2}}\n\n')
    assert not m.complete
    m.feed(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
    assert m.complete


def test_a_continuation_is_rebased_unechoed_and_its_usage_restated() -> None:
    first = SseRelay(strip_usage=False)
    first.feed(chunk("a", "Hello", system_fingerprint="fp_a") + chunk("a", " wor"))
    cont = SseRelay(strip_usage=False)
    cont.continue_from(first)
    role = b'data: {"id": "b", "created": 9, "model": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": null}, "finish_reason": null}]}\n\n'
    assert cont.feed(role) == b""  # the continuation's opening delta is not a second one
    out = events(cont.feed(chunk("b", "Hello wor") + chunk("b", "ld") + chunk("b", finish="stop")))
    assert [e["id"] for e in out] == ["a", "a"] and all(e["created"] == 1 for e in out)
    assert all(e["system_fingerprint"] == "fp_a" for e in out)
    assert cont.delivered == "Hello world" and cont.complete
    usage = {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}
    (u,) = events(cont.feed(b"data: " + orjson.dumps({"id": "b", "choices": [], "usage": usage}) + b"\n\n"))
    assert u["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}


def test_a_tool_call_name_repeated_in_every_fragment_is_relayed_once() -> None:
    """SGLang repeats id, type and function.name in every tool-call delta; clients append strings, so the
    relay leaves them on the first fragment of each call only (OpenAI's shape). Arguments pass as sent."""
    r = SseRelay(strip_usage=False)

    def frag(i: int, args: str) -> dict[str, object]:
        return {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": f"f{i}", "arguments": args}}

    def tc(*frags: dict[str, object]) -> bytes:
        return chunk("a", choices=[{"index": 0, "delta": {"tool_calls": list(frags)}}])

    out = events(r.feed(tc(frag(0, '{"a"')) + tc(frag(0, ": 1}"), frag(1, "{")) + tc(frag(1, "}"))))
    got = [e["choices"][0]["delta"]["tool_calls"] for e in out]  # type: ignore[index]
    assert got == [
        [frag(0, '{"a"')],
        [{"index": 0, "function": {"arguments": ": 1}"}}, frag(1, "{")],
        [{"index": 1, "function": {"arguments": "}"}}],
    ]
    once = tc(frag(0, "{}"))  # the OpenAI shape itself passes as the same bytes
    assert SseRelay(strip_usage=False).feed(once) == once


def test_a_chat_stream_without_a_finish_reason_or_done_is_never_complete() -> None:
    """The end-of-stream rule has two ways to be met ([DONE], or every choice seen with its finish_reason);
    a body that ends before either is incomplete, even when it never opened a choice at all."""
    usage_only = b'data: {"id": "a", "choices": [], "usage": {"prompt_tokens": 1}}\n\n'
    bodies = [b"", b": keep-alive\n\n", usage_only, b"data: {not json\n\n", chunk("a", "Hel") + chunk("a", "lo")]
    for body in bodies:
        r = SseRelay(strip_usage=False)
        r.feed(body)
        r.flush()
        assert not r.complete and not r.done, body
    r = SseRelay(strip_usage=False)
    r.feed(usage_only + b"data: [DONE]\n\n")
    assert r.complete and r.done  # [DONE] alone ends it, whatever came before
    two = SseRelay(strip_usage=False)  # n = 2: one finish_reason is not every choice's
    two.feed(chunk("a", "x") + b'data: {"id": "a", "choices": [{"index": 1, "delta": {"content": "y"}}]}\n\n')
    two.feed(chunk("a", finish="stop"))
    assert not two.complete


def test_responses_events_without_positions_get_them() -> None:
    """llama-server's Responses stream names only item_id; the openai SDK's reader needs output_index,
    content_index and sequence_number. A stream that has them passes as the same bytes."""
    r = SseRelay(strip_usage=False, kind=StreamKind.RESPONSES)

    def ev(obj: dict[str, object]) -> bytes:
        return b"event: " + str(obj["type"]).encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

    msg = {"type": "message", "id": "msg_1", "content": []}
    fc = {"type": "function_call", "id": "fc_1", "name": "f", "arguments": ""}
    raw = [
        {"type": "response.created", "response": {"id": "r"}},
        {"type": "response.output_item.added", "item": msg},
        {"type": "response.content_part.added", "item_id": "msg_1", "part": {"type": "output_text", "text": ""}},
        {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "hi"},
        {"type": "response.output_item.done", "item": msg},
        {"type": "response.output_item.added", "item": fc},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "delta": "{}"},
        {"type": "response.completed", "response": {"id": "r"}},
    ]
    out = r.feed(b"".join(ev(o) for o in raw))
    assert out.startswith(b"event: response.created\ndata: ")
    got = [orjson.loads(e.split(b"data: ", 1)[1]) for e in out.split(b"\n\n") if e]
    assert [e["sequence_number"] for e in got] == list(range(8))
    assert [e.get("output_index") for e in got] == [None, 0, 0, 0, 0, 1, 1, None]
    assert [e.get("content_index") for e in got] == [None, None, 0, 0, None, None, None, None]
    assert r.complete
    whole = SseRelay(strip_usage=False, kind=StreamKind.RESPONSES)
    full = ev({**raw[3], "output_index": 0, "content_index": 0, "sequence_number": 0})
    assert whole.feed(full) == full


def test_a_chat_shaped_error_in_a_responses_stream_becomes_its_error_event() -> None:
    """llama-server sends ``data: {"error": {...}}`` when a Responses stream fails midway: the client gets
    the Responses ``error`` event with the server's message, and the stream counts as ended by it."""
    r = SseRelay(strip_usage=False, kind=StreamKind.RESPONSES)
    r.feed(b'event: response.created\ndata: {"type": "response.created", "sequence_number": 0, "response": {}}\n\n')
    out = r.feed(b'data: {"error": {"code": 500, "message": "out of memory", "type": "server_error"}}\n\n')
    assert out.startswith(b"event: error\ndata: ")
    assert orjson.loads(out.split(b"data: ", 1)[1]) == {
        "type": "error",
        "code": "server_error",
        "message": "out of memory",
        "param": None,
        "sequence_number": 1,
    }
    assert r.errored and r.complete


def _rev(obj: dict[str, object]) -> bytes:
    return b"event: " + str(obj["type"]).encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _decoded(out: bytes) -> list[dict[str, object]]:
    return [orjson.loads(e.split(b"data: ", 1)[1]) for e in out.split(b"\n\n") if e]


def test_a_responses_continuation_is_rebased_onto_the_first_stream() -> None:
    """The first stream opened msg_a and delivered "Hello wor"; the target (llama-server-like: no item
    events, no positions, its prefill echoed) goes on under its own ids: the client reads one stream."""
    first = SseRelay(strip_usage=False, kind=StreamKind.RESPONSES)
    where = {"item_id": "msg_a", "output_index": 0, "content_index": 0}
    first.feed(
        _rev({"type": "response.created", "sequence_number": 0, "response": {"id": "resp_a", "created_at": 1}})
        + _rev({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": {"type": "message", "id": "msg_a"}})
        + _rev({"type": "response.content_part.added", "sequence_number": 2, **where, "part": {"type": "output_text", "text": ""}})
        + _rev({"type": "response.output_text.delta", "sequence_number": 3, **where, "delta": "Hello"})
        + _rev({"type": "response.output_text.delta", "sequence_number": 4, **where, "delta": " wor"})
    )
    assert first.delivered == "Hello wor" and first.tokens == 2 and not first.tool_calls
    cont = SseRelay(strip_usage=False, kind=StreamKind.RESPONSES)
    cont.continue_from(first)
    item = {"type": "message", "id": "msg_b", "content": [{"type": "output_text", "text": "Hello world"}]}
    raw = [
        {"type": "response.created", "response": {"id": "resp_b", "created_at": 9}},
        {"type": "response.in_progress", "response": {"id": "resp_b"}},
        {"type": "response.output_text.delta", "item_id": "msg_b", "delta": "Hello wor"},  # the echo
        {"type": "response.output_text.delta", "item_id": "msg_b", "delta": "ld"},
        {"type": "response.output_text.done", "item_id": "msg_b", "text": "Hello world"},
        {"type": "response.output_item.done", "item": item},
        {
            "type": "response.completed",
            "response": {"id": "resp_b", "created_at": 9, "output": [item], "usage": {"input_tokens": 12, "output_tokens": 1, "total_tokens": 13}},
        },
    ]
    got = _decoded(cont.feed(b"".join(_rev(o) for o in raw)))
    assert [e["type"] for e in got] == [
        "response.output_text.delta",
        "response.output_text.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in got] == [5, 6, 7, 8]
    assert got[0]["delta"] == "ld" and {(e.get("item_id", "msg_a"), e["output_index"]) for e in got[:3]} == {("msg_a", 0)}
    assert got[0]["content_index"] == 0 and got[1]["text"] == "Hello world"
    assert got[2]["item"] == {**item, "id": "msg_a"}
    final = got[3]["response"]
    assert isinstance(final, dict) and final["id"] == "resp_a" and final["created_at"] == 1
    assert final["output"] == [{**item, "id": "msg_a"}]
    assert final["usage"] == {"input_tokens": 10, "output_tokens": 3, "total_tokens": 13}
    assert cont.complete and cont.delivered == "Hello world" and cont.usage == {"prompt_tokens": 10, "completion_tokens": 3}


def test_a_responses_stream_with_another_item_than_its_message_cannot_be_continued() -> None:
    r = SseRelay(strip_usage=False, kind=StreamKind.RESPONSES)
    r.feed(_rev({"type": "response.output_item.added", "item": {"type": "function_call", "id": "fc_1"}}))
    assert r.tool_calls


def test_a_stream_read_in_pieces_of_any_size_relays_the_same_events_and_estimate() -> None:
    """Reads split events anywhere (one byte, mid-line, several events at once): what is relayed and the
    token estimate never depend on where the reads fell."""
    reasoning = b'data: {"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]}\n\n'
    raw = chunk("a", "tok0") + reasoning + chunk("a", " tok1") + chunk("a", finish="stop") + b"data: [DONE]\n\n"
    whole = SseRelay(strip_usage=False)
    expected = whole.feed(raw)
    assert events(expected)[1]["choices"] == [{"index": 0, "delta": {"reasoning_content": "hm"}}]
    assert (whole.delivered, whole.deltas, whole.chars, whole.content_events) == ("tok0 tok1", 3, 11, 2)
    for size in (1, 2, 7, 40, len(raw) - 1):
        r = SseRelay(strip_usage=False)
        out = b"".join(r.feed(raw[i : i + size]) for i in range(0, len(raw), size)) + r.flush()
        assert out == expected, size
        assert (r.delivered, r.deltas, r.chars, r.done, r.complete) == ("tok0 tok1", 3, 11, True, True)
