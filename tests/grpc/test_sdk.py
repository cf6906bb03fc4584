"""The xAI SDK (unchanged, real gRPC) against a gateway process: chat, models, auth, errors, capacity.

Regional endpoints are addressed the way a real client does, through the authority it dials:
``api_host="localhost:P"`` plus ``grpc.default_authority = "<region>.localhost"``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from xai_sdk import AsyncClient, Client
from xai_sdk.chat import user
from xai_sdk.proto import chat_pb2, chat_pb2_grpc

from tests.support.procs import DEMO_KEY, Proc, free_port, spawn, wait_http

EU_KEY = "rg-test-eu-fenced-key-0123456789"
LIMITED_KEY = "rg-test-limited-key-0123456789"
FAST = '{ kind = "simulated", ttft_ms = 5, tokens_per_s = 4000 }'
CONFIG = f"""
[gateway]
lat = 39.04
lon = -77.49
base_domains = ["api.x.ai"]
retry_after_s = 2

# The engines' own load reports, read every 2 s, lag behind a freed slot: with one slot (slow-model) a
# reading from the previous test would refuse the next. Scraping is tested in tests/state and tests/e2e.
[load]
scrape_interval_s = 0

# The flaky model's dead backend must still be in the plan when its test runs, however late (a loaded
# machine): with probes on, two failed probes 10 s after start take it out, and the route is then
# ``nearest``, not ``failover``. Probes are tested in tests/health and tests/e2e.
[health]
probe_interval_s = 0

[[regions]]
id = "us-east-1"
lat = 39.04
lon = -77.49
zone = "us"

[[regions]]
id = "us-west-2"
lat = 45.84
lon = -119.70
zone = "us"

[[regions]]
id = "eu-west-1"
lat = 53.35
lon = -6.26
zone = "eu"

[[deployments]]
region = "us-east-1"
models = ["grok-4", "grok-code-fast-1"]
backends = [{FAST}]

[[deployments]]
region = "eu-west-1"
models = ["grok-4"]
backends = [{FAST}]

[[deployments]]
region = "us-west-2"
models = ["slow-model"]
limit = 1
backends = [{{ kind = "simulated", ttft_ms = 5, tokens_per_s = 2 }}]

[[deployments]]
region = "us-east-1"
models = ["flaky"]
backends = [{{ kind = "http", url = "http://127.0.0.1:1/v1" }}, {FAST}]

[[teams]]
name = "demo"
keys = [{{ id = "demo", env = "REGIONGATE_DEMO_API_KEY" }}]

[[teams]]
name = "eu-team"
keys = [{{ id = "eu", env = "REGIONGATE_TEST_EU_KEY", zone = "eu" }}]

[[teams]]
name = "limited"
keys = [{{ id = "limited", env = "REGIONGATE_TEST_LIMITED_KEY" }}]

