"""An OpenAI-compatible HTTP backend (vLLM, SGLang, llama.cpp, Ollama, TGI, a provider's regional API).

One pooled keep-alive aiohttp session per backend. Bytes are forwarded as they are: the request body
the gateway built and, for streams, the SSE bytes as they arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from regiongate.upstream.base import UpstreamCall, UpstreamFailure, UpstreamResponse

# Statuses that mean "this backend cannot serve it now": try the next candidate.
RETRYABLE = frozenset({429, 500, 502, 503, 504})


def _json_object(body: bytes) -> dict[str, Any] | None:
    # A 200 the client could not parse must not be relayed as a success: fail over instead.
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


class HttpUpstream:
    def __init__(
        self,
        id: str,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 2.0,
        first_byte_timeout_s: float = 30.0,
        idle_timeout_s: float = 60.0,
        total_timeout_s: float = 600.0,
    ) -> None:
        self.id = id
        self.base_url = base_url.rstrip("/")
        self.first_byte_timeout_s = first_byte_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._timeout = aiohttp.ClientTimeout(
            total=total_timeout_s, sock_connect=connect_timeout_s, connect=connect_timeout_s
        )
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: a session must be made inside the running loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def send(self, call: UpstreamCall) -> UpstreamResponse:
        headers = {**self._headers, "x-request-id": call.request_id}
        for k, v in call.headers:
            headers[k] = v
        try:
            # asyncio.timeout, not wait_for: no extra task per request on 3.11
            async with asyncio.timeout(self.first_byte_timeout_s):
                resp = await self._client().post(self.base_url + call.path, data=call.body, headers=headers)
        except TimeoutError:
            raise UpstreamFailure(self.id, f"no response within {self.first_byte_timeout_s:g}s") from None
        except aiohttp.ClientError as e:
            raise UpstreamFailure(self.id, f"connection failed: {type(e).__name__}: {e}") from None
        ctype = resp.headers.get("content-type", "application/json")
        if resp.status in RETRYABLE:
            resp.release()
            raise UpstreamFailure(self.id, f"answered HTTP {resp.status}")
        if call.stream and resp.status == 200:
            if ctype.startswith("text/event-stream"):
                return UpstreamResponse(200, ctype, chunks=self._relay(resp), closer=self._closer(resp))
            resp.close()  # a 200 that is not an event stream is garbage for a stream request
            raise UpstreamFailure(self.id, f"answered a stream request with {ctype.split(';')[0]}")
        try:
            async with asyncio.timeout(self.first_byte_timeout_s):
                body = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            resp.close()
            raise UpstreamFailure(self.id, f"body not received: {type(e).__name__}") from None
        parsed = None
        if resp.status == 200:
            parsed = _json_object(body)
            if parsed is None:
                raise UpstreamFailure(self.id, "answered 200 with a body that is not a JSON object")
        return UpstreamResponse(resp.status, ctype, body=body, parsed=parsed)

    @staticmethod
    def _closer(resp: aiohttp.ClientResponse):  # type: ignore[no-untyped-def]
        async def close() -> None:
            resp.close()

        return close

    async def _relay(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.content.iter_any():
                yield chunk
        finally:
            resp.release()

    async def probe(self, path: str, timeout_s: float) -> bool:
        """GET ``<base_url><path>`` on the pooled connection; True for any answer below 500."""
        headers = {k: v for k, v in self._headers.items() if k == "authorization"}
        try:
            async with asyncio.timeout(timeout_s):
                async with self._client().get(self.base_url + path, headers=headers) as resp:
                    await resp.read()
                    return resp.status < 500
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
