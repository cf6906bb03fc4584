"""The xAI services beyond chat, over the same gateway as REST: Tokenize, Embedder, Image, Video, the
embedding and image model lists, and deferred chat completions.

Each call goes through ``XaiServices.inbound`` (the one caller resolution for every gRPC service) and
``Gateway.dispatch`` (the same plan, grants, limits, receipts and usage as REST), to the backend route an
inference server offers: ``/tokenize`` (vLLM, llama.cpp: at the server root), ``/v1/embeddings``,
``/v1/images/generations``, ``/v1/videos/generations`` (and ``/extensions``; answered synchronously by the
backend, deferred by regiongate). A backend that answers 404 there does not offer that service: the call ends
UNIMPLEMENTED naming the backend and its region.
"""

from __future__ import annotations

import array
import base64
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from xai_sdk.proto import (
    chat_pb2,
    deferred_pb2,
    embed_pb2,
    image_pb2,
    models_pb2,
    tokenize_pb2,
    usage_pb2,
    video_pb2,
)

from regiongate.core import RouteError
from regiongate.core.errors import GatewayError
from regiongate.grpc import translate
from regiongate.grpc.status import abort, metadata_of
from regiongate.objects.deferred import DeferredResult
from regiongate.objects.services import StatefulServices
from regiongate.pipeline.caller import Caller
from regiongate.pipeline.catalog import ModelView, find_model, visible_models
from regiongate.pipeline.exchange import Inbound, Routed


class Core(Protocol):
    """What these services use of ``servicer.XaiServices``: the one caller resolution and routing."""

    rt: StatefulServices

    def inbound(
        self, context: Any, md: dict[str, str], rid: str, path: str, payload: dict[str, Any], stream: bool
    ) -> Inbound: ...

    async def route_json(
        self, context: Any, path: str, payload: dict[str, Any]
    ) -> tuple[dict[str, Any], Routed, str]: ...

    def _caller(self, context: Any, md: dict[str, str]) -> Caller: ...

    async def _caller_or_abort(self, context: Any) -> Caller: ...

    def _request_id(self) -> str: ...


_DEFERRED_STATUS = {
    "pending": deferred_pb2.PENDING,
    "done": deferred_pb2.DONE,
    "expired": deferred_pb2.EXPIRED,
    "failed": deferred_pb2.FAILED,
}
CHAT, VIDEO = "defer", "video"  # id prefixes of the two deferred kinds


def _unsupported(what: str) -> RouteError:
    return RouteError(what, code="unsupported_parameter", status=501)


def tokens(obj: dict[str, Any]) -> list[tokenize_pb2.Token]:
    """vLLM's answer (``tokens``: ids, ``token_strs``) or llama.cpp's (``tokens``: ``{id, piece}``)."""
    raw = obj.get("tokens")
    if not isinstance(raw, list):
        return []
    strs = obj.get("token_strs")
    out = []
    for i, t in enumerate(raw):
        if isinstance(t, dict):
            tid, piece = t.get("id"), t.get("piece")
        else:
            tid, piece = t, strs[i] if isinstance(strs, list) and i < len(strs) else None
        if not isinstance(tid, int):
            continue
        if isinstance(piece, list):  # llama.cpp sends a piece that is not valid UTF-8 as its bytes
            data = bytes(b for b in piece if isinstance(b, int) and 0 <= b < 256)
            text = data.decode("utf-8", "replace")
        else:
            text = piece if isinstance(piece, str) else ""
            data = text.encode()
        out.append(tokenize_pb2.Token(token_id=tid, string_token=text, token_bytes=data))
    return out


M = TypeVar("M")


def model_message(cls: Callable[..., M], m: ModelView, output: int) -> M:
    """A model as the xAI Models service describes it: text in, ``output`` out."""
    return cls(
        name=m.id,
        aliases=list(m.info.aliases),
        input_modalities=[models_pb2.TEXT],
        output_modalities=[output],
        created=Timestamp(seconds=m.info.created),
    )


