"""Nothing a client sends can change the shape of an upstream request (issue 12, items 1 and 3).

A raw TCP client talks to a real gateway in front of an ``http`` backend that records exactly the bytes it
receives (``bench.capture``). Every check is on what the backend saw and on which answer reached whom.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from bench.capture import CaptureBackend, RawClient, chat_request, raw_post
from tests.support.procs import DEMO_KEY, Proc, spawn_gateway
from tests.support.worlds import capture_world


@pytest.fixture
def capture(capture_backend: CaptureBackend) -> CaptureBackend:
    capture_backend.reset()
    return capture_backend


@pytest.fixture(scope="module")
def gateway(capture_backend: CaptureBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    gw = spawn_gateway(capture_world(capture_backend.url), tmp_path_factory.mktemp("gw"))
    yield gw
    gw.stop()


SMUGGLE = b"/v1/chat/completions%20HTTP/1.1%0D%0AHost:%20x%0D%0AContent-Length:%200%0D%0A%0D%0AGET%20/v1/X"


def test_an_encoded_request_line_is_refused_and_the_pool_stays_in_step(
    gateway: Proc, capture: CaptureBackend
) -> None:
    attacker, victim = RawClient(gateway.port), RawClient(gateway.port)
    a = attacker.send(chat_request(SMUGGLE, "attacker-1", key=DEMO_KEY))
    assert a is not None and a.status == 404, a
    assert orjson.loads(a.body)["error"]["code"] == "unknown_url"
    v = victim.send(chat_request(b"/v1/chat/completions", "victim-secret", key=DEMO_KEY))
    a2 = attacker.send(chat_request(b"/v1/chat/completions", "attacker-2", key=DEMO_KEY))
    assert v is not None and v.content == "victim-secret"
    assert a2 is not None and a2.content == "attacker-2"
    assert capture.bad() == []
    assert [r.url for r in capture.requests] == [b"/v1/chat/completions"] * 2


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/../../metrics",
        b"/v1/%2e%2e/%2e%2e/metrics",
        b"/v1/%2E%2E/metrics",
        b"/v1/chat%2fcompletions",
        b"/v1/chat/completions/../../../admin",
        b"/v1/./chat/completions",
        b"/v1/x/../chat/completions",
        b"/v1/chat/completions%20HTTP/1.1",
        b"/v1/chat/completions%0d%0a",
        b"/v1/chat/completions\\..\\..\\metrics",
        b"/v1/chat/completions%00",
        b"/v1/%C4%80",
        b"/v1/chat/completions%C4%80",
        b"/v1/X",
        b"/v1//chat/completions",
        b"/v1/chat/completions/",
        b"/v1/chat/completions;x=1",
    ],
)
def test_a_path_outside_the_allow_list_is_a_404_before_any_backend(
    gateway: Proc, capture: CaptureBackend, path: bytes
) -> None:
    client = RawClient(gateway.port)
    a = client.send(chat_request(path, "m", key=DEMO_KEY))
    assert a is not None and a.status == 404, (path, a)
    err = orjson.loads(a.body)["error"]
    assert err["code"] == "unknown_url" and err["type"] == "invalid_request_error"
    assert capture.requests == []


def test_encoded_unreserved_characters_are_normalised(gateway: Proc, capture: CaptureBackend) -> None:
    client = RawClient(gateway.port)
    a = client.send(chat_request(b"/v1/%63hat/completions", "m1", key=DEMO_KEY))
    assert a is not None and a.status == 200 and a.content == "m1", a
    assert [r.url for r in capture.requests] == [b"/v1/chat/completions"]
    assert capture.bad() == []


def test_deeply_nested_json_is_a_400(gateway: Proc, capture: CaptureBackend) -> None:
    client = RawClient(gateway.port)
    for depth in (100, 253, 300, 1024, 1100):
        nested = b"[" * depth + b"]" * depth
        body = b'{"model":"grok-4","stream":true,"messages":[{"role":"user","content":' + nested + b"}]}"
        raw = raw_post(b"/v1/chat/completions", body, key=DEMO_KEY)
        a = client.send(raw)
        assert a is not None, depth
        assert a.status < 500, (depth, a)
        if depth > 200:
            assert a.status == 400 and (b"nested" in a.body or b"depth" in a.body), (depth, a)


def test_non_utf8_body_and_headers_are_4xx(gateway: Proc, capture: CaptureBackend) -> None:
    client = RawClient(gateway.port)
    body = b'{"model":"grok-4","messages":[{"role":"user","content":"\xff\xfe"}]}'
    raw = raw_post(
        b"/v1/chat/completions", body, key=DEMO_KEY, extra=b"x-request-id: \xff\xfe\r\nx-custom: \xc4\x80\r\n"
    )
    a = client.send(raw)
    assert a is not None and a.status == 400, a
    a = client.send(
        chat_request(b"/v1/chat/completions", "ok", key=DEMO_KEY, extra=b"x-request-id: \xff\r\n")
    )
    assert a is not None and a.status == 200 and a.content == "ok", a
    assert capture.bad() == []


def _host_request(hosts: list[bytes], version: bytes = b"HTTP/1.1") -> bytes:
    body = b'{"model":"grok-4","messages":[{"role":"user","content":"h"}]}'
    lines = [b"POST /v1/chat/completions " + version]
    lines += [b"Host: " + h for h in hosts]
    lines += [b"authorization: Bearer " + DEMO_KEY.encode(), b"content-length: " + str(len(body)).encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    ("hosts", "status"),
    [
        ([b"localhost", b"us-east-1.localhost"], 400),
        ([b"us-east-1.localhost", b"localhost"], 400),
        ([], 400),
        ([b"US-EAST-1.LocalHost."], 200),
        ([b"us-east-1.localhost:8000"], 200),
        ([b"us-east-1.localhost.."], 404),
        ([b"nowhere.localhost"], 404),
    ],
)
def test_host_forms(gateway: Proc, capture: CaptureBackend, hosts: list[bytes], status: int) -> None:
    a = RawClient(gateway.port).send(_host_request(hosts))
    assert a is not None and a.status == status, (hosts, a)
    if status == 200:
        assert a.header(b"x-regiongate-region") == b"us-east-1"
    else:
        assert "error" in orjson.loads(a.body)


def test_http10_without_host_is_global(gateway: Proc, capture: CaptureBackend) -> None:
    a = RawClient(gateway.port).send(_host_request([], b"HTTP/1.0"))
    assert a is not None and a.status == 200, a


def test_the_backend_sees_the_gateways_request_id_not_the_clients(
    gateway: Proc, capture: CaptureBackend
) -> None:
    client = RawClient(gateway.port)
    a = client.send(
        chat_request(b"/v1/chat/completions", "r", key=DEMO_KEY, extra=b"x-request-id: mine-1\r\n")
    )
    assert a is not None and a.status == 200
    ours = a.header(b"x-request-id")
    assert ours is not None and ours.startswith(b"req_"), a.headers
    assert a.header(b"x-client-request-id") == b"mine-1"
    assert capture.requests[0].header(b"x-request-id") == ours
