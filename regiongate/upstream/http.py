"""An OpenAI-compatible HTTP backend (vLLM, SGLang, llama.cpp, Ollama, TGI, a provider's regional API).

One pool of keep-alive HTTP/1.1 connections per backend (``regiongate.upstream.h1``). Bytes are forwarded
as they are: the request body the gateway built and, for streams, the SSE bytes as they arrive.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from regiongate.upstream.base import UpstreamCall, UpstreamFailure, UpstreamResponse, error_message
from regiongate.upstream.dialect import Dialect
from regiongate.upstream.h1 import H1Pool, H1Response, UpstreamHttpError

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9\-._~/?&=%]*$")
# Routes that inference servers serve at their root rather than under /v1 (vLLM, llama.cpp, SGLang; FastAPI's
# /openapi.json is llama-cpp-python's one route that answers during a generation, for probes).
ORIGIN_PATHS = frozenset({"/tokenize", "/detokenize", "/health", "/openapi.json"})
ERROR_BODY_MAX = 64 * 1024  # an error body longer than this is not read for its message
# Statuses that mean "this backend cannot serve it now": try the next candidate. Other 4xx are the
# request's own fault and are relayed as they are, never retried.
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


def _json_object(body: bytes) -> dict[str, Any] | None:
    # A 200 the client could not parse must not be relayed as a success: fail over instead.
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _header_value(v: str) -> str:
    # A value with CR or LF would let a caller inject headers into the upstream request.
    return v.replace("\r", " ").replace("\n", " ") if ("\r" in v or "\n" in v) else v


class HttpUpstream:
    def __init__(
        self,
        id: str,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 2.0,
        first_byte_timeout_s: float = 30.0,
        first_byte_floor_s: float = 5.0,
        first_byte_factor: float = 4.0,
        idle_timeout_s: float = 30.0,
        total_timeout_s: float = 600.0,
        dialect: Dialect | None = None,
    ) -> None:
        self.id = id
        self.dialect = dialect or Dialect()
        self.base_url = base_url.rstrip("/")
        self.first_byte_timeout_s = first_byte_timeout_s
        self.first_byte_floor_s = first_byte_floor_s
        self.first_byte_factor = first_byte_factor
        self.idle_timeout_s = idle_timeout_s
        self.total_timeout_s = total_timeout_s
        self._pool = H1Pool(self.base_url, connect_timeout_s=connect_timeout_s)
        fixed = f"host: {self._pool.authority}\r\n"
        if api_key:
            fixed += f"authorization: Bearer {_header_value(api_key)}\r\n"
        self._auth_headers = fixed
        # Everything in a POST head but the path, the request id, extra headers and the length, built once.
        self._post_headers = fixed + "content-type: application/json\r\n"

    def _head(self, method: str, path: str, headers: str) -> bytes:
        # Paths come from the listener's allow-list or the config; this check is the last line, so that
        # no future caller can put a space, CR/LF or a non-ASCII character on the request line.
        if not _SAFE_PATH.match(path):
            raise UpstreamFailure(self.id, "refused to send a path outside the safe character set")
        prefix = "" if path in ORIGIN_PATHS else self._pool.path_prefix
        return f"{method} {prefix}{path} HTTP/1.1\r\n{headers}\r\n".encode("latin-1")

    async def send(self, call: UpstreamCall) -> UpstreamResponse:
        headers = self._post_headers
        rid = self.dialect.request_id_value(call.request_id)
        if rid is not None:
            headers += f"x-request-id: {_header_value(rid)}\r\n"
        body = self.dialect.body(call.payload, call.body)
        for k, v in call.headers:
            headers += f"{_header_value(k)}: {_header_value(v)}\r\n"
        headers += f"content-length: {len(body)}\r\n"
        started = asyncio.get_running_loop().time()
        limit = call.first_byte_s or self.first_byte_timeout_s
        resp: H1Response | None = None
        # One deadline for the head and, for a non-streaming answer, its body: first_byte_s bounds the
        # whole answer there; a stream's chunks are then bounded by idle_s (the gateway) and total_s.
        # The connection keeps it (``H1Pool.request``): no timer per request.
        try:
            resp = await self._pool.request(self._head("POST", call.path, headers), body, started + limit)
            ctype = resp.content_type or "application/json"
            if resp.status in RETRYABLE:
                busy = resp.retry_after_s if resp.status == 429 else None
                # The backend's own words, for the client when no other backend answers.
                said = await resp.read() if resp.status >= 500 else b""
                resp.release()  # pooled again only if the error body was already read to its end
                raise UpstreamFailure(
                    self.id,
                    f"answered HTTP {resp.status}" + (f" (retry after {busy:g}s)" if busy else ""),
                    status=resp.status,
                    transient=resp.status >= 500,
                    busy_s=busy,
                    message=error_message(said[:ERROR_BODY_MAX]),
                )
            if call.stream and resp.status == 200:
                if ctype.startswith("text/event-stream"):
                    chunks = resp.stream(started + self.total_timeout_s)
                    return UpstreamResponse(200, ctype, chunks=chunks, closer=_closer(resp))
                resp.release()  # a 200 that is not an event stream is garbage for a stream request
                raise UpstreamFailure(self.id, f"answered a stream request with {ctype.split(';')[0]}")
            body = await resp.read()
        except (TimeoutError, UpstreamHttpError) as e:
            if resp is not None:
                resp.release()
                raise UpstreamFailure(self.id, f"body not received: {type(e).__name__}") from None
            if isinstance(e, TimeoutError):
                raise UpstreamFailure(self.id, f"no response within {limit:g}s") from None
            raise UpstreamFailure(self.id, f"connection failed: {e}", transient=True) from None
        parsed = None
        if resp.status == 200:
            parsed = _json_object(body)
            if parsed is None:
                raise UpstreamFailure(self.id, "answered 200 with a body that is not a JSON object")
        return UpstreamResponse(resp.status, ctype, body=body, parsed=parsed)

    def metrics_text(self, model: str) -> None:
        return None  # read from the backend's own /metrics by the load scraper

    async def probe(self, path: str, timeout_s: float) -> bool | None:
        """GET ``<base_url><path>`` on a pooled connection; True for any answer below 500, None when no
        answer came in time, False when it failed (refused, reset, 5xx)."""
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self._pool.request(self._head("GET", path, self._auth_headers))
                await resp.read()
                return resp.status < 500
        except TimeoutError:
            return None
        except (UpstreamHttpError, UpstreamFailure, OSError):
            return False

    async def aclose(self) -> None:
        self._pool.close()


def _closer(resp: H1Response) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        resp.release()

    return close
