"""Limits and timeouts at the REST edge (issue 12, item 2), against a real gateway over raw sockets.

Every HTTP/1.1 listener applies them: each test runs against the REST port (``--port``) and against the
one-port listener (``--listen``), whose connections first meet the protocol dispatcher (front/dispatch.py).
The timeouts are set to about a second here ([edge] in the config); every wait is bounded generously
above that, so the tests check that a connection *is* closed, not how fast.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from bench.capture import CaptureBackend, RawClient, chat_request
from tests.support.h2_client import H2Client, grpc_frame
from tests.support.procs import DEMO_KEY, Proc, free_port, spawn_gateway
from tests.support.worlds import capture_world

EDGE = (
    "[edge]\nheader_timeout_s = 1.0\nbody_timeout_s = 1.0\nkeepalive_idle_s = 1.0\nmax_header_bytes = 16384\n"
)
CLOSED_WITHIN = 15.0  # generous: the configured timeouts are 1 s


@pytest.fixture(scope="module", params=[False, True], ids=["rest-port", "one-port"])
def gateway(
    capture_backend: CaptureBackend, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Proc]:
    cfg = capture_world(capture_backend.url) + "\n" + EDGE
    gw = spawn_gateway(cfg, tmp_path_factory.mktemp("gw"), one_port=request.param)
    yield gw
    gw.stop()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CLOSED_WITHIN)


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the gateway sends until it closes; raises socket.timeout if it never does."""
    started = time.monotonic()
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        out += data
    return out, time.monotonic() - started


def test_an_idle_connection_is_closed_within_the_header_timeout(gateway: Proc) -> None:
    with _connect(gateway.port) as sock:
        out, _ = _read_until_closed(sock)
    assert out.startswith(b"HTTP/1.1 408"), out


def test_a_slowloris_head_is_closed_within_the_header_timeout(gateway: Proc) -> None:
    with _connect(gateway.port) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n")
        stop = threading.Event()

        def drip() -> None:  # one header byte every 0.2 s: never a complete head
            while not stop.wait(0.2):
                try:
                    sock.sendall(b"x")
                except OSError:
                    return

        t = threading.Thread(target=drip, daemon=True)
        t.start()
        try:
            out, _ = _read_until_closed(sock)
        finally:
            stop.set()
            t.join(5)
    assert out.startswith(b"HTTP/1.1 408"), out


def test_a_slow_body_is_closed_within_the_body_timeout(
    gateway: Proc, capture_backend: CaptureBackend
) -> None:
    before = len(capture_backend.requests)
    with _connect(gateway.port) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer "
            + DEMO_KEY.encode()
            + b'\r\ncontent-length: 1000\r\n\r\n{"model":'
        )
        _read_until_closed(sock)  # closed (socket.timeout fails the test when it is not)
    assert len(capture_backend.requests) == before  # nothing half-read went upstream


def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(gateway: Proc) -> None:
    with _connect(gateway.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        out, _ = _read_until_closed(sock)
    assert out.startswith(b"HTTP/1.1 200") and out.count(b"HTTP/1.1") == 1, out


def test_an_oversized_head_is_a_431(gateway: Proc, capture_backend: CaptureBackend) -> None:
    before = len(capture_backend.requests)
    big = b"x-big: " + b"a" * 20000 + b"\r\n"
    a = RawClient(gateway.port).send(chat_request(b"/v1/chat/completions", "big", key=DEMO_KEY, extra=big))
    assert a is not None and a.status == 431, a
    assert "exceed" in orjson.loads(a.body)["error"]["message"]
    long_line = b"/v1/chat/completions?" + b"q" * 20000
    a = RawClient(gateway.port).send(chat_request(long_line, "big", key=DEMO_KEY))
    assert a is not None and a.status == 431, a
    assert len(capture_backend.requests) == before


def test_healthz_answers_while_a_64mb_header_is_sent(gateway: Proc) -> None:
    done = threading.Event()
    outcome: list[bytes] = []

    def flood() -> None:
        try:
            with _connect(gateway.port) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-flood: ")
                chunk = b"a" * (1 << 20)
                try:
                    for _ in range(64):
                        sock.sendall(chunk)
                except OSError:
                    pass  # the gateway stopped reading and closed: what it should do
                try:
                    outcome.append(_read_until_closed(sock)[0])
                except OSError:
                    outcome.append(b"")
        finally:
            done.set()

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    worst = 0.0
    with httpx.Client(timeout=10) as client:
        while not done.is_set():
            started = time.monotonic()
            assert client.get(gateway.url + "/healthz").status_code == 200
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.02)
    t.join(30)
    assert worst < 1.0, worst
    assert outcome and (outcome[0] == b"" or outcome[0].startswith(b"HTTP/1.1 431")), outcome


