"""OpenTelemetry traces of routed requests, with the GenAI semantic conventions. Off unless ``[tracing]``.

One trace per request, continuing the client's W3C ``traceparent`` / ``tracestate`` when it sends them:

    chat grok-4                  SERVER  REST (ASGI wrapper) or gRPC (server interceptor): the whole request,
    |                                    stream included; gen_ai.* request/response/usage attributes and
    |                                    regiongate.* (endpoint, region, route, tier, team, request id)
    |-- capacity.acquire         INTERNAL one per candidate region: waiting for a capacity lease (granted?)
    `-- upstream.attempt         CLIENT   one per backend tried, until its first byte (or full answer):
                                          backend, region, route, outcome, the reason it moved on; the
                                          backend receives this span as its traceparent
    event "first_token" on the server span: the time to first token the client sees
    event "continuation" on the server span at each mid-stream continuation (region, backend, why it
    moved, tokens delivered before); the continuing attempt's span starts with one too

What never goes on a span: the API key (only its id), prompts, completions, backend credentials.

Cost: with tracing off nothing here is imported or called (the gateway checks one attribute for None).
When on, spans are queued to the SDK's ``BatchSpanProcessor`` and exported by its own thread, off the
event loop; a request whose trace is sampled out creates no child span and only passes the context on.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from regiongate.config.tracing import TracingConfig
from regiongate.upstream.base import UpstreamFailure

if TYPE_CHECKING:
    from regiongate.pipeline.continuation import Hop
    from regiongate.pipeline.exchange import Answered, Inbound, Routed
    from regiongate.pipeline.usage import UsageRecord
    from regiongate.state.capacity import CapacityStore, Lease, Rider
    from regiongate.state.fleet import Deployment

# GenAI semantic conventions: gen_ai.operation.name by OpenAI path.
OPERATIONS = {"/chat/completions": "chat", "/completions": "text_completion", "/embeddings": "embeddings"}
# Request fields copied as gen_ai.request.* attributes (numbers only: never a prompt).
REQUEST_FIELDS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
}
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_PROPAGATED = (b"traceparent", b"tracestate")
# The request's span in the OpenTelemetry context, beside the current span: while an attempt's span is the
# current one, the request's attributes and its first-token event still go on the request's span.
_SERVER_KEY = otel_context.create_key("regiongate.server_span")


def _response_model(data: bytes) -> str | None:
    """The ``model`` a backend answered with, from the head of its body or first stream event."""
    m = _MODEL.search(data[:4096])
    return m.group(1).decode("utf-8", "replace") if m is not None else None


def _server() -> Span | None:
    span = otel_context.get_value(_SERVER_KEY)
    return span if isinstance(span, Span) and span.is_recording() else None


def _sampler(cfg: TracingConfig, env: Mapping[str, str]) -> Sampler | None:
    """The config's ratio; else OTEL_TRACES_SAMPLER(_ARG) as the SDK reads them (None); else all."""
    if cfg.sampling_ratio is None and env.get("OTEL_TRACES_SAMPLER"):
        return None
    ratio = cfg.sampling_ratio
    if ratio is None:
        try:
            ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            ratio = 1.0
    return ParentBased(TraceIdRatioBased(min(max(ratio, 0.0), 1.0)))


