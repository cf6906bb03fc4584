"""The rest of the OpenAI and xAI surface against llama.cpp's real ``llama-server`` (tests/support/llama.py)
behind a gateway process, with the official SDKs: the Responses API passed through to its own
``/v1/responses`` (plain, streamed, stored by the gateway and read back), ``tokenize_text`` of the xAI SDK
through its ``/tokenize``, and embeddings (the fixture runs it with ``--embeddings``) over REST and gRPC."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import httpx
import openai
import pytest
from xai_sdk import Client
from xai_sdk.proto import embed_pb2, embed_pb2_grpc

from tests.support import llama
from tests.support.procs import DEMO_KEY, Proc, free_port
from tests.support.worlds import world


@pytest.fixture
def gateway(start_gateway: Callable[..., Proc], llama_server: Proc) -> Iterator[tuple[Proc, int]]:
    """One region whose only backend is llama-server, serving its Responses API natively; REST and gRPC."""
    spec = (
        f'{{ kind = "http", server = "llama.cpp", url = "{llama_server.url}/v1", metrics_url = "", '
        'responses = "native" }'
    )
    port = free_port()
    yield start_gateway(world({"us-east-1": [spec]}, model=llama.MODEL), args=["--grpc-port", str(port)]), port


def _openai(gw: Proc) -> openai.OpenAI:
    return openai.OpenAI(api_key=DEMO_KEY, base_url=gw.url + "/v1", max_retries=0)


def test_responses_pass_through(gateway: tuple[Proc, int], llama_server: Proc) -> None:
    gw, _ = gateway
    c = _openai(gw)
    r = c.responses.create(model=llama.MODEL, input="hi", max_output_tokens=8)
    assert r.object == "response" and r.status in ("completed", "incomplete")
    assert r.output_text and r.usage is not None and 0 < r.usage.output_tokens <= 8
    # The same request straight to llama-server gives the same (deterministic) text: nothing was lost.
    direct = httpx.post(
        llama_server.url + "/v1/responses",
        json={"model": llama.MODEL, "input": "hi", "max_output_tokens": 8},
        timeout=60,
    ).json()
    texts = [p["text"] for o in direct["output"] if o["type"] == "message" for p in o["content"]]
    assert r.output_text == "".join(texts)


def test_responses_stream_pass_through(gateway: tuple[Proc, int]) -> None:
    gw, _ = gateway
    events = list(_openai(gw).responses.create(model=llama.MODEL, input="hi", max_output_tokens=8, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    assert "error" not in kinds
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    final = events[-1].response  # type: ignore[union-attr]
    assert deltas and deltas == final.output_text


def test_stored_response_is_kept_by_the_gateway(gateway: tuple[Proc, int]) -> None:
    gw, _ = gateway
    c = _openai(gw)
    r = c.responses.create(model=llama.MODEL, input="hi", max_output_tokens=8, store=True)
    assert r.id.startswith("resp_us-east-1")  # an id that names the region whose store holds it
    got = c.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    follow = c.responses.create(model=llama.MODEL, input="and?", previous_response_id=r.id, max_output_tokens=4)
    assert follow.output_text
    c.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)


def test_xai_sdk_tokenize_text_through_its_tokenize(gateway: tuple[Proc, int], llama_server: Proc) -> None:
    _, port = gateway
    text = "Hello regional world"
    with Client(api_key=DEMO_KEY, api_host=f"localhost:{port}") as c:
        toks = c.tokenize.tokenize_text(text, model=llama.MODEL)
    direct = httpx.post(llama_server.url + "/tokenize", json={"content": text, "with_pieces": True}).json()
    ids = [t["id"] for t in direct["tokens"]]
    assert [t.token_id for t in toks] == ids and len(ids) >= 3
    assert "".join(t.string_token for t in toks) == text  # llama.cpp's pieces, in order


def test_embeddings_over_rest_and_grpc(gateway: tuple[Proc, int], llama_server: Proc) -> None:
    gw, port = gateway
    rest = _openai(gw).embeddings.create(model=llama.MODEL, input=["a", "regional b"])
    assert len(rest.data) == 2 and all(len(d.embedding) == llama.N_EMBD for d in rest.data)
    direct = httpx.post(
        llama_server.url + "/v1/embeddings", json={"model": llama.MODEL, "input": ["a", "regional b"]}
    ).json()
    assert rest.data[0].embedding == pytest.approx(direct["data"][0]["embedding"], abs=1e-5)
    with grpc.insecure_channel(f"localhost:{port}") as ch:
        req = embed_pb2.EmbedRequest(
            model=llama.MODEL,
            input=[embed_pb2.EmbedInput(string=s) for s in ("a", "regional b")],
            encoding_format=embed_pb2.FORMAT_FLOAT,
        )
        got = embed_pb2_grpc.EmbedderStub(ch).Embed(req, metadata=(("authorization", f"Bearer {DEMO_KEY}"),))
    vectors = [list(e.embeddings[0].float_array) for e in got.embeddings]
    assert len(vectors) == 2 and vectors[1] == pytest.approx(rest.data[1].embedding, abs=1e-5)
