"""The gRPC front's pure parts: reading :authority / SNI from raw bytes, and the message translation."""

from __future__ import annotations

import random
import ssl

import grpc
import hpack
import pytest
from xai_sdk.chat import assistant, image, system, tool_result, user
from xai_sdk.proto import chat_pb2, sample_pb2

from regiongate.core import RouteError
from regiongate.grpc import translate
from regiongate.grpc.front import Connections, ConnInfo
from regiongate.grpc.sniff import H2_PREFACE, AuthorityDecoder, ClientHelloSni, H2Authorities, SniffError
from regiongate.grpc.status import grpc_code, trailers


def frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


def request_headers(enc: hpack.Encoder, authority: str) -> bytes:
    return enc.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/xai_api.Chat/GetCompletion"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("authorization", "Bearer secret"),
        ]
    )


def connection(authorities: list[str]) -> bytes:
    enc = hpack.Encoder()
    out = H2_PREFACE + frame(0x4, 0, 0, b"") + frame(0x8, 0, 0, b"\x00\x00\x10\x00")
    for i, a in enumerate(authorities):
        sid = 1 + 2 * i
        out += frame(0x1, 0x4, sid, request_headers(enc, a)) + frame(0x0, 0x1, sid, b"\x00" * 300)
    return out


def test_h2_authorities_in_order_whatever_the_split() -> None:
    raw = connection(["us-east-1.localhost:50051", "us-east-1.localhost:50051"])
    for size in (1, 7, 9, 64, len(raw)):
        sniff = H2Authorities()
        seen: list[str] = []
        for i in range(0, len(raw), size):
            seen += sniff.feed(raw[i : i + size])
        assert seen == ["us-east-1.localhost:50051"] * 2, size


def test_h2_continuation_padding_and_priority() -> None:
    block = request_headers(hpack.Encoder(), "eu-west-1.api.x.ai")
    headers = bytes([3]) + b"\x00\x00\x00\x00\x10" + block[:10] + b"pad"  # PADDED|PRIORITY, no END_HEADERS
    raw = H2_PREFACE + frame(0x1, 0x8 | 0x20, 1, headers) + frame(0x9, 0x4, 1, block[10:])
    assert H2Authorities().feed(raw) == ["eu-west-1.api.x.ai"]


def test_h2_rejects_other_protocols_and_broken_blocks() -> None:
    with pytest.raises(SniffError):
        H2Authorities().feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(SniffError):
        H2Authorities().feed(b"\x16\x03\x01\x02\x00\x01")  # TLS to the cleartext port
    block = request_headers(hpack.Encoder(), "a")
    interrupted = H2_PREFACE + frame(0x1, 0, 1, block[:5]) + frame(0x0, 0, 1, b"x")
    with pytest.raises(SniffError):
        H2Authorities().feed(interrupted)


def hpack_authority(dec: hpack.Decoder, block: bytes) -> bytes | None:
    """The answer the front gave before AuthorityDecoder: hpack's decoding, first :authority, else host."""
    host = None
    for name, value in dec.decode(block, raw=True):
        if name == b":authority":
            return bytes(value)
        if name == b"host":
            host = bytes(value)
    return host


def test_authority_decoder_agrees_with_hpack_on_random_connections() -> None:
    """Random header lists through hpack's encoder (Huffman or not, never-indexed fields, table size
    updates, entries large enough to evict and to empty the table): the same host, block after block."""
    rng = random.Random(20)
    hosts = ["a", "us-east-1.localhost:50051", "eu-west-1.api.x.ai", "h" * 700, "h" * 5000]
    names = ["content-type", "authorization", "grpc-timeout", "x-custom", "user-agent", "te"]
    checked = 0
    for _ in range(300):
        enc, ref, ours = hpack.Encoder(), hpack.Decoder(), AuthorityDecoder()
        ref.max_allowed_table_size = 65536
        ref.max_header_list_size = 1 << 20
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.15:
                enc.header_table_size = rng.choice([0, 64, 256, 4096, 8192])
            headers: list[tuple[str, str, bool]] = []
            if rng.random() < 0.9:
                headers.append((":authority", rng.choice(hosts), rng.random() < 0.2))
            for _ in range(rng.randint(0, 6)):
                headers.append((rng.choice(names), "v" * rng.randint(0, 600), rng.random() < 0.2))
            if rng.random() < 0.3:
                headers.insert(rng.randint(0, len(headers)), ("host", rng.choice(hosts), False))
            rng.shuffle(headers)
            block = enc.encode(headers, huffman=rng.random() < 0.5)
            assert ours.authority(block) == hpack_authority(ref, block)
            checked += 1
    assert checked > 1000


