"""The xAI SDK's services beyond chat against a gateway process: tokenize, embed, images, the embedding and
image model lists, deferred completions (with a gateway restart between defer and fetch), on the global
and regional endpoints, with the residency refusals."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from xai_sdk import Client
from xai_sdk.chat import user
from xai_sdk.proto import chat_pb2, chat_pb2_grpc, deferred_pb2, embed_pb2, embed_pb2_grpc

from regiongate.pipeline.receipts import unverified_claims
from tests.support.procs import DEMO_KEY, Proc, free_port, spawn, wait_http
from tests.support.worlds import DEMO_REGIONS, http_backend, world

EU_KEY = "rg-test-eu-fenced-key-0123456789"
FAST = '{ kind = "simulated", ttft_ms = 5, tokens_per_s = 4000 }'
TWO = {r: DEMO_REGIONS[r] for r in ("us-east-1", "eu-west-1")}


def config(sim_url: str) -> str:
    """us-east-1 and eu-west-1 with grok-4; embedding models in both, image and video models in us-east-1
    only; a backend without a tokenizer; an EU-fenced team."""
    extra = f"""
[[deployments]]
region = "us-east-1"
models = ["grok-embed", "grok-imagine-image", "grok-imagine-video"]
backends = [{FAST}]

[[deployments]]
region = "eu-west-1"
models = ["grok-embed"]
backends = [{FAST}]

[[deployments]]
region = "us-east-1"
models = ["no-tokenizer"]
backends = [{http_backend(sim_url + "/v1")}]

[models.grok-embed]
kind = "embedding"
[models.grok-imagine-image]
kind = "image"
[models.grok-imagine-video]
kind = "video"