[limits.teams.limited]
team = {{ requests_per_minute = 1 }}
"""


@dataclass
class Gateway:
    proc: Proc
    grpc_port: int

    @property
    def host(self) -> str:
        return f"localhost:{self.grpc_port}"

    def client(self, authority: str | None = None, key: str = DEMO_KEY) -> Client:
        opts = [("grpc.default_authority", authority)] if authority else None
        return Client(api_key=key, api_host=self.host, channel_options=opts)

    def aclient(self, authority: str | None = None) -> AsyncClient:
        opts = [("grpc.default_authority", authority)] if authority else None
        return AsyncClient(api_key=DEMO_KEY, api_host=self.host, channel_options=opts)

    def requests(self, **labels: str) -> float:
        """Sum of regiongate_requests_total over the series matching ``labels``."""
        text = httpx.get(self.proc.url + "/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("regiongate_requests_total{"):
                found = dict(re.findall(r'(\w+)="([^"]*)"', line))
                if all(found.get(k) == v for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def connections(self) -> int:
        text = httpx.get(self.proc.url + "/metrics", timeout=5).text
        return int(float(re.search(r"^regiongate_grpc_connections (\S+)$", text, re.M).group(1)))  # type: ignore[union-attr]

    def in_use(self, model: str, region: str) -> int:
        r = httpx.get(
            self.proc.url + "/v1/regions", headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=5
        )
        for reg in r.json()["data"]:
            for m in reg["models"]:
                if reg["id"] == region and m["id"] == model:
                    return int(m["capacity"]["in_use"])
        raise AssertionError(f"{model} not in {region}")

    def wait_in_use(self, model: str, region: str, want: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.in_use(model, region) == want:
                return
            time.sleep(0.05)
        raise AssertionError(f"in_use of {model}/{region} stayed {self.in_use(model, region)}, wanted {want}")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp: Path = tmp_path_factory.mktemp("grpc")
    (tmp / "gateway.toml").write_text(CONFIG)
    port, grpc_port = free_port(), free_port()
    cmd = ["serve", "--config", str(tmp / "gateway.toml"), "--port", str(port), "--grpc-port", str(grpc_port)]
    env = {
        "REGIONGATE_DEMO_API_KEY": DEMO_KEY,
        "REGIONGATE_TEST_EU_KEY": EU_KEY,
        "REGIONGATE_TEST_LIMITED_KEY": LIMITED_KEY,
    }
    proc = Proc(spawn(cmd, tmp / "gateway.log", env), port, tmp / "gateway.log")
    try:
        wait_http(proc.url + "/healthz", proc.proc, log=proc.log)  # gRPC listens before REST starts
        yield Gateway(proc, grpc_port)
    finally:
        proc.stop()


def ask(client: Client | AsyncClient, model: str = "grok-4", **kw: Any) -> Any:
    chat = client.chat.create(model=model, **kw)
    chat.append(user("What is the meaning of life?"))
    return chat


def check(resp: Any, region: str) -> None:
    assert f"in {region} " in resp.content, resp.content
    assert resp.finish_reason == "REASON_STOP"
    assert resp.role == "ROLE_ASSISTANT"
    u = resp.usage
    assert u.completion_tokens > 0 and u.prompt_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert resp.id.startswith("chatcmpl-") and resp.system_fingerprint == f"fp_sim_{region}"


@pytest.mark.parametrize(("authority", "region"), [(None, "us-east-1"), ("eu-west-1.localhost", "eu-west-1")])
def test_sync_sample_and_stream(gw: Gateway, authority: str | None, region: str) -> None:
    client = gw.client(authority)
    try:
        check(ask(client).sample(), region)
        with pytest.warns(PendingDeprecationWarning):  # still the SDK's way to ask for n outputs
            batch = ask(client).sample_batch(2)
        assert len(batch) == 2 and all(f"in {region} " in r.content for r in batch)
        last, pieces = None, []
        for resp, chunk in ask(client).stream():
            last = resp
            pieces.append(chunk.content)
        assert last is not None and len(pieces) > 3 and "".join(pieces) == last.content
        check(last, region)
    finally:
        client.close()


@pytest.mark.parametrize(("authority", "region"), [(None, "us-east-1"), ("eu-west-1.api.x.ai", "eu-west-1")])
async def test_async_sample_and_stream(gw: Gateway, authority: str | None, region: str) -> None:
    client = gw.aclient(authority)
    try:
        check(await ask(client).sample(), region)
        last = None
        async for resp, _chunk in ask(client).stream():
            last = resp
        assert last is not None
        check(last, region)
    finally:
        await client.close()


def test_initial_metadata_names_region_route_and_request(gw: Gateway) -> None:
    opts = [("grpc.default_authority", "eu-west-1.localhost")]
    with grpc.insecure_channel(gw.host, options=opts) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)
        md = (("authorization", f"Bearer {DEMO_KEY}"), ("x-request-id", "req-test-1"))
        req = chat_pb2.GetCompletionsRequest(
            model="grok-4", messages=[chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[{"text": "hi"}])]
        )
        _, call = stub.GetCompletion.with_call(req, metadata=md)
        got = dict(call.initial_metadata())
        assert got["x-regiongate-region"] == "eu-west-1" and got["x-regiongate-route"] == "pinned"
        assert got["x-client-request-id"] == "req-test-1"  # echoed; the signed id is the gateway's own
        assert got["x-request-id"].startswith("req_") and got["x-request-id"] != "req-test-1"
        stream = stub.GetCompletionChunk(req, metadata=md)
        chunks = list(stream)
        assert dict(stream.initial_metadata())["x-regiongate-region"] == "eu-west-1"
        assert all(o.delta.role == chat_pb2.ROLE_ASSISTANT for c in chunks for o in c.outputs)
        assert chunks[-1].usage.total_tokens > 0 and all(c.id == chunks[0].id for c in chunks)
        # A backend that refuses the connection is skipped before the first message: failover.
        with grpc.insecure_channel(gw.host) as global_channel:
            flaky = req.__class__(model="flaky", messages=req.messages)
            stream = chat_pb2_grpc.ChatStub(global_channel).GetCompletionChunk(flaky, metadata=md)
            text = "".join(o.delta.content for c in stream for o in c.outputs)
            got = dict(stream.initial_metadata())
            assert got["x-regiongate-route"] == "failover" and got["x-regiongate-region"] == "us-east-1"
            assert "in us-east-1 " in text


def test_models_list_and_get(gw: Gateway) -> None:
    everywhere, regional = gw.client(), gw.client("eu-west-1.localhost")
    try:
        names = {m.name for m in everywhere.models.list_language_models()}
        assert names == {"grok-4", "grok-code-fast-1", "slow-model", "flaky"}
        assert [m.name for m in regional.models.list_language_models()] == ["grok-4"]
        assert everywhere.models.get_language_model("grok-code-fast-1").name == "grok-code-fast-1"
        with pytest.raises(grpc.RpcError) as e:
            regional.models.get_language_model("grok-code-fast-1")
        assert e.value.code() is grpc.StatusCode.NOT_FOUND and "offered in: us-east-1" in e.value.details()
    finally:
        everywhere.close()
        regional.close()


def test_api_key_info(gw: Gateway) -> None:
    client = gw.client()
    try:
        info = client.auth.get_api_key_info()
        assert info.team_id == "demo" and info.api_key_id == "demo"
        assert DEMO_KEY not in info.redacted_api_key and info.redacted_api_key.endswith(DEMO_KEY[-4:])
    finally:
        client.close()


def error_of(client: Client, model: str = "grok-4", **kw: Any) -> grpc.RpcError:
    try:
        with pytest.raises(grpc.RpcError) as e:
            ask(client, model, **kw).sample()
        return e.value
    finally:
        client.close()


def test_errors_map_to_grpc_status_codes(gw: Gateway) -> None:
    e = error_of(gw.client(key="rg-wrong"))
    assert e.code() is grpc.StatusCode.UNAUTHENTICATED and "Incorrect API key" in e.details()
    e = error_of(gw.client("eu-west-1.localhost"), "grok-code-fast-1")
    assert e.code() is grpc.StatusCode.NOT_FOUND
    assert "in region eu-west-1" in e.details() and "offered in: us-east-1" in e.details()
    e = error_of(gw.client("mars-1.localhost"))
    assert e.code() is grpc.StatusCode.NOT_FOUND and "'mars-1.localhost' names no region" in e.details()
    e = error_of(gw.client("us-east-1.localhost", key=EU_KEY))
    assert e.code() is grpc.StatusCode.PERMISSION_DENIED and "data zone eu" in e.details()
    limited = gw.client(key=LIMITED_KEY)
    try:
        ask(limited).sample()
    finally:
        limited.close()
    e = error_of(gw.client(key=LIMITED_KEY))
    assert e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "retry-after" in dict(e.trailing_metadata())
    e = error_of(gw.client(), max_tokens=0)
    assert e.code() is grpc.StatusCode.INVALID_ARGUMENT and "max_tokens" in e.details()
    client = gw.client()
    try:
        with pytest.raises(grpc.RpcError) as err:
            client.chat.get_stored_completion("resp_1")
        assert err.value.code() is grpc.StatusCode.NOT_FOUND and "'resp_1'" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            client.chat.compact_context(model="grok-4", messages=[user("hi")])
        assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert "CompactContext" in err.value.details() and "GetStoredCompletion" in err.value.details()
    finally:
        client.close()


def test_capacity_refusal_is_not_retried_and_cancel_frees_the_lease(gw: Gateway) -> None:
    opts = [("grpc.default_authority", "us-west-2.localhost")]
    md = (("authorization", f"Bearer {DEMO_KEY}"),)
    req = chat_pb2.GetCompletionsRequest(
        model="slow-model",
        messages=[chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[{"text": "hold"}])],
    )
    with grpc.insecure_channel(gw.host, options=opts) as channel:
        holder = chat_pb2_grpc.ChatStub(channel).GetCompletionChunk(req, metadata=md)
        next(holder)  # the only slot of slow-model is now leased
        assert gw.in_use("slow-model", "us-west-2") == 1
        for authority, code in (("us-west-2.localhost", "region_unavailable"), (None, "capacity_exhausted")):
            before = gw.requests(model="slow-model", status="503")
            e = error_of(gw.client(authority), "slow-model")
            assert e.code() is grpc.StatusCode.UNAVAILABLE
            trailers = dict(e.trailing_metadata())
            assert trailers["grpc-retry-pushback-ms"] == "-1" and trailers["x-regiongate-error-code"] == code
            assert trailers["retry-after"] == "2" and "us-west-2" in e.details()
            assert gw.requests(model="slow-model", status="503") == before + 1  # one attempt, no retries
        cancelled = gw.requests(model="slow-model", region="us-west-2", status="499")
        holder.cancel()
        gw.wait_in_use("slow-model", "us-west-2", 0)
        assert gw.requests(model="slow-model", region="us-west-2", status="499") == cancelled + 1


async def test_async_stream_cancel_frees_the_lease(gw: Gateway) -> None:
    client = gw.aclient("us-west-2.localhost")
    started = asyncio.Event()

    async def consume() -> None:
        async for _resp, _chunk in ask(client, "slow-model").stream():
            started.set()

    await asyncio.to_thread(gw.wait_in_use, "slow-model", "us-west-2", 0)  # the slot is free to take
    task = asyncio.create_task(consume())
    try:
        first = asyncio.ensure_future(started.wait())
        await asyncio.wait({first, task}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        if task.done():  # the stream ended or failed before its first chunk: say how
            raise AssertionError(f"the stream ended before its first chunk: {task.exception()!r}")
        assert first.done(), "no first chunk within 120 s"
        assert await asyncio.to_thread(gw.in_use, "slow-model", "us-west-2") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(gw.wait_in_use, "slow-model", "us-west-2", 0)
    finally:
        task.cancel()
        await client.close()


def h2_frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


def test_a_connection_that_mixes_hosts_is_refused_not_misrouted(gw: Gateway) -> None:
    """HTTP/2 allows one connection to carry requests for two hosts; gRPC clients do not do that, and
    when a client does, the gateway refuses the later calls instead of routing them by the first host."""
    import socket

    import hpack
    from xai_sdk.proto import models_pb2

    enc, dec = hpack.Encoder(), hpack.Decoder()
    body = models_pb2.GetModelRequest(name="grok-4").SerializeToString()
    message = b"\x00" + len(body).to_bytes(4, "big") + body

    def call(sock: socket.socket, stream: int, authority: str) -> dict[bytes, bytes]:
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/xai_api.Models/GetLanguageModel"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("authorization", f"Bearer {DEMO_KEY}"),
        ]
        sock.sendall(h2_frame(0x1, 0x4, stream, enc.encode(headers)) + h2_frame(0x0, 0x1, stream, message))
        got: dict[bytes, bytes] = {}
        buf = b""
        for _ in range(100):  # bounded: a handful of frames answer one call
            while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                data = sock.recv(65536)
                assert data, "connection closed"
                buf += data
            length, ftype, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
            sid, payload, buf = (
                int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF,
                buf[9 : 9 + length],
                buf[9 + length :],
            )
            if ftype == 0x4 and not flags & 0x1:
                sock.sendall(h2_frame(0x4, 0x1, 0, b""))  # ack the server's SETTINGS
            if ftype == 0x1:
                block = dict(dec.decode(payload, raw=True))
                if sid == stream:
                    got.update(block)
                    if flags & 0x1:
                        return got
        raise AssertionError("no trailers")

    before = gw.connections()
    with socket.create_connection(("127.0.0.1", gw.grpc_port), timeout=10) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(0x4, 0, 0, b""))
        first = call(sock, 1, "eu-west-1.localhost")
        assert first[b"grpc-status"] == b"0"
        assert gw.connections() == before + 1
        second = call(sock, 3, "us-east-1.localhost")
        assert second[b"grpc-status"] == str(grpc.StatusCode.FAILED_PRECONDITION.value[0]).encode()
        assert b"two hosts" in second[b"grpc-message"]
    deadline = time.monotonic() + 60
    while gw.connections() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.connections() == before
