"""OpenTelemetry traces, against a real OTLP/HTTP receiver decoding ``ExportTraceServiceRequest``.

The gateway runs as ``regiongate serve`` with ``[tracing]``; us-east-1's only backend is a stub that answers
500 (and records the headers it got), us-west-2's is a simulated cluster over HTTP. A global stream from a
client that sends its own ``traceparent`` fails over: the trace must continue the client's, hold one server
span, one capacity span per candidate, one attempt span per backend (the failed one saying why), the GenAI
attributes, the traceparent the backend received, and none of the key, the prompt or the completion."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from xai_sdk import Client
from xai_sdk.chat import user

from tests.support import worlds
from tests.support.faults import WHOLE, Fault, FaultServer
from tests.support.procs import DEMO_KEY, Proc, free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
PROMPT = "SECRET-PROMPT-never-in-a-span"
REQUEST_ID = "req-trace-test-0001"


@dataclass
class Receiver:
    """An OTLP/HTTP traces endpoint: every span it was sent, and the raw bytes of every export."""

    port: int = 0
    spans: list[Span] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    resources: list[dict[str, str]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def add(self, body: bytes) -> None:
        req = ExportTraceServiceRequest.FromString(body)
        with self.changed:
            self.raw.append(body)
            for rs in req.resource_spans:
                attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                self.resources.append(attrs)
                for ss in rs.scope_spans:
                    self.spans.extend(ss.spans)
            self.changed.notify_all()

    def wait_for(self, pred: Any, timeout: float = 60.0) -> list[Span]:
        with self.changed:
            assert self.changed.wait_for(lambda: pred(self.spans), timeout), [s.name for s in self.spans]
            return list(self.spans)


def _reply(h: BaseHTTPRequestHandler, status: int, ctype: str, body: bytes) -> None:
    h.send_response(status)
    h.send_header("content-type", ctype)
    h.send_header("content-length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def _server(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            assert self.path == "/v1/traces"
            assert self.headers["content-type"] == "application/x-protobuf"
            rec.add(body)
            _reply(self, 200, "application/x-protobuf", ExportTraceServiceResponse().SerializeToString())

        def log_message(self, *args: Any) -> None:
            pass

    httpd = _server(Handler)
    rec.port = httpd.server_address[1]
    yield rec
    httpd.shutdown()


@pytest.fixture
def failing_backend() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An OpenAI-compatible URL whose every completion answers 500; the request headers it saw."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            seen.append({k.lower(): v for k, v in self.headers.items()})
            out = b'{"error": {"message": "overloaded", "type": "server_error", "param": null, "code": null}}'
            _reply(self, 500, "application/json", out)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = _server(Handler)
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen
    httpd.shutdown()


def _attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = getattr(v, v.WhichOneof("value"))
    return out


def span_tree(spans: list[Span]) -> str:
    """The trace as text: each span with its kind, duration and the attributes that tell the story."""
    by_parent: dict[bytes, list[Span]] = {}
    ids = {s.span_id for s in spans}
    for s in sorted(spans, key=lambda s: s.start_time_unix_nano):
        by_parent.setdefault(s.parent_span_id if s.parent_span_id in ids else b"", []).append(s)
    shown = (
        "gen_ai.operation.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.request.max_tokens",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "regiongate.endpoint.kind",
        "regiongate.region",
        "regiongate.route",
        "regiongate.team",
        "regiongate.request_id",
        "regiongate.backend",
        "regiongate.capacity.granted",
        "regiongate.outcome",
        "regiongate.failure_reason",
        "regiongate.continuation",
        "rpc.method",
        "http.response.status_code",
    )
    lines: list[str] = []

    def show(s: Span, depth: int) -> None:
        ms = (s.end_time_unix_nano - s.start_time_unix_nano) / 1e6
        kind = Span.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_")
        pad = "    " * depth
        lines.append(f"{pad}{s.name}  [{kind}, {ms:.1f} ms]")
        a = _attrs(s)
        for k in shown:
            if k in a:
                lines.append(f"{pad}    {k} = {a[k]!r}")
        for e in s.events:
            at = (e.time_unix_nano - s.start_time_unix_nano) / 1e6
            ea = {x.key: getattr(x.value, x.value.WhichOneof("value")) for x in e.attributes}
            said = ", ".join(f"{k.removeprefix('regiongate.')}={v!r}" for k, v in ea.items() if k != "regiongate.ttft_ms")
            lines.append(f"{pad}    event {e.name} at +{at:.1f} ms" + (f" ({said})" if said else ""))
        for child in by_parent.get(s.span_id, []):
            show(child, depth + 1)

    for root in by_parent.get(b"", []):
        show(root, 0)
    return "\n".join(lines)


def _world(failing: str, healthy: str, otlp_port: int, extra: str = "") -> str:
    return worlds.world(
        {"us-east-1": [worlds.http_backend(failing)], "us-west-2": [worlds.http_backend(healthy)]},
        extra="\n".join(
            [
                "[load]",
                "scrape_interval_s = 0",
                "[tracing]",
                f'otlp_endpoint = "http://127.0.0.1:{otlp_port}"',
                'service_name = "regiongate-test"',
                extra,
            ]
        ),
    )


def _start(start_gateway: Any, config: str, grpc_port: int = 0) -> Proc:
    # OTEL_BSP_SCHEDULE_DELAY: a standard variable the SDK reads (batches leave every 50 ms here).
    gw: Proc = start_gateway(
        config, args=["--grpc-port", str(grpc_port)], env={"OTEL_BSP_SCHEDULE_DELAY": "50"}
    )
    return gw


def test_a_failed_over_stream_is_one_trace(
    start_gateway: Any,
    start_sim_backend: Any,
    receiver: Receiver,
    failing_backend: tuple[str, list[dict[str, str]]],
    tmp_path: Path,
) -> None:
    failing, seen = failing_backend
    sim = start_sim_backend("us-west-2")
    gw = _start(start_gateway, _world(failing, sim.url + "/v1", receiver.port))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="grok-4",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=16,
        stream=True,
        extra_headers={
            "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01",
            "tracestate": "client=1",
            "x-request-id": REQUEST_ID,
        },
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert len(text) > 20

    def complete(spans: list[Span]) -> bool:
        return any(s.kind == Span.SPAN_KIND_SERVER and s.trace_id.hex() == TRACE_ID for s in spans)

    spans = [s for s in receiver.wait_for(complete) if s.trace_id.hex() == TRACE_ID]
    (tree_path := tmp_path / "trace.txt").write_text(span_tree(spans))
    print(f"\n{tree_path.read_text()}")  # the span tree shown in docs/tracing.md

    servers = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    assert len(servers) == 1
    server = servers[0]
    assert server.name == "chat grok-4"
    assert server.parent_span_id.hex() == CLIENT_SPAN  # continues the client's trace
    assert server.trace_state == "client=1"
    a = _attrs(server)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "grok-4" and a["gen_ai.response.model"] == "grok-4"
    assert a["gen_ai.request.max_tokens"] == 16
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert a["regiongate.endpoint.kind"] == "global"
    assert a["regiongate.region"] == "us-west-2" and a["regiongate.route"] == "failover"
    assert a["regiongate.team"] == "demo" and a["regiongate.client_request_id"] == REQUEST_ID
    assert a["regiongate.request_id"].startswith("req_")  # the gateway's own id, never the client's
    # regiongate.status is the usage record's: 499 when the client hangs up right after [DONE], before the
    # backend's connection ends (the gateway's bookkeeping, not the trace's), so only its presence is checked.
    assert a["http.response.status_code"] == 200 and a["regiongate.status"] in (200, 499)
    assert [e.name for e in server.events] == ["first_token"]

    children = sorted(
        (s for s in spans if s.parent_span_id == server.span_id), key=lambda s: s.start_time_unix_nano
    )
    assert [(c.name, _attrs(c)["regiongate.region"]) for c in children] == [
        ("capacity.acquire", "us-east-1"),
        ("upstream.attempt", "us-east-1"),
        ("capacity.acquire", "us-west-2"),
        ("upstream.attempt", "us-west-2"),
    ]
    failed, won = children[1], children[3]
    assert _attrs(failed)["regiongate.outcome"] == "failed"
    assert _attrs(failed)["regiongate.failure_reason"] == "answered HTTP 500"
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
    assert _attrs(won)["regiongate.outcome"] == "ok" and _attrs(won)["regiongate.route"] == "failover"
    assert [e.name for e in won.events] == ["first_token"]
    assert all(_attrs(c)["regiongate.capacity.granted"] for c in children[::2])

    # The backend was handed the attempt's span as its parent, and the client's tracestate.
    assert seen[0]["traceparent"] == f"00-{TRACE_ID}-{failed.span_id.hex()}-01"
    assert seen[0]["tracestate"] == "client=1"
    assert seen[0].get("x-request-id") != REQUEST_ID  # the client's own id never reaches a backend

    assert {"service.name": "regiongate-test"}.items() <= receiver.resources[0].items()
    everything = b"".join(receiver.raw)
    for secret in (DEMO_KEY, PROMPT, text[:20]):
        assert secret.encode() not in everything, secret


def test_grpc_call_is_a_server_span_with_its_attempt(
    start_gateway: Any, start_sim_backend: Any, receiver: Receiver, failing_backend: tuple[str, Any]
) -> None:
    sim = start_sim_backend("us-west-2")
    grpc_port = free_port()
    gw = _start(start_gateway, _world(failing_backend[0], sim.url + "/v1", receiver.port), grpc_port)
    assert gw.proc.poll() is None
    client = Client(
        api_key=DEMO_KEY,
        api_host=f"localhost:{grpc_port}",
        metadata=(("traceparent", f"00-{TRACE_ID}-{CLIENT_SPAN}-01"), ("x-request-id", REQUEST_ID)),
    )
    chat = client.chat.create(model="grok-4", max_tokens=8)
    chat.append(user(PROMPT))
    content = "".join(chunk.content for _resp, chunk in chat.stream())
    assert content
    spans = receiver.wait_for(lambda ss: any(s.kind == Span.SPAN_KIND_SERVER for s in ss))
    server = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
    a = _attrs(server)
    assert server.name == "chat grok-4" and server.parent_span_id.hex() == CLIENT_SPAN
    assert a["rpc.system"] == "grpc" and a["rpc.method"] == "GetCompletionChunk"
    assert a["rpc.grpc.status_code"] == 0
    assert a["regiongate.client_request_id"] == REQUEST_ID and a["regiongate.route"] == "failover"
    attempts = [s for s in spans if s.name == "upstream.attempt" and s.parent_span_id == server.span_id]
    assert [_attrs(s)["regiongate.outcome"] for s in attempts] == ["failed", "ok"]
    assert PROMPT.encode() not in b"".join(receiver.raw)
    client.close()


def test_sampled_out_requests_export_nothing_but_pass_the_context_on(
    start_gateway: Any, start_sim_backend: Any, receiver: Receiver, failing_backend: tuple[str, Any]
) -> None:
    failing, seen = failing_backend
    sim = start_sim_backend("us-west-2")
    gw = _start(start_gateway, _world(failing, sim.url + "/v1", receiver.port, "sampling_ratio = 0.0"))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)
    client.chat.completions.create(model="grok-4", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    # A client that sampled its trace keeps it sampled here (parent-based): that one is exported.
    client.chat.completions.create(
        model="grok-4",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        extra_headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"},
    )
    gw.stop()  # SIGTERM: the runtime's close exports whatever is still queued
    assert len(seen) == 2
    first = seen[0]["traceparent"].split("-")
    assert int(first[3], 16) & 1 == 0 and first[1] != TRACE_ID  # an unsampled trace, still propagated
    assert seen[1]["traceparent"].split("-")[1] == TRACE_ID
    assert {s.trace_id.hex() for s in receiver.spans} == {TRACE_ID}
    assert json.dumps(sorted({s.name for s in receiver.spans})) == json.dumps(
        sorted({"chat grok-4", "capacity.acquire", "upstream.attempt"})
    )


def compact_tree(spans: list[Span]) -> str:
    """The trace as the README shows it: one line per span (name, kind, what it says), events inline."""
    ids = {s.span_id for s in spans}
    by_parent: dict[bytes, list[Span]] = {}
    for s in sorted(spans, key=lambda s: s.start_time_unix_nano):
        by_parent.setdefault(s.parent_span_id if s.parent_span_id in ids else b"", []).append(s)

    def says(s: Span) -> str:
        a = _attrs(s)
        if s.name == "capacity.acquire":
            return f"{a['regiongate.region']} {'granted' if a['regiongate.capacity.granted'] else 'full'}"
        if s.name == "upstream.attempt":
            out = f"{a['regiongate.backend']} outcome={a['regiongate.outcome']}"
            return out + (f' reason="{a["regiongate.failure_reason"]}"' if "regiongate.failure_reason" in a else "")
        return (
            f"route={a['regiongate.route']} region={a['regiongate.region']} "
            f"output_tokens={a['gen_ai.usage.output_tokens']}"
        )

    def events(s: Span) -> tuple[str, list[str]]:
        """Events inline, but a request's continuation on a line of its own (where, after what, why)."""
        inline, own = [], []
        for e in s.events:
            ea = {x.key: getattr(x.value, x.value.WhichOneof("value")) for x in e.attributes}
            if e.name == "continuation" and "regiongate.region" in ea:
                own.append(
                    f"event continuation -> {ea['regiongate.region']} after "
                    f"{ea['regiongate.continuation.delivered_tokens']} tokens: {ea['regiongate.continuation.reason']}"
                )
            else:
                inline.append(f"event {e.name}")
        return (", " + ", ".join(inline)) if inline else "", own

    rows: list[tuple[str, str, str]] = []

    def walk(s: Span, prefix: str, last: bool, depth: int) -> None:
        branch = "" if depth == 0 else ("└── " if last else "├── ")
        kind = Span.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_")
        inline, own = events(s)
        rows.append((prefix + branch + s.name, kind, says(s) + inline))
        kids = by_parent.get(s.span_id, [])
        below = prefix + ("" if depth == 0 else ("    " if last else "│   ")) + ("│" if kids else "")
        rows.extend((below, "", line) for line in own)
        for i, k in enumerate(kids):
            walk(k, prefix + ("" if depth == 0 else ("    " if last else "│   ")), i == len(kids) - 1, depth + 1)

    for root in by_parent.get(b"", []):
        walk(root, "", True, 0)
    width = max(len(r[0]) for r in rows) + 2
    return "\n".join(f"{n:<{width}}{k:<10}{w}" for n, k, w in rows)