def test_authority_decoder_reads_unindexed_literals_and_refuses_malformed_blocks() -> None:
    huffman = hpack.huffman.HuffmanEncoder(
        hpack.huffman_constants.REQUEST_CODES, hpack.huffman_constants.REQUEST_CODES_LENGTH
    ).encode(b"eu-west-1.localhost")
    # a literal without indexing, named by static index 1 (:authority), its value Huffman-coded
    block = bytes([0x01, 0x80 | len(huffman)]) + huffman
    dec = AuthorityDecoder()
    assert dec.authority(block) == b"eu-west-1.localhost"
    assert dec.authority(bytes([0x82])) is None  # :method GET, no host in it
    for bad in (
        bytes([0xBE]),  # index 62 with an empty dynamic table
        bytes([0x80]),  # index 0
        bytes([0x82, 0x3F, 0xE1, 0x1F]),  # a table size update after a field
        bytes([0x3F, 0xFF, 0xFF, 0x7F]),  # a table size update above the maximum
        bytes([0x01, 0x05, 0x61]),  # a value longer than the block
        bytes([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),  # an integer of too many octets
        bytes([0x01, 0x81, 0xFF]),  # :authority with Huffman padding longer than 7 bits
    ):
        with pytest.raises(SniffError):
            AuthorityDecoder().authority(bad)


def client_hello(server_name: str | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = server_name is not None
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_sni_from_a_real_client_hello_in_pieces() -> None:
    hello = client_hello("us-east-1.api.x.ai")
    sniff = ClientHelloSni()
    result = (False, None)
    for i in range(0, len(hello), 50):
        result = sniff.feed(hello[i : i + 50])
        if result[0]:
            break
    assert result == (True, "us-east-1.api.x.ai")
    assert ClientHelloSni().feed(client_hello(None)) == (True, None)
    with pytest.raises(SniffError):
        ClientHelloSni().feed(H2_PREFACE)


def test_connections_by_peer_and_stale_removal() -> None:
    conns = Connections()
    old, new = ConnInfo(None, "a"), ConnInfo(None, "b")
    conns.add(40122, old)
    assert conns.for_peer("ipv4:127.0.0.1:40122") is old
    conns.add(40122, new)  # the port was reused before the old connection's clean-up ran
    conns.remove(40122, old)
    assert conns.for_peer("ipv4:127.0.0.1:40122") is new
    conns.remove(40122, new)
    assert conns.for_peer("ipv4:127.0.0.1:40122") is None and conns.for_peer("unix:") is None


def test_status_mapping() -> None:
    assert grpc_code(401) is grpc.StatusCode.UNAUTHENTICATED
    assert grpc_code(403) is grpc.StatusCode.PERMISSION_DENIED
    assert grpc_code(404) is grpc.StatusCode.NOT_FOUND
    assert grpc_code(422) is grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code(429) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_code(503) is grpc.StatusCode.UNAVAILABLE
    assert ("grpc-retry-pushback-ms", "-1") in trailers(503, "capacity_exhausted", 1.0, "r")
    assert all(k != "grpc-retry-pushback-ms" for k, _ in trailers(429, "rate_limited", 2.0, "r"))


# --- translation -------------------------------------------------------------------------------------
def sdk_request(**kw: object) -> chat_pb2.GetCompletionsRequest:
    """The request the SDK builds (``chat.create(...)`` + append + ``_make_request(1)``), without a server."""
    from xai_sdk import Client

    client = Client(api_key="k", api_host="localhost:1")
    try:
        chat = client.chat.create(model="grok-4", **kw)  # type: ignore[arg-type]
        chat.append(system("be brief"))
        chat.append(user("What is the meaning of life?"))
        chat.append(assistant("42"))
        chat.append(tool_result("{}"))
        return chat._make_request(1)  # type: ignore[no-any-return]
    finally:
        client.close()


def test_request_becomes_the_openai_payload() -> None:
    req = sdk_request(max_tokens=20, temperature=0.5, stop=["\n"], seed=7)
    p = translate.chat_payload(req, stream=True)
    assert p["model"] == "grok-4" and p["max_tokens"] == 20 and p["n"] == 1 and p["seed"] == 7
    assert p["temperature"] == 0.5 and p["stop"] == ["\n"]
    assert [m["role"] for m in p["messages"]] == ["system", "user", "assistant", "tool"]
    assert p["messages"][1]["content"] == "What is the meaning of life?"
    assert p["stream"] is True and p["stream_options"] == {"include_usage": True}
    assert "top_p" not in p and "stream" not in translate.chat_payload(req, stream=False)


def test_images_tools_and_formats_become_openai_fields() -> None:
    from xai_sdk.chat import tool

    req = sdk_request(
        tools=[tool("lookup", "find a thing", {"type": "object", "properties": {}})],
        tool_choice="required",
        response_format="json_object",
        reasoning_effort="high",
    )
    req.messages.append(user("what is this?", image("https://example.com/a.png", detail="high")))
    p = translate.chat_payload(req, stream=False)
    assert p["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "find a thing",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    assert p["tool_choice"] == "required" and p["response_format"] == {"type": "json_object"}
    assert p["reasoning_effort"] == "high"
    assert p["messages"][-1]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}},
    ]