class Tracing:
    """The tracer the composition root builds from ``[tracing]`` (one per process) and its hooks."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("regiongate")
        self.propagator = TraceContextTextMapPropagator()
        self.hook = _SpanAttributes()

    @classmethod
    def build(cls, cfg: TracingConfig, env: Mapping[str, str] | None = None) -> Tracing:
        env = os.environ if env is None else env
        name = cfg.service_name or env.get("OTEL_SERVICE_NAME") or "regiongate"
        provider = TracerProvider(
            sampler=_sampler(cfg, env),
            resource=Resource.create({"service.name": name}),
            shutdown_on_exit=False,
        )
        # No endpoint in the config: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT itself.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=cfg.traces_url())))
        return cls(provider)

    async def aclose(self) -> None:
        """Export what is queued (the SDK's shutdown blocks: run it off the loop)."""
        await asyncio.to_thread(self.provider.shutdown)

    # --- server spans --------------------------------------------------------------------------------
    def start_server(
        self, name: str, carrier: Mapping[str, str], attributes: dict[str, Any]
    ) -> tuple[Span, object]:
        """Start the request's span as a child of the client's context and make it current."""
        parent = self.propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        ctx = otel_context.set_value(_SERVER_KEY, span, trace.set_span_in_context(span, parent))
        return span, otel_context.attach(ctx)

    @staticmethod
    def end_server(span: Span, token: object, error: str | None) -> None:
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]

    def asgi(self, app: Any) -> Callable[..., Awaitable[None]]:
        """The REST listener wrapped: a server span around every /v1 request."""
        return _TracedAsgi(app, self)

    def grpc_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [_TracedGrpc(self)]

    # --- hooks the gateway calls (pipeline/failover.py) -----------------------------------------------
    async def acquire(
        self, capacity: CapacityStore, dep: Deployment, limit: int, rider: Rider | None = None
    ) -> Lease | None:
        if not trace.get_current_span().is_recording():
            return await capacity.acquire(dep.key, limit, rider)
        with self.tracer.start_as_current_span(
            "capacity.acquire",
            attributes={"regiongate.region": dep.region, "gen_ai.request.model": dep.model},
        ) as span:
            lease = await capacity.acquire(dep.key, limit, rider)
            span.set_attribute("regiongate.capacity.granted", lease is not None)
            span.set_attribute("regiongate.capacity.limit", limit)  # the request's tier's share
            return lease

    async def attempt(
        self, tried: Awaitable[Answered], dep: Deployment, backend: str, route: str, continues: str | None
    ) -> Answered:
        """Run one upstream attempt (``Gateway._try``) inside its span, until its first byte; an attempt
        to continue a broken stream (``continues``: what broke it) starts with a ``continuation`` event."""
        server = trace.get_current_span()
        if not server.is_recording():
            return await tried
        attrs: dict[str, Any] = {
            "regiongate.backend": backend,
            "regiongate.region": dep.region,
            "regiongate.route": route,
            "gen_ai.request.model": dep.model,
        }
        if continues is not None:
            attrs["regiongate.continuation"] = True
        span = self.tracer.start_span("upstream.attempt", kind=SpanKind.CLIENT, attributes=attrs)
        if continues is not None:
            span.add_event("continuation", {"regiongate.continuation.reason": continues})
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            routed = await tried
        except UpstreamFailure as e:
            span.set_attribute("regiongate.outcome", "failed")
            span.set_attribute("regiongate.failure_reason", e.reason)  # why the request moved on
            span.set_status(Status(StatusCode.ERROR, e.reason))
            raise
        except BaseException as e:  # cancelled (the client left) or a bug: never leave the span open
            span.set_attribute("regiongate.outcome", type(e).__name__)
            span.set_status(Status(StatusCode.ERROR, type(e).__name__))
            raise
        else:
            span.set_attribute("regiongate.outcome", "ok" if routed.status < 400 else "answered")
            span.set_attribute("http.response.status_code", routed.status)
            return routed
        finally:
            otel_context.detach(token)
            span.end()

    def inject(self, headers: list[tuple[str, str]]) -> None:
        """The current span (the attempt's, or the unsampled request's) as the backend's traceparent."""
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier)
        headers.extend(carrier.items())

    @staticmethod
    def first_token(first: bytes, ttft_ms: float, client_sees: bool) -> None:
        span = trace.get_current_span()  # the attempt's: its parent is the request's
        if not span.is_recording():
            return
        model = _response_model(first)
        attrs: dict[str, Any] = {"regiongate.ttft_ms": round(ttft_ms, 3)}
        if model is not None:
            attrs["gen_ai.response.model"] = model
        span.add_event("first_token", attrs)
        server = _server()
        if server is not None and client_sees:  # a continuation's first byte is not the client's TTFT
            server.add_event("first_token", attrs)
            if model is not None:
                server.set_attribute("gen_ai.response.model", model)

    @staticmethod
    def continued(hop: Hop, tokens: int) -> None:
        """A ``continuation`` event on the request's span: where the answer went on, after how much, why."""
        server = _server()
        if server is None:
            return
        server.add_event(
            "continuation",
            {
                "regiongate.region": hop.region,
                "regiongate.backend": hop.backend,
                "regiongate.continuation.reason": hop.reason,
                "regiongate.continuation.delivered_tokens": tokens,
            },
        )