def test_a_failed_over_continued_stream_is_one_trace(
    start_gateway: Any,
    receiver: Receiver,
    failing_backend: tuple[str, list[dict[str, str]]],
    fault_servers: list[FaultServer],
    tmp_path: Path,
) -> None:
    # us-east-1 answers 500 (failover before the first byte); us-west-2 cuts the stream after 10 tokens
    # (continued mid-answer); eu-west-1 finishes it.
    failing, _seen = failing_backend
    west, dublin, _ = fault_servers
    west.default = Fault("cut", at=10)
    cfg = worlds.world(
        {
            "us-east-1": [worlds.http_backend(failing)],
            "us-west-2": [f'{{ kind = "http", url = "{west.url}", metrics_url = "" }}'],
            "eu-west-1": [f'{{ kind = "http", url = "{dublin.url}", metrics_url = "" }}'],
        },
        extra="\n".join(
            [
                "[load]",
                "scrape_interval_s = 0",
                "[tracing]",
                f'otlp_endpoint = "http://127.0.0.1:{receiver.port}"',
                'service_name = "regiongate-test"',
            ]
        ),
    )
    gw = _start(start_gateway, cfg)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="grok-4",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        extra_headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == WHOLE

    def complete(spans: list[Span]) -> bool:
        return any(s.kind == Span.SPAN_KIND_SERVER and s.trace_id.hex() == TRACE_ID for s in spans)

    spans = [s for s in receiver.wait_for(complete) if s.trace_id.hex() == TRACE_ID]
    tree = compact_tree(spans)
    (tmp_path / "trace.txt").write_text(tree)
    print(f"\n{tree}\n\n{span_tree(spans)}")  # the span trees in the README and docs/production.md
    (server,) = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    assert [e.name for e in server.events] == ["first_token", "continuation"]  # one TTFT: the client's
    cont = {x.key: getattr(x.value, x.value.WhichOneof("value")) for x in server.events[1].attributes}
    assert cont["regiongate.region"] == "eu-west-1" and cont["regiongate.continuation.delivered_tokens"] == 10
    assert "us-west-2" in cont["regiongate.continuation.reason"]
    attempts = sorted(
        (s for s in spans if s.name == "upstream.attempt" and s.parent_span_id == server.span_id),
        key=lambda s: s.start_time_unix_nano,
    )
    assert [(_attrs(s)["regiongate.region"], _attrs(s)["regiongate.outcome"]) for s in attempts] == [
        ("us-east-1", "failed"),
        ("us-west-2", "ok"),
        ("eu-west-1", "ok"),
    ]
    last = attempts[-1]
    assert _attrs(last)["regiongate.continuation"] is True
    assert [e.name for e in last.events] == ["continuation", "first_token"]
    assert "continuation" not in [e.name for s in attempts[:2] for e in s.events]
    assert _attrs(server)["regiongate.route"] == "failover"
    everything = b"".join(receiver.raw)
    for secret in (DEMO_KEY, PROMPT, WHOLE[:20]):
        assert secret.encode() not in everything, secret
