"""The simulated engine answers a request it cannot serve with a 400 in the asking API's own error shape,
for every dialect (schemathesis found a legacy-completions prompt that answered 500)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from regiongate.upstream.base import UpstreamCall
from regiongate.upstream.simulated import SimulatedEngine

BAD: list[tuple[str, dict[str, Any]]] = [
    ("/completions", {"model": "m", "prompt": [{}]}),
    ("/completions", {"model": "m", "prompt": 3}),
    ("/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": 5}),
]


@pytest.mark.parametrize(("path", "payload"), BAD)
async def test_bad_requests_are_400_in_the_api_s_shape(path: str, payload: dict[str, Any]) -> None:
    engine = SimulatedEngine("b", "us-east-1", "Ashburn", ttft_ms=0, tokens_per_s=1000, slots=2, rtt_ms=0)
    resp = await engine.send(UpstreamCall(path, orjson.dumps(payload), payload, False, "req_1"))
    assert resp.status == 400
    err = orjson.loads(resp.body)["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