class _SpanAttributes:
    """The gateway ``Hook`` that names the request's span and sets its GenAI and regiongate attributes."""

    async def before(self, inbound: Inbound) -> None:
        span = _server()
        if span is None:
            return
        op = OPERATIONS.get(inbound.path, inbound.path.strip("/"))
        span.update_name(f"{op} {inbound.model}")
        p, payload = inbound.principal, inbound.payload
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "gen_ai.request.model": inbound.model,
            "regiongate.stream": inbound.stream,
            "regiongate.endpoint.kind": inbound.endpoint.kind.value,
            "regiongate.endpoint": str(inbound.endpoint),
            "regiongate.team": p.team,
            "regiongate.key_id": p.key_id,  # the key's id, never the key
            "regiongate.request_id": inbound.request_id,  # the gateway's own (x-request-id of the answer)
        }
        if inbound.client_request_id is not None:  # the client's x-request-id, kept apart from ours
            attrs["regiongate.client_request_id"] = inbound.client_request_id
        tier = payload.get("service_tier")
        if isinstance(tier, str):
            attrs["regiongate.tier"] = tier[:32]
        for field, name in REQUEST_FIELDS.items():
            v = payload.get(field)
            if isinstance(v, int | float) and not isinstance(v, bool):
                attrs[name] = v
        span.set_attributes(attrs)

    def after(self, inbound: Inbound, routed: Routed) -> None:
        span = _server()
        if span is None:
            return
        span.set_attributes(
            {
                "regiongate.region": routed.region,
                "regiongate.route": routed.route,
                "regiongate.backend": routed.backend,
            }
        )
        model = _response_model(routed.body) if routed.chunks is None else None
        if model is not None:
            span.set_attribute("gen_ai.response.model", model)

    def settled(self, inbound: Inbound, record: UsageRecord) -> None:
        span = _server()
        if span is None:
            return
        span.set_attributes(
            {
                "gen_ai.usage.input_tokens": record.prompt_tokens,
                "gen_ai.usage.output_tokens": record.completion_tokens,
                "regiongate.status": record.status,
            }
        )
        if record.status >= 500:
            span.set_status(Status(StatusCode.ERROR, f"ended with {record.status}"))


class _TracedAsgi:
    def __init__(self, app: Any, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _PROPAGATED}
        method, path = scope["method"], scope["path"]
        attrs = {"http.request.method": method, "url.path": path, "network.protocol.name": "http"}
        span, token = self.tracing.start_server(f"{method} {path}", carrier, attrs)
        status = 0

        async def noting(msg: dict[str, Any]) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        error: str | None = None
        try:
            await self.app(scope, receive, noting)
        except BaseException as e:
            error = type(e).__name__
            raise
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500 and error is None:
                error = f"HTTP {status}"
            self.tracing.end_server(span, token, error)


class _TracedGrpc(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A server span around each xai_api.Chat call (the calls that are routed)."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or not method.startswith("/xai_api.Chat/"):
            return handler
        md = details.invocation_metadata or ()
        carrier = {k: v for k, v in md if k in ("traceparent", "tracestate") and isinstance(v, str)}
        service, _, name = method[1:].partition("/")
        attrs = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        tracing = self.tracing

        def end(span: Span, token: object, context: Any, error: BaseException | None) -> None:
            code = context.code()  # what abort() set; None when the handler returned
            if not isinstance(code, grpc.StatusCode):
                code = grpc.StatusCode.OK
                if error is not None:
                    cancelled = isinstance(error, asyncio.CancelledError)
                    code = grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.UNKNOWN
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            tracing.end_server(span, token, None if code is grpc.StatusCode.OK else code.name)

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def traced_unary(request: Any, context: Any) -> Any:
                span, token = tracing.start_server(method[1:], carrier, attrs)
                try:
                    result = await unary(request, context)
                except BaseException as e:
                    end(span, token, context, e)
                    raise
                end(span, token, context, None)
                return result

            return grpc.unary_unary_rpc_method_handler(
                traced_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            streaming = handler.unary_stream

            async def traced_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                span, token = tracing.start_server(method[1:], carrier, attrs)
                try:
                    async for item in streaming(request, context):
                        yield item
                except BaseException as e:
                    end(span, token, context, e)
                    raise
                end(span, token, context, None)

            return grpc.unary_stream_rpc_method_handler(
                traced_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


__all__ = ["OPERATIONS", "Tracing"]
