"""The xAI-compatible services over the shared gateway: Chat, Models, Auth (PROTOCOL.md 1.2).

Each call: the connection's authority (from the front) -> authentication -> endpoint resolution -> the same
``Inbound`` the REST adapter builds -> ``Gateway.dispatch`` -> translation back into xai-sdk's messages.
Every other method of every service xai-sdk ships answers UNIMPLEMENTED naming what is served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from google.protobuf import empty_pb2, message_factory
from xai_sdk.proto import auth_pb2, chat_pb2, models_pb2

from regiongate.core import RouteError
from regiongate.core.errors import ClientError
from regiongate.grpc import translate
from regiongate.grpc.front import Connections, ConnInfo
from regiongate.grpc.services import MoreServices, model_message
from regiongate.grpc.status import abort, metadata_of, upstream_error
from regiongate.objects.completions import Assembled, PreparedChat
from regiongate.objects.services import StatefulServices
from regiongate.pipeline.affinity import CONVERSATION_HEADERS
from regiongate.pipeline.caller import CLIENT_LOCATION, Caller, check_n, client_request_id
from regiongate.pipeline.catalog import find_model, visible_models
from regiongate.pipeline.continuation import HOPS_HEADER, OPT_OUT_HEADER, render_hops
from regiongate.pipeline.exchange import Inbound, Routed
from regiongate.pipeline.hedge import HEDGE_HEADER, opted_out
from regiongate.pipeline.routes import not_offered
from regiongate.pipeline.sse import iter_json_events
from regiongate.pipeline.tiering import TIER_HEADER
from regiongate.state.first_byte import BUDGET_HEADER, parse_budget_ms

SERVED = (
    "xai_api.Chat/GetCompletion, GetCompletionChunk, StartDeferredCompletion, GetDeferredCompletion, "
    "GetStoredCompletion, DeleteStoredCompletion; "
    "xai_api.Models/*; xai_api.Tokenize/TokenizeText; xai_api.Embedder/Embed; xai_api.Image/GenerateImage; "
    "xai_api.Video/GenerateVideo, ExtendVideo, GetDeferredVideo; "
    "xai_api.Auth/get_api_key_info"
)


class _BadEvent(Exception):
    pass


@dataclass(slots=True)
class Stored:
    """A chat call that stores its completion or continues a stored one (objects.completions)."""

    prep: PreparedChat
    inbound: Inbound


class XaiServices:
    def __init__(self, runtime: StatefulServices, conns: Connections) -> None:
        self.rt = runtime
        self.conns = conns
        self.callers = runtime.callers  # the REST listener's too: one config cache, one id sequence

    # --- who is calling, through which endpoint --------------------------------------------------------
    def _conn(self, context: Any) -> ConnInfo:
        info = self.conns.for_peer(context.peer())
        if info is None:
            raise ClientError(
                "This connection did not come through regiongate's gRPC port.",
                code="unknown_connection",
                status=403,
                type="permission_error",
            )
        if info.mixed is not None:
            raise ClientError(
                f"This connection carried requests for two hosts ('{info.authority}' and '{info.mixed}'); "
                "regiongate reads the endpoint once per connection. Use one channel per host.",
                code="mixed_authority",
                status=421,
            )
        return info

    def _caller(self, context: Any, md: dict[str, str]) -> Caller:
        info = self._conn(context)
        forwarded = [md["x-forwarded-for"]] if "x-forwarded-for" in md else []
        return self.callers.resolve(
            authorization=md.get("authorization"),
            how="'authorization: Bearer <key>' metadata",
            host=info.authority or "",
            peer=info.client[0] if info.client else None,
            explicit_location=md.get(CLIENT_LOCATION),
            forwarded=forwarded,
        )

    def _request_id(self) -> str:
        return self.callers.request_id()  # always ours; a client's x-request-id is only echoed

    async def _caller_or_abort(self, context: Any) -> Caller:
        """The caller of a call that needs nothing more than who and where; refusals end the call."""
        md = metadata_of(context)
        try:
            return self._caller(context, md)
        except RouteError as e:
            await abort(context, e, self._request_id())
            raise

    def inbound(
        self, context: Any, md: dict[str, str], rid: str, path: str, payload: dict[str, Any], stream: bool
    ) -> Inbound:
        """The internal request for one call of any service: who, through which endpoint, what."""
        caller = self._caller(context, md)
        if TIER_HEADER in md:  # the proto's field has no flex: metadata names any tier (validated later)
            payload["service_tier"] = md[TIER_HEADER]
        return Inbound(
            path,
            payload,
            orjson.dumps(payload),
            str(payload.get("model", "")),
            stream,
            caller.endpoint,
            caller.principal,
            rid,
            caller.location,
            explain=md.get("x-regiongate-explain") == "1",
            continuation=md.get(OPT_OUT_HEADER, "").lower() != "off",
            hedge=not opted_out(md.get(HEDGE_HEADER)),
            conversation=next((md[h] for h in CONVERSATION_HEADERS if md.get(h)), None),
            ttft_budget_ms=_budget(md),
            client_request_id=client_request_id(md.get("x-request-id")),
            # grpc.aio hands the loop one call per wake-up, so concurrent calls' responses rarely meet in
            # the loop iteration REST's share a signature in: a unary call's receipt may wait for the
            # next ones' ([control] receipt_window_us, pipeline/receipts.py); a stream's first byte not.
            receipt_window=not stream,
        )

    async def _route(
        self, request: chat_pb2.GetCompletionsRequest, context: Any, stream: bool
    ) -> tuple[Routed, str, str | None, Stored | None]:
        md = metadata_of(context)
        rid = self._request_id()
        client_rid = client_request_id(md.get("x-request-id"))
        try:
            payload = translate.chat_payload(request, stream)
            check_n(payload.get("n", 1))
            inbound = self.inbound(context, md, rid, "/chat/completions", payload, stream)
            stored: Stored | None = None
            previous = request.previous_response_id if request.HasField("previous_response_id") else None
            if request.store_messages or previous is not None:
                p = inbound.principal
                prep = await self.rt.completions.prepare(
                    payload, request.store_messages, previous, inbound.endpoint, p
                )
                inbound.endpoint, inbound.body = prep.endpoint, orjson.dumps(prep.payload)
                stored = Stored(prep, inbound)
            routed = await self.rt.gateway.dispatch(inbound)
            if stored is not None:
                self.rt.completions.name(stored.prep, inbound, routed)
        except RouteError as e:
            await abort(context, e, rid)
            raise  # unreachable: abort raises
        return routed, rid, client_rid, stored

    async def route_json(
        self, context: Any, path: str, payload: dict[str, Any]
    ) -> tuple[dict[str, Any], Routed, str]:
        """Route one non-streaming call and return the backend's JSON answer; every refusal ends the
        call with its status. The initial metadata (region, route, receipt) is sent before returning."""
        md = metadata_of(context)
        rid = self._request_id()
        try:
            routed = await self.rt.gateway.dispatch(self.inbound(context, md, rid, path, payload, False))
        except RouteError as e:
            await abort(context, e, rid)
            raise
        try:
            client_rid = client_request_id(md.get("x-request-id"))
            await context.send_initial_metadata(self._initial(routed, rid, client_rid))
            missing = not_offered(path, routed.status, routed.backend, routed.region)
            if missing is not None:
                await abort(context, missing, rid)
            if routed.status != 200:
                await abort(context, upstream_error(routed.status, routed.body), rid)
            obj = await _json_object(context, routed, rid)
            return obj, routed, rid
        finally:
            await routed.aclose()

    @staticmethod
    def _initial(routed: Routed, rid: str, client_rid: str | None) -> tuple[tuple[str, str], ...]:
        echo = (("x-client-request-id", client_rid),) if client_rid is not None else ()
        return (
            ("x-regiongate-region", routed.region),
            ("x-regiongate-route", routed.route),
            ("x-request-id", rid),
            *echo,
            *routed.headers,
        )

    # --- xai_api.Chat ------------------------------------------------------------------------------
    async def get_completion(
        self, request: chat_pb2.GetCompletionsRequest, context: Any
    ) -> chat_pb2.GetChatCompletionResponse:
        routed, rid, client_rid, stored = await self._route(request, context, stream=False)
        try:
            await context.send_initial_metadata(self._initial(routed, rid, client_rid))
            if routed.status != 200 or routed.chunks is not None:
                await abort(context, upstream_error(routed.status, routed.body), rid)
            obj = await _json_object(context, routed, rid)
            if stored is not None and stored.prep.store:
                obj["id"] = stored.prep.oid  # the response id the SDK fetches, deletes and continues from
                await self._keep(context, stored, routed, obj, rid)
            return translate.completion_response(obj, request.model)
        finally:
            await routed.aclose()

    async def get_completion_chunk(
        self, request: chat_pb2.GetCompletionsRequest, context: Any
    ) -> AsyncIterator[chat_pb2.GetChatCompletionChunk]:
        routed, rid, client_rid, stored = await self._route(request, context, stream=True)
        keeping = stored if stored is not None and stored.prep.store else None
        assembled = Assembled()
        try:  # from here on the stream owns a capacity lease: aclose() frees it on every exit path
            await context.send_initial_metadata(self._initial(routed, rid, client_rid))
            if routed.chunks is None:  # the backend refused with a plain (error) answer
                await abort(context, upstream_error(routed.status, routed.body), rid)
                return
            meta = translate.Meta(request.model, dict(routed.headers).get(TIER_HEADER, ""))
            buf = b""
            async for raw in routed.chunks:
                buf = buf + raw if buf else raw
                cut = buf.rfind(b"\n\n")
                if cut < 0:
                    continue
                events, buf = buf[: cut + 2], buf[cut + 2 :]
                for obj in self._events(events, routed.region):
                    if "error" in obj:
                        await abort(
                            context, upstream_error(502, orjson.dumps(obj)), rid, self._trailers(routed)
                        )
                    if keeping is not None:
                        obj["id"] = keeping.prep.oid
                        assembled.add(obj)
                    yield translate.completion_chunk(obj, meta)
            if buf.strip():  # a last event without its blank line
                for obj in self._events(buf + b"\n\n", routed.region):
                    if keeping is not None:
                        obj["id"] = keeping.prep.oid
                        assembled.add(obj)
                    yield translate.completion_chunk(obj, meta)
            if keeping is not None:  # stored before the client sees the end
                await self._keep(context, keeping, routed, assembled.completion(keeping.prep.oid), rid)
            context.set_trailing_metadata(self._trailers(routed))
        except _BadEvent as e:
            await abort(context, upstream_error(502, orjson.dumps({"error": str(e)})), rid)
        finally:
            await routed.aclose()

    @staticmethod
    def _trailers(routed: Routed) -> tuple[tuple[str, str], ...]:
        """Every backend that produced part of the answer, in order, with why it moved; for a stream that
        moved, also its receipt naming them (``routed.trailers``, filled as the stream ended)."""
        return tuple(routed.trailers) or ((HOPS_HEADER, render_hops(routed.hops)),)

    @staticmethod
    def _events(raw: bytes, region: str) -> list[dict[str, Any]]:
        try:
            return list(iter_json_events(raw))
        except orjson.JSONDecodeError:
            raise _BadEvent(f"The backend in {region} sent a stream event that is not JSON.") from None

    async def _keep(
        self, context: Any, stored: Stored, routed: Routed, obj: dict[str, Any], rid: str
    ) -> None:
        try:
            await self.rt.completions.keep(stored.prep, stored.inbound, routed, obj)
        except RouteError as e:  # a store that is down: say so rather than hand out an id that is not kept
            await abort(context, e, rid)

    async def get_stored_completion(
        self, request: chat_pb2.GetStoredCompletionRequest, context: Any
    ) -> chat_pb2.GetChatCompletionResponse:
        md = metadata_of(context)
        oid = request.response_id[:128]
        try:
            c = self._caller(context, md)
            doc, obj = await self.rt.completions.retrieve(request.response_id, c.endpoint, c.principal)
        except RouteError as e:
            await abort(context, e, oid)
            raise
        out = [("x-request-id", oid), ("x-regiongate-region", obj.processed_region)]
        if doc.get("receipt"):
            out.append(("x-regiongate-receipt", doc["receipt"]))
        await context.send_initial_metadata(tuple(out))
        completion = doc["completion"]
        return translate.completion_response(completion, str(completion.get("model", "")))

    async def delete_stored_completion(
        self, request: chat_pb2.DeleteStoredCompletionRequest, context: Any
    ) -> chat_pb2.DeleteStoredCompletionResponse:
        md = metadata_of(context)
        try:
            c = self._caller(context, md)
            await self.rt.completions.delete(request.response_id, c.endpoint, c.principal)
        except RouteError as e:
            await abort(context, e, request.response_id[:128])
            raise
        return chat_pb2.DeleteStoredCompletionResponse(response_id=request.response_id)

    # --- xai_api.Models ----------------------------------------------------------------------------
    def _language_model(self, m: Any) -> models_pb2.LanguageModel:
        return model_message(models_pb2.LanguageModel, m, models_pb2.TEXT)

    async def list_language_models(
        self, request: empty_pb2.Empty, context: Any
    ) -> models_pb2.ListLanguageModelsResponse:
        c = await self._caller_or_abort(context)
        views = visible_models(self.rt.fleet, c.endpoint, c.principal.access, self.rt.config.models)
        return models_pb2.ListLanguageModelsResponse(
            models=[self._language_model(m) for m in views if m.info.kind == "language"]
        )

    async def get_language_model(
        self, request: models_pb2.GetModelRequest, context: Any
    ) -> models_pb2.LanguageModel:
        md = metadata_of(context)
        rid = self._request_id()
        try:
            c = self._caller(context, md)
            m = find_model(
                self.rt.fleet,
                c.endpoint,
                c.principal.access,
                self.rt.config.models,
                request.name,
                kind="language",
                aliases=True,
            )
            return self._language_model(m)
        except RouteError as e:
            await abort(context, e, rid)
            raise

    # --- xai_api.Auth ------------------------------------------------------------------------------
    async def get_api_key_info(self, request: empty_pb2.Empty, context: Any) -> auth_pb2.ApiKey:
        c = await self._caller_or_abort(context)
        access = c.principal.access
        if access.grants is None:
            acls = ["api-key:model:*", "api-key:endpoint:*"]
        else:
            acls = [f"api-key:model:{g.model}" + (f"@{g.region}" if g.region else "") for g in access.grants]
        redacted = f"{c.key[:3]}...{c.key[-4:]}" if len(c.key) >= 12 else "***"
        return auth_pb2.ApiKey(
            redacted_api_key=redacted,
            name=c.principal.key_id,
            api_key_id=c.principal.key_id,
            team_id=c.principal.team,
            acls=acls,
        )

    # --- registration ------------------------------------------------------------------------------
    def implemented(self) -> dict[str, Callable[..., Any]]:
        return {
            **MoreServices(self).implemented(),
            "/xai_api.Chat/GetCompletion": self.get_completion,
            "/xai_api.Chat/GetCompletionChunk": self.get_completion_chunk,
            "/xai_api.Chat/GetStoredCompletion": self.get_stored_completion,
            "/xai_api.Chat/DeleteStoredCompletion": self.delete_stored_completion,
            "/xai_api.Models/ListLanguageModels": self.list_language_models,
            "/xai_api.Models/GetLanguageModel": self.get_language_model,
            "/xai_api.Auth/get_api_key_info": self.get_api_key_info,
        }


# Why each unserved service is not served (docs/api.md has the whole table).
WHY_NOT = {
    "xai_api.Files": "files live in xAI's Files API; regiongate stores no files",
    "collections.Collections": "collections are xAI's document store; regiongate keeps none",
    "xai_api.Documents": "document search runs over xAI's collections",
    "xai_api.BatchMgmt": "batches run inside xAI's service; use deferred completions (chat.defer) instead",
    "xai_api.Sample": "legacy text sampling; use xai_api.Chat",
    "xai_api.Chat/CompactContext": "context compaction runs inside xAI's service",
}


def _unimplemented(path: str, streaming_response: bool) -> Callable[..., Any]:
    method = path.lstrip("/")
    why = WHY_NOT.get(method) or WHY_NOT.get(method.split("/")[0], "not offered by an inference server")
    message = f"regiongate does not implement {method} ({why}); it serves {SERVED}."

    async def unary(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
        yield None  # pragma: no cover - makes this an async generator

    return streaming if streaming_response else unary


def service_handlers(services: XaiServices) -> dict[str, dict[str, Any]]:
    """Method handlers for every service in xai-sdk's protos: service name -> method name -> handler."""
    from xai_sdk import proto

    impl: dict[str, Callable[..., Awaitable[Any]] | Callable[..., AsyncIterator[Any]]] = (
        services.implemented()
    )
    out: dict[str, dict[str, Any]] = {}
    for mod_name in dir(proto):
        mod = getattr(proto, mod_name)
        if not mod_name.endswith("_pb2") or not hasattr(mod, "DESCRIPTOR"):
            continue
        for svc in mod.DESCRIPTOR.services_by_name.values():
            methods: dict[str, Any] = {}
            for m in svc.methods:
                path = f"/{svc.full_name}/{m.name}"
                req = message_factory.GetMessageClass(m.input_type)
                resp = message_factory.GetMessageClass(m.output_type)
                fn = impl.get(path) or _unimplemented(path, m.server_streaming)
                kind = (m.client_streaming, m.server_streaming)
                make = {
                    (False, False): grpc.unary_unary_rpc_method_handler,
                    (False, True): grpc.unary_stream_rpc_method_handler,
                    (True, False): grpc.stream_unary_rpc_method_handler,
                    (True, True): grpc.stream_stream_rpc_method_handler,
                }[kind]
                methods[m.name] = make(
                    fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
                )
            out[svc.full_name] = methods
    return out


async def _json_object(context: Any, routed: Routed, rid: str) -> dict[str, Any]:
    """The backend's answer as a JSON object; anything else ends the call with a 502's status."""
    try:
        obj = orjson.loads(routed.body)
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        err = upstream_error(502, b"")
        err.message = f"The backend in {routed.region} answered with a body that is not a JSON object."
        await abort(context, err, rid)
        raise AssertionError("unreachable: abort raises")
    return obj


def _budget(md: dict[str, str]) -> float | None:
    """The caller's own first-byte budget (``x-regiongate-ttft-budget-ms``), if it sent one."""
    try:
        return parse_budget_ms(md.get(BUDGET_HEADER))
    except ValueError as e:
        raise ClientError(str(e), code="invalid_value", param=BUDGET_HEADER) from None