def test_request_refusals() -> None:
    with pytest.raises(RouteError) as e:
        translate.chat_payload(sdk_request(max_tokens=0), stream=False)
    assert e.value.status == 400 and e.value.param == "max_tokens"
    req = sdk_request()
    req.tools.add().web_search.SetInParent()
    with pytest.raises(RouteError) as e:
        translate.chat_payload(req, stream=False)
    assert e.value.status == 501 and "web_search" in e.value.message


def test_stream_chunks_keep_role_metadata_and_usage() -> None:
    meta = translate.Meta("grok-4")
    base = {"id": "c1", "created": 1700000000, "model": "grok-4", "system_fingerprint": "fp"}
    first = translate.completion_chunk(
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]}, meta
    )
    call = {"index": 0, "id": "t1", "function": {"name": "f", "arguments": '{"a"'}}
    part = translate.completion_chunk(
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}, meta
    )
    more = {"index": 0, "function": {"arguments": ": 1}"}}
    last = translate.completion_chunk(
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [more]}, "finish_reason": "tool_calls"}]},
        meta,
    )
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    tail = translate.completion_chunk({**base, "choices": [], "usage": usage}, meta)
    for c in (first, part, last):
        assert c.outputs[0].delta.role == chat_pb2.ROLE_ASSISTANT
        assert c.id == "c1" and c.model == "grok-4" and c.created.seconds == 1700000000
    assert not part.outputs[0].delta.tool_calls  # fragments are sent whole, once
    assert [(t.id, t.function.arguments) for t in last.outputs[0].delta.tool_calls] == [("t1", '{"a": 1}')]
    assert last.outputs[0].finish_reason == sample_pb2.REASON_TOOL_CALLS
    assert tail.usage.total_tokens == 5 and not tail.outputs and tail.system_fingerprint == "fp"


def test_completion_response_outputs() -> None:
    obj = {
        "id": "c2",
        "created": 1700000001,
        "model": "grok-4",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": f"t{i}"}, "finish_reason": "length"}
            for i in range(2)
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5},
    }
    r = translate.completion_response(obj, "grok-4")
    assert [(o.index, o.message.content, o.message.role) for o in r.outputs] == [
        (0, "t0", chat_pb2.ROLE_ASSISTANT),
        (1, "t1", chat_pb2.ROLE_ASSISTANT),
    ]
    assert r.outputs[0].finish_reason == sample_pb2.REASON_MAX_LEN and r.usage.completion_tokens == 4


def test_streamed_tool_call_names_repeated_in_every_chunk_are_taken_once() -> None:
    """SGLang repeats ``function.name`` (and the call id) in every tool-call delta; OpenAI, vLLM and
    llama.cpp send it once. Either way the xAI client gets one call named ``get_weather``."""
    meta = translate.Meta("m")
    pieces = ['{"city": ', '"Paris"', "}"]
    chunks = [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": p}}
        for p in pieces
    ]
    outs = [
        translate.completion_chunk(
            {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [c]}, "finish_reason": None}]}, meta
        )
        for c in chunks
    ]
    end = translate.completion_chunk(
        {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}, meta
    )
    assert not any(o.outputs[0].delta.tool_calls for o in outs)
    calls = end.outputs[0].delta.tool_calls
    assert [(t.id, t.function.name, t.function.arguments) for t in calls] == [
        ("call_1", "get_weather", '{"city": "Paris"}')
    ]
