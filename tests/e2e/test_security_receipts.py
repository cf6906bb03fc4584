"""Receipts cannot be steered (issue 12, item 5): the signed ``rid`` is the gateway's own, and a client's
``x-request-id`` is signed in its own claim."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from regiongate.pipeline import receipts
from tests.support.procs import DEMO_KEY, Proc
from tests.support.worlds import world


def test_a_clients_request_id_is_echoed_in_its_own_claim(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway(world({"us-east-1": ['{ kind = "simulated", ttft_ms = 1 }']}))
    jwks = httpx.get(gw.url + receipts.JWKS_PATH).json()
    chat = {"model": "grok-4", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"authorization": f"Bearer {DEMO_KEY}", "x-request-id": "req_0000000000000000000001"}
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    claims = receipts.verify(r.headers[receipts.HEADER], jwks)
    assert claims["rid"] == r.headers["x-request-id"] != "req_0000000000000000000001"
    assert claims["client_rid"] == r.headers["x-client-request-id"] == "req_0000000000000000000001"
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat, headers=headers, timeout=30)
    again = receipts.verify(r.headers[receipts.HEADER], jwks)
    assert again["rid"] != claims["rid"]  # the same client id twice: two requests, two ids