class MoreServices:
    def __init__(self, core: Core) -> None:
        self.core = core

    @property
    def rt(self) -> StatefulServices:
        return self.core.rt

    # --- xai_api.Tokenize ---------------------------------------------------------------------------
    async def tokenize_text(
        self, request: tokenize_pb2.TokenizeTextRequest, context: Any
    ) -> tokenize_pb2.TokenizeTextResponse:
        # Both dialects' fields: vLLM reads prompt / return_token_strs, llama.cpp content / with_pieces.
        payload = {
            "model": request.model,
            "prompt": request.text,
            "content": request.text,
            "add_special_tokens": False,
            "return_token_strs": True,
            "with_pieces": True,
        }
        obj, _, _ = await self.core.route_json(context, "/tokenize", payload)
        return tokenize_pb2.TokenizeTextResponse(tokens=tokens(obj), model=request.model)

    # --- xai_api.Embedder ---------------------------------------------------------------------------
    async def embed(self, request: embed_pb2.EmbedRequest, context: Any) -> embed_pb2.EmbedResponse:
        b64 = request.encoding_format == embed_pb2.FORMAT_BASE64
        inputs = []
        for i, item in enumerate(request.input):
            if item.WhichOneof("input") != "string":
                await abort(
                    context,
                    _unsupported(
                        f"input[{i}]: image embeddings are not served; OpenAI-compatible backends embed text."
                    ),
                    "",
                )
            inputs.append(item.string)
        payload = {"model": request.model, "input": inputs, "encoding_format": "base64" if b64 else "float"}
        if request.user:
            payload["user"] = request.user
        obj, routed, rid = await self.core.route_json(context, "/embeddings", payload)
        out = []
        for i, d in enumerate(obj.get("data") or []):
            vec = d.get("embedding") if isinstance(d, dict) else None
            if isinstance(vec, str):
                fv = embed_pb2.FeatureVector(base64_array=vec)
            elif isinstance(vec, list):
                floats = [float(v) for v in vec if isinstance(v, int | float)]
                if b64:  # the backend ignored encoding_format: encode as the OpenAI API does (float32 LE)
                    fv = embed_pb2.FeatureVector(
                        base64_array=base64.b64encode(array.array("f", floats).tobytes()).decode()
                    )
                else:
                    fv = embed_pb2.FeatureVector(float_array=floats)
            else:
                continue
            index = d.get("index", i)
            out.append(embed_pb2.Embedding(index=index if isinstance(index, int) else i, embeddings=[fv]))
        return embed_pb2.EmbedResponse(
            id=rid,
            embeddings=out,
            usage=usage_pb2.EmbeddingUsage(num_text_embeddings=len(inputs)),
            model=request.model,
            system_fingerprint=f"fp_{routed.region}",
        )

    # --- xai_api.Image ------------------------------------------------------------------------------
    async def generate_image(
        self, request: image_pb2.GenerateImageRequest, context: Any
    ) -> image_pb2.ImageResponse:
        if request.HasField("image") or len(request.images) or request.HasField("storage_options"):
            await abort(
                context,
                _unsupported(
                    "Image editing (image, images) and storage_options are not served: OpenAI-compatible "
                    "backends generate from a prompt (/v1/images/generations)."
                ),
                "",
            )
        b64 = request.format == image_pb2.IMG_FORMAT_BASE64
        payload: dict[str, Any] = {
            "model": request.model,
            "prompt": request.prompt,
            "n": request.n or 1,
            "response_format": "b64_json" if b64 else "url",
        }
        if request.user:
            payload["user"] = request.user
        obj, _, _ = await self.core.route_json(context, "/images/generations", payload)
        images = []
        for d in obj.get("data") or []:
            if not isinstance(d, dict):
                continue
            if isinstance(d.get("b64_json"), str):
                # The SDK reads base64 images as data URLs (it splits at "base64,").
                images.append(
                    image_pb2.GeneratedImage(
                        base64="data:image/png;base64," + d["b64_json"], respect_moderation=True
                    )
                )
            elif isinstance(d.get("url"), str):
                images.append(image_pb2.GeneratedImage(url=d["url"], respect_moderation=True))
        return image_pb2.ImageResponse(images=images, model=request.model)

    # --- xai_api.Models: embedding and image generation models --------------------------------------
    async def _views(self, context: Any, kind: str) -> list[ModelView]:
        c = await self.core._caller_or_abort(context)
        views = visible_models(self.rt.fleet, c.endpoint, c.principal.access, self.rt.config.models)
        return [m for m in views if m.info.kind == kind]

    @staticmethod
    def _embedding_model(m: ModelView) -> models_pb2.EmbeddingModel:
        return model_message(models_pb2.EmbeddingModel, m, models_pb2.EMBEDDING)

    @staticmethod
    def _image_model(m: ModelView) -> models_pb2.ImageGenerationModel:
        return model_message(models_pb2.ImageGenerationModel, m, models_pb2.IMAGE)

    async def list_embedding_models(
        self, request: empty_pb2.Empty, context: Any
    ) -> models_pb2.ListEmbeddingModelsResponse:
        views = await self._views(context, "embedding")
        return models_pb2.ListEmbeddingModelsResponse(models=[self._embedding_model(m) for m in views])

    async def list_image_models(
        self, request: empty_pb2.Empty, context: Any
    ) -> models_pb2.ListImageGenerationModelsResponse:
        views = await self._views(context, "image")
        return models_pb2.ListImageGenerationModelsResponse(models=[self._image_model(m) for m in views])

    async def _one(self, context: Any, name: str, kind: str) -> ModelView:
        c = await self.core._caller_or_abort(context)
        try:
            infos = self.rt.config.models
            return find_model(
                self.rt.fleet, c.endpoint, c.principal.access, infos, name, kind=kind, aliases=True
            )
        except RouteError as e:
            await abort(context, e, "")
            raise

    async def get_embedding_model(
        self, request: models_pb2.GetModelRequest, context: Any
    ) -> models_pb2.EmbeddingModel:
        return self._embedding_model(await self._one(context, request.name, "embedding"))

    async def get_image_model(
        self, request: models_pb2.GetModelRequest, context: Any
    ) -> models_pb2.ImageGenerationModel:
        return self._image_model(await self._one(context, request.name, "image"))

    # --- xai_api.Chat: deferred completions ----------------------------------------------------------
    def _deferred(self) -> Any:
        d = self.rt.deferred
        if d is None:
            raise GatewayError(
                'Deferred completions need a state store; this gateway runs with [state] store = "none".',
                code="state_disabled",
                status=501,
            )
        return d

    async def _start(self, context: Any, path: str, payload: dict[str, Any], prefix: str) -> str:
        md = metadata_of(context)
        rid = self.core._request_id()
        try:
            inbound = self.core.inbound(context, md, rid, path, payload, False)
            oid: str = await self._deferred().start(inbound, prefix)
        except RouteError as e:
            await abort(context, e, rid)
            raise
        await context.send_initial_metadata((("x-request-id", oid),))
        return oid

    async def _result(self, context: Any, oid: str, prefix: str) -> DeferredResult:
        md = metadata_of(context)
        rid = oid[:128]
        try:
            c = self.core._caller(context, md)
            result: DeferredResult = await self._deferred().get(oid, c.endpoint, c.principal, prefix)
        except RouteError as e:
            await abort(context, e, rid)
            raise
        out: list[tuple[str, str]] = [("x-request-id", rid)]
        if result.processed_region:
            out.append(("x-regiongate-region", result.processed_region))
        if result.receipt:
            out.append(("x-regiongate-receipt", result.receipt))
        await context.send_initial_metadata(tuple(out))
        return result

    async def start_deferred(
        self, request: chat_pb2.GetCompletionsRequest, context: Any
    ) -> deferred_pb2.StartDeferredResponse:
        try:
            if request.HasField("previous_response_id") or request.store_messages:
                raise _unsupported(
                    "Deferred completions are stored as deferred results, not as stored completions: send "
                    "store_messages / previous_response_id with chat.sample or chat.stream."
                )
            payload = translate.chat_payload(request, False)
        except RouteError as e:
            await abort(context, e, "")
            raise
        return deferred_pb2.StartDeferredResponse(
            request_id=await self._start(context, "/chat/completions", payload, CHAT)
        )

    async def get_deferred(
        self, request: deferred_pb2.GetDeferredRequest, context: Any
    ) -> chat_pb2.GetDeferredCompletionResponse:
        result = await self._result(context, request.request_id, CHAT)
        if result.status == "failed":  # the chat SDK knows no FAILED status: end the call with the cause
            err = result.error or {}
            await abort(
                context,
                RouteError(
                    f"The deferred completion failed: {err.get('message', 'no detail')}",
                    code=str(err.get("code") or "deferred_failed"),
                    status=result.http_status or 502,
                ),
                request.request_id[:128],
            )
        resp = chat_pb2.GetDeferredCompletionResponse(status=_DEFERRED_STATUS[result.status])
        if result.result is not None:
            model = str(result.result.get("model", ""))
            resp.response.CopyFrom(translate.completion_response(result.result, model))
        return resp

    # --- xai_api.Video: generation and extension, deferred ---------------------------------------------
    async def generate_video(
        self, request: video_pb2.GenerateVideoRequest, context: Any
    ) -> deferred_pb2.StartDeferredResponse:
        payload: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
        if request.duration:
            payload["duration"] = request.duration
        if request.aspect_ratio:
            name = video_pb2.VideoAspectRatio.Name(request.aspect_ratio)  # VIDEO_ASPECT_RATIO_16_9 -> 16:9
            payload["aspect_ratio"] = name.removeprefix("VIDEO_ASPECT_RATIO_").replace("_", ":")
        if request.resolution:
            name = video_pb2.VideoResolution.Name(request.resolution)  # VIDEO_RESOLUTION_720P -> 720p
            payload["resolution"] = name.removeprefix("VIDEO_RESOLUTION_").lower()
        if request.HasField("image") and request.image.image_url:
            payload["image_url"] = request.image.image_url
        if request.HasField("video") and request.video.url:
            payload["video_url"] = request.video.url
        refs = [i.image_url for i in request.reference_images if i.image_url]
        if refs:
            payload["reference_image_urls"] = refs
        if len(refs) != len(request.reference_images) or (
            request.HasField("image") and request.image.file_id
        ):
            await abort(context, _unsupported("Images by file id need xAI's Files API; send image URLs."), "")
        oid = await self._start(context, "/videos/generations", payload, VIDEO)
        return deferred_pb2.StartDeferredResponse(request_id=oid)

    async def extend_video(
        self, request: video_pb2.ExtendVideoRequest, context: Any
    ) -> deferred_pb2.StartDeferredResponse:
        payload: dict[str, Any] = {
            "model": request.model,
            "prompt": request.prompt,
            "video_url": request.video.url,
        }
        if request.duration:
            payload["duration"] = request.duration
        oid = await self._start(context, "/videos/extensions", payload, VIDEO)
        return deferred_pb2.StartDeferredResponse(request_id=oid)

    async def get_deferred_video(
        self, request: video_pb2.GetDeferredVideoRequest, context: Any
    ) -> video_pb2.GetDeferredVideoResponse:
        result = await self._result(context, request.request_id, VIDEO)
        resp = video_pb2.GetDeferredVideoResponse(status=_DEFERRED_STATUS[result.status])
        obj = result.result
        if result.status == "failed":  # the video SDK reads FAILED with the error in the response
            err = result.error or {}
            resp.response.error.code = str(err.get("code") or "failed")
            resp.response.error.message = str(err.get("message") or "")
        elif obj is not None:
            raw = obj.get("video")
            video: dict[str, Any] = raw if isinstance(raw, dict) else {}
            duration = video.get("duration")
            resp.response.CopyFrom(
                video_pb2.VideoResponse(
                    video=video_pb2.GeneratedVideo(
                        url=str(video.get("url") or ""),
                        duration=duration if isinstance(duration, int) else 0,
                        respect_moderation=True,
                    ),
                    model=str(obj.get("model") or ""),
                    progress=100,
                )
            )
        return resp

    def implemented(self) -> dict[str, Callable[..., Any]]:
        return {
            "/xai_api.Tokenize/TokenizeText": self.tokenize_text,
            "/xai_api.Embedder/Embed": self.embed,
            "/xai_api.Image/GenerateImage": self.generate_image,
            "/xai_api.Models/ListEmbeddingModels": self.list_embedding_models,
            "/xai_api.Models/GetEmbeddingModel": self.get_embedding_model,
            "/xai_api.Models/ListImageGenerationModels": self.list_image_models,
            "/xai_api.Models/GetImageGenerationModel": self.get_image_model,
            "/xai_api.Chat/StartDeferredCompletion": self.start_deferred,
            "/xai_api.Chat/GetDeferredCompletion": self.get_deferred,
            "/xai_api.Video/GenerateVideo": self.generate_video,
            "/xai_api.Video/ExtendVideo": self.extend_video,
            "/xai_api.Video/GetDeferredVideo": self.get_deferred_video,
        }


__all__ = ["MoreServices", "tokens"]
