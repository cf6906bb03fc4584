"""``tiering.stamp``: the tier a whole answer ran at, written into it; with the answer already parsed the
member is added to the answer's own bytes, and means the same as the parsed-and-encoded answer."""

from __future__ import annotations

import orjson
import pytest

from regiongate.core import Tier
from regiongate.pipeline.tiering import stamp

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
