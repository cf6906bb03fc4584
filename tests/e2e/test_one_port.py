"""One port, one certificate: REST over HTTP/1.1 and HTTP/2 and gRPC from one ``regiongate serve --listen``.

Each test drives real clients against a real gateway process on loopback: a raw HTTP/2 client (h2) where the
frames matter (several streams on one connection, one of them reset, flow-control windows, GOAWAY), httpx and
the openai SDK with ``http2=True``, curl, and grpcio / the xAI protos for gRPC. Production names
(``us-east-1.api.x.ai``) reach loopback through the TLS server name (raw client, grpc's target-name
override) or a CONNECT proxy (httpx, openai); nothing touches DNS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from xai_sdk.proto import chat_pb2, chat_pb2_grpc

from regiongate.pipeline import receipts
from tests.support.certs import make_certs
from tests.support.connect_proxy import ConnectProxy
from tests.support.h2_client import H2Client, grpc_frame
from tests.support.procs import DEMO_KEY, Proc, free_port, spawn
from tests.support.product_page import ONE_PORT_WORLD as CONFIG

pytestmark = pytest.mark.timeout(120)

AUTH = [(b"authorization", f"Bearer {DEMO_KEY}".encode())]
JSON_CT = [(b"content-type", b"application/json")]
GRPC_CT = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
US = "us-east-1.api.x.ai"


def chat(model: str = "grok-4", stream: bool = False) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return json.dumps(body).encode()


def grpc_req(model: str = "grok-4") -> chat_pb2.GetCompletionsRequest:
    msg = chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.Content(text="hi")])
    return chat_pb2.GetCompletionsRequest(model=model, messages=[msg])


def grpc_chat(model: str = "grok-4") -> bytes:
    return grpc_frame(grpc_req(model).SerializeToString())


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    ca: Path
    log: Path
    tls: bool

    def ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def h2(self, sni: str | None = US, **kw: object) -> H2Client:
        return H2Client(self.port, sni=sni, ctx=self.ctx() if self.tls else None, **kw)  # type: ignore[arg-type]

    def channel(self, name: str = US, authority: str | None = None) -> grpc.Channel:
        opts = [("grpc.ssl_target_name_override", name), ("grpc.default_authority", authority or name)]
        if not self.tls:
            return grpc.insecure_channel(f"127.0.0.1:{self.port}", options=opts[1:])
        creds = grpc.ssl_channel_credentials(self.ca.read_bytes())
        return grpc.secure_channel(f"127.0.0.1:{self.port}", creds, options=opts)


def start(tmp_path: Path, tls: bool) -> Gateway:
    ca, cert, key = make_certs(tmp_path)
    # No drain period before the listener closes (SIGTERM's /readyz-503 window is tested with the edge
    # limits): here the GOAWAY must come while the open streams are still running.
    (tmp_path / "gateway.toml").write_text(CONFIG.replace("[gateway]\n", "[gateway]\ndrain_s = 0\n", 1))
    port = free_port()
    cmd = ["serve", "--config", str(tmp_path / "gateway.toml"), "--listen", f"127.0.0.1:{port}"]
    if tls:
        cmd += ["--tls-cert", str(cert), "--tls-key", str(key)]
    log = tmp_path / "gateway.log"
    proc = spawn(cmd, log, {"REGIONGATE_DEMO_API_KEY": DEMO_KEY})
    gw = Gateway(proc, port, ca, log, tls)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log.read_text()}")
        try:
            c = gw.h2(sni="api.x.ai")
            c.close()
            return gw
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stop(gw: Gateway) -> None:
    Proc(gw.proc, gw.port, gw.log).stop()


@pytest.fixture(scope="module")
def tls_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start(tmp_path_factory.mktemp("front-tls"), tls=True)
    yield gw
    stop(gw)


@pytest.fixture(scope="module")
def clear_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start(tmp_path_factory.mktemp("front-clear"), tls=False)
    yield gw
    stop(gw)


@pytest.fixture
def proxy(tls_gw: Gateway) -> Iterator[ConnectProxy]:
    p = ConnectProxy(tls_gw.port)
    yield p
    p.close()


def verified(receipt: str | bytes, gw: Gateway, proxy: ConnectProxy) -> dict[str, object]:
    """The receipt's claims, checked against the gateway's published keys: alone in its batch a receipt has
    three parts, signed with others four (which one a response gets depends on what finished beside it)."""
    token = receipt.decode() if isinstance(receipt, bytes) else receipt
    jwks = httpx.get(f"https://{US}{receipts.JWKS_PATH}", verify=gw.ctx(), proxy=f"http://127.0.0.1:{proxy.port}")
    return receipts.verify(token, jwks.json())


# --- ALPN and the protocol table ------------------------------------------------------------------------------
@pytest.mark.parametrize(("offer", "chosen"), [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"), ([], None)])
def test_alpn_offers_h2_and_http11(tls_gw: Gateway, offer: list[str], chosen: str | None) -> None:
    ctx = tls_gw.ctx()
    if offer:
        ctx.set_alpn_protocols(offer)
    import socket

    with (
        socket.create_connection(("127.0.0.1", tls_gw.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=US) as s,
    ):
        assert s.selected_alpn_protocol() == chosen


def test_http11_and_http2_reach_the_rest_app_with_the_same_headers(tls_gw: Gateway, proxy: ConnectProxy) -> None:
    seen = {}
    for http2 in (False, True):
        with httpx.Client(http2=http2, verify=tls_gw.ctx(), proxy=f"http://127.0.0.1:{proxy.port}") as c:
            r = c.post(f"https://{US}/v1/chat/completions", content=chat(), headers={"authorization": f"Bearer {DEMO_KEY}"})
        assert r.status_code == 200, r.text
        seen[r.http_version] = r
    assert set(seen) == {"HTTP/1.1", "HTTP/2"}
    for r in seen.values():
        assert r.headers["x-regiongate-region"] == "us-east-1"
        assert r.headers["x-regiongate-route"] == "pinned"
        assert r.headers["x-request-id"].startswith("req_")
        assert verified(r.headers["x-regiongate-receipt"], tls_gw, proxy)["region"] == "us-east-1"
        assert "in us-east-1" in r.json()["choices"][0]["message"]["content"]


def test_grpc_and_rest_streams_share_one_connection(tls_gw: Gateway, proxy: ConnectProxy) -> None:
    """Per stream, by content-type: a gRPC call and a REST request on the same HTTP/2 connection."""
    c = tls_gw.h2()
    try:
        g = c.request("/xai_api.Chat/GetCompletion", US, grpc_chat(), [*GRPC_CT, *AUTH, (b"grpc-timeout", b"20S")])
        r = c.request("/v1/chat/completions", US, chat(), [*JSON_CT, *AUTH])
        c.pump(lambda: c.replies[g].done and c.replies[r].done)
        grep, rest = c.replies[g], c.replies[r]
        assert grep.headers[b"content-type"].startswith(b"application/grpc")
        assert grep.headers[b"x-regiongate-region"] == b"us-east-1"
        assert grep.headers[b"x-regiongate-route"] == b"pinned"
        assert grep.headers[b"x-request-id"].startswith(b"req_")
        assert verified(grep.headers[b"x-regiongate-receipt"], tls_gw, proxy)["region"] == "us-east-1"
        assert grep.trailers[b"grpc-status"] == b"0", grep.trailers
        out = chat_pb2.GetChatCompletionResponse.FromString(bytes(grep.data[5:]))
        assert "in us-east-1" in out.outputs[0].message.content
        assert rest.headers[b":status"] == b"200"
        assert rest.headers[b"x-regiongate-region"] == b"us-east-1"
        assert verified(rest.headers[b"x-regiongate-receipt"], tls_gw, proxy)["region"] == "us-east-1"
        assert b"in us-east-1" in rest.data
    finally:
        c.close()


# --- SNI vs Host / :authority ---------------------------------------------------------------------------------
def test_authority_other_than_sni_is_refused_on_every_protocol(tls_gw: Gateway, proxy: ConnectProxy) -> None:
    c = tls_gw.h2(sni=US)
    try:
        r = c.request("/v1/chat/completions", "eu-west-1.api.x.ai", chat(), [*JSON_CT, *AUTH])
        g = c.request("/xai_api.Chat/GetCompletion", "api.x.ai", grpc_chat(), [*GRPC_CT, *AUTH])
        ok = c.request("/v1/chat/completions", f"{US}:443", chat(), [*JSON_CT, *AUTH])  # a port is not another host
        c.pump(lambda: all(c.replies[s].done for s in (r, g, ok)))
        assert c.replies[r].headers[b":status"] == b"421"
        assert json.loads(c.replies[r].data)["error"]["code"] == "misdirected_request"
        assert c.replies[g].headers[b"grpc-status"] == b"9"  # FAILED_PRECONDITION, trailers-only
        assert c.replies[g].headers[b"x-regiongate-error-code"] == b"misdirected_request"
        assert c.replies[ok].headers[b":status"] == b"200"
    finally:
        c.close()
    # HTTP/1.1: the Host header against the server name
    with httpx.Client(http2=False, verify=tls_gw.ctx(), proxy=f"http://127.0.0.1:{proxy.port}") as h:
        r1 = h.post(f"https://{US}/v1/chat/completions", content=chat(), headers={"host": "api.x.ai", **dict(auth())})
    assert r1.status_code == 421 and r1.json()["error"]["code"] == "misdirected_request"
    # grpcio: TLS name us-east-1, :authority eu-west-1
    with tls_gw.channel(US, authority="eu-west-1.api.x.ai") as ch, pytest.raises(grpc.RpcError) as e:
        chat_pb2_grpc.ChatStub(ch).GetCompletion(grpc_req(), metadata=auth(), timeout=20)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_grpc_authority_with_the_default_port_is_the_tls_name(tls_gw: Gateway) -> None:
    """``us-east-1.api.x.ai:443`` names the host of the TLS connection: served, not taken for a second host."""
    c = tls_gw.h2()
    try:
        calls = [
            c.request("/xai_api.Chat/GetCompletion", a, grpc_chat(), [*GRPC_CT, *AUTH]) for a in (f"{US}:443", US)
        ]
        c.pump(lambda: all(c.replies[s].done for s in calls))
        for s in calls:
            assert c.replies[s].trailers.get(b"grpc-status") == b"0", (c.replies[s].headers, c.replies[s].trailers)
            assert c.replies[s].headers[b"x-regiongate-region"] == b"us-east-1"
    finally:
        c.close()


def test_without_sni_the_authority_alone_decides(tls_gw: Gateway) -> None:
    """A client that dialled an IP address sends no server name: nothing to compare, :authority routes."""
    ctx = tls_gw.ctx()
    ctx.check_hostname = False  # the certificate names api.x.ai, the client dialled 127.0.0.1
    c = H2Client(tls_gw.port, sni=None, ctx=ctx)
    try:
        r = c.request("/v1/chat/completions", "eu-west-1.api.x.ai", chat(), [*JSON_CT, *AUTH])
        c.pump(lambda: c.replies[r].done)
        assert c.replies[r].headers[b":status"] == b"200"
        assert c.replies[r].headers[b"x-regiongate-region"] == b"eu-west-1"
    finally:
        c.close()


def test_a_protocol_violation_closes_that_connection_only(clear_gw: Gateway) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", clear_gw.port), timeout=10) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\x00" * 4)
        got = b""
        while chunk := s.recv(65536):  # WINDOW_UPDATE of 0 on the connection: a connection error
            got += chunk
        assert b"\x07\x00\x00\x00\x00\x00" in got  # a GOAWAY frame (type 7 on stream 0), then close
    with socket.create_connection(("127.0.0.1", clear_gw.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01garbage\r\n\r\n")  # not HTTP at all: uvicorn answers 400
        assert s.recv(65536).startswith(b"HTTP/1.1 400")
    c = clear_gw.h2(sni=None)
    try:
        r = c.request("/healthz", "localhost", method="GET")
        c.pump(lambda: c.replies[r].done)
        assert c.replies[r].headers[b":status"] == b"200"
    finally:
        c.close()


def auth() -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {DEMO_KEY}")]


# --- real HTTP/2 for REST ---------------------------------------------------------------------------------------
def test_concurrent_sse_streams_and_one_reset_leaves_the_others(tls_gw: Gateway) -> None:
    c = tls_gw.h2()
    try:
        sids = [c.request("/v1/chat/completions", US, chat("grok-3-mini", stream=True), [*JSON_CT, *AUTH]) for _ in range(4)]
        # All four are streaming at once on this one connection before any has finished.
        c.pump(lambda: all(c.replies[s].chunks >= 2 for s in sids))
        assert not any(c.replies[s].done for s in sids)
        victim, others = sids[0], sids[1:]
        c.reset(victim)
        c.pump(lambda: all(c.replies[s].done for s in others), timeout=60)
        for s in others:
            r = c.replies[s]
            assert r.reset is None and r.headers[b":status"] == b"200"
            assert r.data.rstrip().endswith(b"data: [DONE]")
            assert r.headers[b"content-type"] == b"text/event-stream"
        # The reset stream's capacity lease was released: nothing of grok-3-mini is in use any more.
        m = c.request("/metrics", US, method="GET")
        c.pump(lambda: c.replies[m].done)
        assert 'regiongate_capacity_in_use{model="grok-3-mini",region="us-east-1"} 0.0' in c.replies[m].data.decode()
    finally:
        c.close()


def test_flow_control_holds_a_stream_and_not_its_neighbours(tls_gw: Gateway) -> None:
    """A client window of 1 KiB: the server sends 1 KiB of a large answer and waits for WINDOW_UPDATE, while
    another stream on the connection, with its own window, completes (h2 would raise if the server overran)."""
    c = tls_gw.h2(window=1024, auto_ack=False)
    try:
        big = c.request("/openapi.json", US, method="GET")
        c.pump(lambda: len(c.replies[big].data) >= 1024)
        time.sleep(0.3)  # give an overrunning server the chance to overrun (h2 raises FlowControlError)
        c.pump(lambda: True)
        assert len(c.replies[big].data) == 1024 and not c.replies[big].done
        small = c.request("/healthz", US, method="GET")
        c.pump(lambda: c.replies[small].done)
        assert c.replies[small].headers[b":status"] == b"200"
        assert not c.replies[big].done
        c.auto_ack = True
        c.ack(big, 1024)
        c.pump(lambda: c.replies[big].done)
        assert json.loads(c.replies[big].data)["openapi"].startswith("3.")
    finally:
        c.close()


def test_openai_sdk_over_http2(tls_gw: Gateway, proxy: ConnectProxy) -> None:
    versions: list[str] = []
    http = httpx.Client(
        http2=True,
        verify=tls_gw.ctx(),
        proxy=f"http://127.0.0.1:{proxy.port}",
        event_hooks={"response": [lambda r: versions.append(r.http_version)]},
    )
    client = openai.OpenAI(api_key=DEMO_KEY, base_url=f"https://{US}/v1", http_client=http, max_retries=0)
    try:
        done = client.chat.completions.create(model="grok-4", messages=[{"role": "user", "content": "hi"}])
        assert "in us-east-1" in (done.choices[0].message.content or "")
        parts = [
            ch.choices[0].delta.content or ""
            for ch in client.chat.completions.create(
                model="grok-4", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            if ch.choices
        ]
        assert len(parts) > 3 and "us-east-1" in "".join(parts)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="grok-404", messages=[{"role": "user", "content": "hi"}])
    finally:
        client.close()
    assert versions and set(versions) == {"HTTP/2"}


def test_curl_negotiates_http2(tls_gw: Gateway, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is missing (.ci/run installs it)")
        pytest.skip("no curl")
    out = subprocess.run(
        [curl, "-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "--cacert", str(tls_gw.ca),
         "--resolve", f"{US}:{tls_gw.port}:127.0.0.1", f"https://{US}:{tls_gw.port}/v1/chat/completions",
         "-H", f"Authorization: Bearer {DEMO_KEY}", "-H", "Content-Type: application/json", "-d", chat().decode()],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.stdout == "2 200", out.stderr


# --- gRPC keeps grpc core's handling ---------------------------------------------------------------------------
def test_grpc_deadline_cancellation_compression_and_bin_metadata(tls_gw: Gateway) -> None:
    md = [("authorization", f"Bearer {DEMO_KEY}"), ("x-trace-bin", b"\x00\xff\x01")]
    with tls_gw.channel() as ch:
        stub = chat_pb2_grpc.ChatStub(ch)
        req = grpc_req()
        # compression (gzip request and response) and binary metadata pass through to grpc core
        out, call = stub.GetCompletion.with_call(req, metadata=md, timeout=20, compression=grpc.Compression.Gzip)
        assert "in us-east-1" in out.outputs[0].message.content
        assert dict(call.initial_metadata())["x-regiongate-route"] == "pinned"
        # deadline: grpc core ends a slow stream at its deadline
        slow = grpc_req("grok-3-mini")
        with pytest.raises(grpc.RpcError) as e:
            for _ in stub.GetCompletionChunk(slow, metadata=md, timeout=0.5):
                pass
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # cancellation: the client cancels mid-stream; the lease is released
        it = stub.GetCompletionChunk(slow, metadata=md, timeout=30)
        next(it)
        it.cancel()
    with httpx.Client(verify=tls_gw.ctx()) as h:
        deadline = time.monotonic() + 10
        while True:
            text = h.get(f"https://127.0.0.1:{tls_gw.port}/metrics", extensions={"sni_hostname": "api.x.ai"},
                         headers={"host": "api.x.ai"}).text
            if 'regiongate_capacity_in_use{model="grok-3-mini",region="us-east-1"} 0.0' in text:
                break
            assert time.monotonic() < deadline, "cancelled gRPC streams kept their leases"
            time.sleep(0.05)


# --- cleartext: h2c prior knowledge and HTTP/1.1 on one port -----------------------------------------------------
def test_cleartext_port_serves_http11_h2c_and_grpc(clear_gw: Gateway) -> None:
    base = f"http://127.0.0.1:{clear_gw.port}"
    with httpx.Client() as h1:
        r = h1.post(f"{base}/v1/chat/completions", content=chat(), headers={"host": "us-east-1.localhost", **dict(auth())})
    assert r.http_version == "HTTP/1.1" and r.headers["x-regiongate-region"] == "us-east-1"
    with httpx.Client(http1=False, http2=True) as h2c:  # prior knowledge
        r = h2c.post(f"{base}/v1/chat/completions", content=chat(), headers={"host": "us-east-1.localhost", **dict(auth())})
    assert r.http_version == "HTTP/2" and r.headers["x-regiongate-region"] == "us-east-1"
    for authority, region in (("us-east-1.localhost", "us-east-1"), ("localhost", "eu-west-1")):
        with clear_gw.channel(authority) as ch:
            out = chat_pb2_grpc.ChatStub(ch).GetCompletion(
                grpc_req(), metadata=auth(), timeout=20
            )
        assert f"in {region}" in out.outputs[0].message.content


# --- drain ---------------------------------------------------------------------------------------------------------
def test_sigterm_sends_goaway_and_lets_open_streams_finish(tmp_path: Path) -> None:
    gw = start(tmp_path, tls=True)
    try:
        c = gw.h2()
        rest = c.request("/v1/chat/completions", US, chat("grok-3-mini", stream=True), [*JSON_CT, *AUTH])
        call = c.request("/xai_api.Chat/GetCompletionChunk", US, grpc_chat("grok-3-mini"), [*GRPC_CT, *AUTH])
        c.pump(lambda: c.replies[rest].chunks >= 1 and c.replies[call].chunks >= 1)
        gw.proc.send_signal(signal.SIGTERM)
        c.pump(lambda: c.goaway is not None)
        assert c.goaway is not None and c.goaway.error_code == 0
        assert c.goaway.last_stream_id == call
        late = c.request("/healthz", US, method="GET")
        c.pump(lambda: c.replies[rest].done and c.replies[call].done and c.replies[late].done, timeout=60)
        assert c.replies[late].reset == 7  # REFUSED_STREAM: safe to retry elsewhere
        assert c.replies[rest].data.rstrip().endswith(b"data: [DONE]")
        assert c.replies[call].trailers.get(b"grpc-status") == b"0", (c.replies[call], gw.log.read_text()[-3000:])
        c.close()
        assert gw.proc.wait(30) == 0
    finally:
        stop(gw)
