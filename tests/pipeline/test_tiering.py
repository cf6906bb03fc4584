"""``tiering.stamp``: the tier a whole answer ran at, written into it; with the answer already parsed the
member is added to the answer's own bytes, and means the same as the parsed-and-encoded answer. And
``event_stamper``: a stream's events get it, and nothing else in them changes."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from regiongate.core import Tier
from regiongate.pipeline.tiering import event_stamper, stamp

BODIES = [
    b'{"id":"c1","choices":[{"message":{"content":"}"}}],"usage":{"prompt_tokens":3}}',
    b'{ "id" : "c2", "x": 1.50, "s": "caf\\u00e9" }\n',  # spacing and escapes of the backend's own
    b"{}",
    b"{ }\r\n",
    b'{"id":"c3","service_tier":"flex"}',  # another tier said: replaced
    b'{"id":"c4","service_tier":"default"}',  # already said: left as it is
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("tier", [Tier.DEFAULT, Tier.PRIORITY])
def test_stamping_a_parsed_answer_means_what_stamping_the_bytes_means(body: bytes, tier: Tier) -> None:
    parsed = orjson.loads(body)
    kept = orjson.loads(body)
    got = stamp(body, tier, "/chat/completions", parsed)
    assert orjson.loads(got) == orjson.loads(stamp(body, tier, "/chat/completions"))
    assert orjson.loads(got)["service_tier"] == tier.value
    assert list(orjson.loads(got))[-1] == "service_tier" or "service_tier" in kept  # added last, as before
    assert parsed == kept  # the caller's parsed answer is never changed


def test_a_parsed_answer_keeps_its_own_bytes() -> None:
    body = b'{"id":"c2", "x": 1.50}\n'
    got = stamp(body, Tier.FLEX, "/chat/completions", orjson.loads(body))
    assert got == b'{"id":"c2", "x": 1.50,"service_tier":"flex"}'


def test_anthropic_messages_are_stamped_in_usage() -> None:
    body = b'{"id":"m1","usage":{"input_tokens":3}}'
    got = orjson.loads(stamp(body, Tier.DEFAULT, "/messages", orjson.loads(body)))
    assert got["usage"]["service_tier"] == "standard"


def _chunk_event(content: str, compact: bool) -> bytes:
    data = orjson.dumps({"id": "c1", "choices": [{"index": 0, "delta": {"content": content}}]})
    return (b"data:" if compact else b"data: ") + data + b"\n\n"


@given(contents=st.lists(st.text(), min_size=1, max_size=3), compact=st.booleans())
@example(contents=["an SSE line reads data: {", 'data:{"x":1}\n\ndata: {'], compact=False)
def test_a_streamed_chunk_is_stamped_per_event_and_its_text_is_left_alone(
    contents: list[str], compact: bool
) -> None:
    """The model's text may say ``data: {`` (explaining SSE, say): only the events' own data lines get the
    tier, so every event stays JSON and its content is what the model wrote."""
    stamper = event_stamper("/chat/completions", Tier.PRIORITY, asked=True)
    assert stamper is not None
    chunk = b"".join(_chunk_event(c, compact) for c in contents)  # one relay output: whole events
    events = [e for e in stamper(chunk).split(b"\n\n") if e]
    assert len(events) == len(contents)
    for event, content in zip(events, contents, strict=True):
        obj = orjson.loads(event.split(b":", 1)[1])
        assert obj["service_tier"] == "priority"
        assert obj["choices"][0]["delta"]["content"] == content