@pytest.fixture(scope="module", params=[False, True], ids=["rest-port", "one-port"])
def capped(
    capture_backend: CaptureBackend, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Proc]:
    cfg = capture_world(capture_backend.url) + "\n[edge]\nmax_connections = 3\nheader_timeout_s = 60\n"
    gw = spawn_gateway(cfg, tmp_path_factory.mktemp("capped"), one_port=request.param)
    yield gw
    gw.stop()


def test_a_connection_over_the_cap_gets_a_clear_503(capped: Proc) -> None:
    held = [RawClient(capped.port) for _ in range(3)]
    for h in held:  # each connection answered once, so the gateway has surely accepted all three
        r = h.send(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        assert r is not None and r.status == 200
    try:
        a = RawClient(capped.port).send(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        assert a is not None and a.status == 503, a
        err = orjson.loads(a.body)["error"]
        assert err["code"] == "too_many_connections" and "max_connections" in err["message"]
        assert a.header(b"connection") == b"close" and a.header(b"retry-after") == b"1"
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + CLOSED_WITHIN
    while time.monotonic() < deadline:  # once they are gone, new connections are served again
        a = RawClient(capped.port).send(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        if a is not None and a.status == 200:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the gateway kept refusing after the held connections closed")


@pytest.fixture(scope="module")
def capped_one_port(
    capture_backend: CaptureBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    """HTTP/2 (cleartext, prior knowledge) is the one-port listener's; the REST port speaks HTTP/1.1."""
    cfg = capture_world(capture_backend.url) + "\n[edge]\nmax_connections = 3\nheader_timeout_s = 60\n"
    gw = spawn_gateway(cfg, tmp_path_factory.mktemp("capped-h2"), one_port=True)
    yield gw
    gw.stop()


def test_an_http2_connection_over_the_cap_is_answered_then_closed(capped_one_port: Proc) -> None:
    capped = capped_one_port
    held = [H2Client(capped.port) for _ in range(3)]
    for h in held:  # each connection answered once, so the gateway has surely accepted all three
        reply = h.replies[h.request("/healthz", "localhost", method="GET")]
        h.pump(lambda r=reply: r.done)  # type: ignore[misc]
        assert reply.headers[b":status"] == b"200"
    try:
        rest = H2Client(capped.port)
        sid = rest.request("/healthz", "localhost", method="GET")
        rest.pump(lambda: rest.closed, timeout=CLOSED_WITHIN)  # answered, then the connection closes
        reply = rest.replies[sid]
        assert reply.headers[b":status"] == b"503" and reply.headers[b"retry-after"] == b"1"
        assert orjson.loads(reply.data)["error"]["code"] == "too_many_connections"
        assert rest.goaway is not None and rest.goaway.last_stream_id == sid  # no stream after it is taken

        grpc = H2Client(capped.port)
        head = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
        sid = grpc.request("/xai_api.Models/ListLanguageModels", "localhost", grpc_frame(b""), head)
        grpc.pump(lambda: grpc.closed, timeout=CLOSED_WITHIN)
        status = grpc.replies[sid].headers
        assert status[b"grpc-status"] == b"14" and b"max_connections" in status[b"grpc-message"]
    finally:
        for h in held:
            h.close()


def test_grpc_metadata_over_the_limit_is_refused(
    capture_backend: CaptureBackend, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import grpc
    from xai_sdk.proto import chat_pb2, chat_pb2_grpc

    grpc_port = free_port()
    cfg = capture_world(capture_backend.url) + "\n[edge]\ngrpc_max_metadata_bytes = 4096\n"
    gw = spawn_gateway(cfg, tmp_path_factory.mktemp("grpc"), args=["--grpc-port", str(grpc_port)])
    try:
        req = chat_pb2.GetCompletionsRequest(
            model="grok-4", messages=[chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[{"text": "ok"}])]
        )
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = chat_pb2_grpc.ChatStub(channel)
            auth = ("authorization", f"Bearer {DEMO_KEY}")
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetCompletion(req, metadata=(auth, ("x-big", "a" * 8000)), timeout=30)
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
            assert stub.GetCompletion(req, metadata=(auth,), timeout=30).outputs[0].message.content == "ok"
    finally:
        gw.stop()