[[teams]]
name = "eu-team"
keys = [{{ id = "eu", env = "REGIONGATE_TEST_EU_KEY", zone = "eu" }}]
"""
    return world({r: [FAST] for r in TWO}, regions=TWO, gateway='base_domains = ["api.x.ai"]', extra=extra)


class Gw:
    def __init__(self, tmp: Path, sim_url: str) -> None:
        self.tmp = tmp
        (tmp / "gateway.toml").write_text(config(sim_url))
        self.grpc_port = free_port()
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> None:
        port, self.grpc_port = free_port(), free_port()  # new ports after a restart: no rebind race
        cmd = [
            "serve",
            "--config",
            str(self.tmp / "gateway.toml"),
            "--port",
            str(port),
            "--grpc-port",
            str(self.grpc_port),
        ]
        env = {
            "REGIONGATE_DEMO_API_KEY": DEMO_KEY,
            "REGIONGATE_TEST_EU_KEY": EU_KEY,
            "REGIONGATE_DATA_DIR": str(self.tmp / "data"),
        }
        log = self.tmp / f"gateway-{self.starts}.log"
        self.starts += 1
        self.proc = Proc(spawn(cmd, log, env), port, log)
        wait_http(self.proc.url + "/healthz", self.proc.proc, log=log)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def client(self, authority: str | None = None, key: str = DEMO_KEY) -> Client:
        opts = (
            [("grpc.default_authority", authority), ("grpc.enable_retries", 0)]
            if authority
            else [("grpc.enable_retries", 0)]
        )
        return Client(api_key=key, api_host=f"localhost:{self.grpc_port}", channel_options=opts)

    def channel(self, authority: str | None = None) -> grpc.Channel:
        """A plain channel for the services the SDK has no wrapper for (Embedder) or whose raw RPCs we call."""
        opts = [("grpc.default_authority", authority)] if authority else []
        return grpc.insecure_channel(f"localhost:{self.grpc_port}", options=opts)


def auth(key: str = DEMO_KEY) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    tmp = tmp_path_factory.mktemp("grpc-services")
    sim_port = free_port()
    sim = Proc(
        spawn(["sim-backend", "--region", "us-east-1", "--port", str(sim_port)], tmp / "sim.log"),
        sim_port,
        tmp / "sim.log",
    )
    g = Gw(tmp, sim.url)
    try:
        wait_http(sim.url + "/health", sim.proc, log=sim.log)
        g.start()
        yield g
    finally:
        g.stop()
        sim.stop()


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call()  # type: ignore[operator]
    return e.value.code(), e.value.details()  # type: ignore[attr-defined]


@pytest.mark.parametrize("authority", [None, "eu-west-1.localhost"])
def test_tokenize_text(gw: Gw, authority: str | None) -> None:
    with gw.client(authority) as c:
        toks = c.tokenize.tokenize_text("Hello regional world", model="grok-4")
    assert [t.string_token for t in toks] == ["Hello", " regional", " world"]
    assert all(t.token_id > 0 for t in toks) and toks[1].token_bytes == b" regional"


def test_tokenize_on_a_backend_without_a_tokenizer_is_unimplemented_naming_it(gw: Gw) -> None:
    with gw.client() as c:
        code, details = code_of(lambda: c.tokenize.tokenize_text("hi", model="no-tokenizer"))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "us-east-1/no-tokenizer/0" in details and "tokenization" in details


def test_embed_global_and_regional(gw: Gw) -> None:
    for authority in (None, "eu-west-1.localhost"):
        with gw.channel(authority) as ch:
            stub = embed_pb2_grpc.EmbedderStub(ch)
            req = embed_pb2.EmbedRequest(
                model="grok-embed",
                input=[embed_pb2.EmbedInput(string=s) for s in ("a", "b")],
                encoding_format=embed_pb2.FORMAT_FLOAT,
            )
            resp, call = stub.Embed.with_call(req, metadata=auth())
        md = dict(call.initial_metadata())
        assert md["x-regiongate-region"] == ("eu-west-1" if authority else "us-east-1")
        assert [e.index for e in resp.embeddings] == [0, 1]
        vec = resp.embeddings[0].embeddings[0].float_array
        assert len(vec) == 16 and abs(sum(v * v for v in vec) - 1.0) < 1e-5
        assert resp.usage.num_text_embeddings == 2


def test_image_sample_and_residency(gw: Gw) -> None:
    with gw.client() as c:
        img = c.image.sample("a lighthouse", model="grok-imagine-image", image_format="base64")
        assert img.image.startswith(b"\x89PNG")
        assert c.image.sample("a lighthouse", model="grok-imagine-image").url.startswith("data:image/png")
    with gw.client("eu-west-1.localhost") as c:  # Dublin has no image model: refused, not served elsewhere
        code, details = code_of(lambda: c.image.sample("x", model="grok-imagine-image"))
    assert code == grpc.StatusCode.NOT_FOUND and "us-east-1" in details


def test_model_lists_by_kind(gw: Gw) -> None:
    with gw.client() as c:
        assert [m.name for m in c.models.list_embedding_models()] == ["grok-embed"]
        assert [m.name for m in c.models.list_image_generation_models()] == ["grok-imagine-image"]
        assert c.models.get_embedding_model("grok-embed").name == "grok-embed"
        assert "grok-embed" not in {m.name for m in c.models.list_language_models()}
    with gw.client("eu-west-1.localhost") as c:
        assert c.models.list_image_generation_models() == []
        code, _ = code_of(lambda: c.models.get_image_generation_model("grok-imagine-image"))
        assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("authority", "region"), [(None, "us-east-1"), ("eu-west-1.localhost", "eu-west-1")])
def test_chat_defer(gw: Gw, authority: str | None, region: str) -> None:
    with gw.client(authority) as c:
        chat = c.chat.create(model="grok-4")
        chat.append(user("What is the meaning of life?"))
        resp = chat.defer()
    assert f"in {region} " in resp.content and resp.finish_reason == "REASON_STOP"


def _start(gw: Gw, authority: str | None, key: str = DEMO_KEY) -> str:
    with gw.channel(authority) as ch:
        req = chat_pb2.GetCompletionsRequest(
            model="grok-4",
            messages=[chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.Content(text="hi")])],
        )
        return str(chat_pb2_grpc.ChatStub(ch).StartDeferredCompletion(req, metadata=auth(key)).request_id)


def _get(
    gw: Gw, oid: str, authority: str | None, key: str = DEMO_KEY
) -> tuple[chat_pb2.GetDeferredCompletionResponse, dict[str, str]]:
    with gw.channel(authority) as ch:
        stub = chat_pb2_grpc.ChatStub(ch)
        resp, call = stub.GetDeferredCompletion.with_call(
            deferred_pb2.GetDeferredRequest(request_id=oid), metadata=auth(key)
        )
        return resp, dict(call.initial_metadata())


def _wait_done(
    gw: Gw, oid: str, authority: str | None
) -> tuple[chat_pb2.GetDeferredCompletionResponse, dict[str, str]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        resp, md = _get(gw, oid, authority)
        if resp.status != deferred_pb2.PENDING:
            return resp, md
        time.sleep(0.05)
    raise AssertionError("still pending after 60 s")


def test_deferred_residency_and_receipt(gw: Gw) -> None:
    oid = _start(gw, "eu-west-1.localhost")
    assert oid.startswith("defer_eu-west-1_")
    resp, md = _wait_done(gw, oid, "eu-west-1.localhost")
    assert resp.status == deferred_pb2.DONE and "in eu-west-1 " in resp.response.outputs[0].message.content
    claims = unverified_claims(md["x-regiongate-receipt"])
    assert (claims["object"], claims["region"], claims["stored"], claims["stored_zone"]) == (
        oid,
        "eu-west-1",
        "eu-west-1",
        "eu",
    )
    # The global endpoint finds it by the region its id names; another region's endpoint does not.
    assert _get(gw, oid, None)[0].status == deferred_pb2.DONE
    code, details = code_of(lambda: _get(gw, oid, "us-east-1.localhost"))
    assert code == grpc.StatusCode.NOT_FOUND and oid in details
    # A key fenced to the EU cannot read a US object even through the global endpoint.
    us = _start(gw, "us-east-1.localhost")
    assert code_of(lambda: _get(gw, us, None, EU_KEY))[0] == grpc.StatusCode.NOT_FOUND
    for bad in ("", "x", "defer_nowhere_00", "defer_us-east-1_" + "zz" * 12):  # garbage ids: 404, not 500
        assert code_of(lambda b=bad: _get(gw, b, None))[0] == grpc.StatusCode.NOT_FOUND


def test_deferred_survives_a_gateway_restart(gw: Gw) -> None:
    oid = _start(gw, None)
    gw.stop()  # graceful: the running completion is stored before the process exits
    gw.start()
    resp, md = _wait_done(gw, oid, None)
    assert resp.status == deferred_pb2.DONE and "in us-east-1 " in resp.response.outputs[0].message.content
    assert md["x-regiongate-region"] == "us-east-1"


def test_video_generate_and_extend_deferred(gw: Gw) -> None:
    with gw.client() as c:
        v = c.video.generate(
            prompt="A lake at sunrise",
            model="grok-imagine-video",
            duration=5,
            aspect_ratio="16:9",
            resolution="720p",
        )
        assert v.duration == 5 and v.url.startswith("data:text/plain;base64,")
        longer = c.video.extend(prompt="zoom out", model="grok-imagine-video", video_url=v.url, duration=6)
        assert longer.duration == 6
    with gw.client("eu-west-1.localhost") as c:  # no video model in Dublin: refused at start, not elsewhere
        code, details = code_of(lambda: c.video.generate(prompt="x", model="grok-imagine-video"))
    assert code == grpc.StatusCode.NOT_FOUND and "us-east-1" in details


def test_a_chat_deferred_id_is_not_a_video_id(gw: Gw) -> None:
    oid = _start(gw, None)
    with gw.channel() as ch:
        from xai_sdk.proto import video_pb2, video_pb2_grpc

        stub = video_pb2_grpc.VideoStub(ch)
        req = video_pb2.GetDeferredVideoRequest(request_id=oid)
        code, _ = code_of(lambda: stub.GetDeferredVideo(req, metadata=auth()))
    assert code == grpc.StatusCode.NOT_FOUND


# --- stored xAI chat completions (store_messages, previous_response_id) -----------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("authority", "region"), [(None, "us-east-1"), ("eu-west-1.localhost", "eu-west-1")])
def test_stored_completion_get_continue_delete(
    gw: Gw, authority: str | None, region: str, stream: bool
) -> None:
    with gw.client(authority) as c:
        chat = c.chat.create(model="grok-4", store_messages=True)
        chat.append(user("Tell me about the sea."))
        first = list(chat.stream())[-1][0] if stream else chat.sample()
        assert first.id.startswith(f"chat_{region}_") and f"in {region} " in first.content
        [got] = c.chat.get_stored_completion(first.id)
        assert (got.id, got.content, got.finish_reason) == (first.id, first.content, "REASON_STOP")
        # The follow-up is sent with the stored conversation: its prompt holds the first answer too.
        follow = c.chat.create(model="grok-4", previous_response_id=first.id, store_messages=True)
        follow.append(user("And the mountains?"))
        second = follow.sample()
        assert second.id.startswith(f"chat_{region}_") and second.id != first.id
        assert second.usage.prompt_tokens > first.usage.prompt_tokens + len(first.content) // 8
        assert c.chat.delete_stored_completion(first.id) == first.id
        for call in (
            lambda: c.chat.get_stored_completion(first.id),
            lambda: c.chat.delete_stored_completion(first.id),
        ):
            code, details = code_of(call)
            assert code == grpc.StatusCode.NOT_FOUND and first.id in details
        again = c.chat.create(model="grok-4", previous_response_id=first.id)
        again.append(user("hi"))
        assert code_of(again.sample)[0] == grpc.StatusCode.NOT_FOUND
        # Without store_messages nothing is kept: the id is the backend's, not a stored one.
        plain = c.chat.create(model="grok-4")
        plain.append(user("hi"))
        assert not plain.sample().id.startswith("chat_")


def test_stored_completion_residency_and_receipt(gw: Gw) -> None:
    req = chat_pb2.GetCompletionsRequest(
        model="grok-4",
        messages=[chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.Content(text="hi")])],
        store_messages=True,
    )
    with gw.channel("eu-west-1.localhost") as ch:
        resp, call = chat_pb2_grpc.ChatStub(ch).GetCompletion.with_call(req, metadata=auth())
    oid = resp.id
    assert oid.startswith("chat_eu-west-1_")
    claims = unverified_claims(dict(call.initial_metadata())["x-regiongate-receipt"])
    assert (claims["object"], claims["region"], claims["stored"], claims["stored_zone"]) == (
        oid,
        "eu-west-1",
        "eu-west-1",
        "eu",
    )
    with gw.client() as c:  # the global endpoint finds it by the region its id names
        assert c.chat.get_stored_completion(oid)[0].id == oid
        # A follow-up on the global endpoint runs where the conversation is stored.
        follow = c.chat.create(model="grok-4", previous_response_id=oid, store_messages=True)
        follow.append(user("more"))
        nxt = follow.sample()
        assert nxt.id.startswith("chat_eu-west-1_") and "in eu-west-1 " in nxt.content
    with gw.client("us-east-1.localhost") as c:  # another region's endpoint: not found, nothing read there
        for call_ in (
            lambda: c.chat.get_stored_completion(oid),
            lambda: c.chat.delete_stored_completion(oid),
        ):
            code, details = code_of(call_)
            assert code == grpc.StatusCode.NOT_FOUND and "outside this endpoint's scope" in details
        cross = c.chat.create(model="grok-4", previous_response_id=oid)
        cross.append(user("hi"))
        assert code_of(cross.sample)[0] == grpc.StatusCode.NOT_FOUND
    with gw.client("us-east-1.localhost") as c:  # a US object is not readable with an EU-fenced key
        us = c.chat.create(model="grok-4", store_messages=True)
        us.append(user("hi"))
        us_id = us.sample().id
    with gw.client(key=EU_KEY) as c:
        assert code_of(lambda: c.chat.get_stored_completion(us_id))[0] == grpc.StatusCode.NOT_FOUND
        for bad in (
            "",
            "x",
            "chat_nowhere_00",
            oid.replace("chat_", "defer_"),
            "chat_us-east-1_" + "zz" * 12,
        ):
            assert code_of(lambda b=bad: c.chat.get_stored_completion(b))[0] == grpc.StatusCode.NOT_FOUND


def test_stored_completion_survives_a_gateway_restart(gw: Gw) -> None:
    with gw.client() as c:
        chat = c.chat.create(model="grok-4", store_messages=True)
        chat.append(user("hi"))
        first = chat.sample()
    gw.stop()
    gw.start()
    with gw.client() as c:
        assert c.chat.get_stored_completion(first.id)[0].content == first.content
