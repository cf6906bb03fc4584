"""``regiongate sim-backend``: one simulated regional cluster served over HTTP as an OpenAI-compatible
server, so tests and benchmarks go through the real upstream path. ``mode`` injects faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson

from regiongate.asgi import Receive, Scope, Send, read_body, send_bytes, send_json, stream_response
from regiongate.upstream.base import UpstreamCall
from regiongate.upstream.sim_openai import openai_error
from regiongate.upstream.simulated import SimulatedEngine

MODES = ("ok", "hang", "error500", "garbage", "hang-stream", "stall-stream")


async def _stall(gen: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    yield await anext(gen)  # the first event, then silence with the connection open: a stalled engine
    await asyncio.Event().wait()


async def _silent() -> AsyncGenerator[bytes, None]:
    await asyncio.Event().wait()  # headers sent, then nothing: a stream that never yields its first byte
    yield b""


class SimServer:
    def __init__(
        self, engine: SimulatedEngine, models: list[str] | None = None, mode: str = "ok", hold: bool = False
    ) -> None:
        self.engine = engine
        self.models = models or []
        self.mode = mode
        # With ``hold``, requests wait before their first byte until POST /sim/release: tests make every
        # routing decision before any answer exists, so no timing can reorder them.
        self.gate = asyncio.Event()
        if not hold:
            self.gate.set()
        self.held = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path in ("/health", "/v1/health"):
            await send_json(send, 200, {"status": "ok", "region": self.engine.region})
        elif method == "GET" and path == "/metrics":
            text = "".join(self.engine.metrics_text(m) for m in (self.models or ["sim"]))
            text += (
                f"regiongate_sim_held {self.held}\nregiongate_sim_peak_running {self.engine.peak_running}\n"
            )
            await send_bytes(send, 200, text.encode(), b"text/plain; version=0.0.4")
        elif method == "GET" and path == "/v1/models":
            await asyncio.sleep(self.engine.rtt_s)  # emulated network round trip, as probes measure it
            await send_json(
                send, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}
            )
        elif method == "POST" and path == "/sim/release":
            self.gate.set()
            await send_json(send, 200, {"released": self.held})
        elif method == "POST" and path.startswith("/v1/"):
            await self._complete(path[3:], receive, send)
        else:
            await send_json(
                send,
                404,
                {
                    "error": {
                        "message": f"no route {method} {path}",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            )

    async def _complete(self, path: str, receive: Receive, send: Send) -> None:
        body = await read_body(receive, 64 * 1024 * 1024, None)
        if not self.gate.is_set():
            self.held += 1
            try:
                await self.gate.wait()
            finally:
                self.held -= 1
        if self.mode in ("hang",):
            await asyncio.Event().wait()  # accept and never answer
        if self.mode == "error500":
            await send_json(send, 500, openai_error("simulated failure", None, None, "server_error"))
            return
        if self.mode == "garbage":
            await send_bytes(send, 200, b"\x00not json at all", b"application/json")
            return
        try:
            payload: dict[str, Any] = orjson.loads(body)
        except orjson.JSONDecodeError:
            await send_json(send, 400, openai_error("invalid JSON", None, None))
            return
        if not isinstance(payload, dict):
            await send_json(send, 400, openai_error("The body must be a JSON object.", None))
            return
        stream = payload.get("stream") is True
        resp = await self.engine.send(UpstreamCall(path, body, payload, stream, ""))
        if resp.chunks is None:
            await send_bytes(send, resp.status, resp.body, resp.content_type.encode())
            return
        chunks = resp.chunks
        if self.mode == "hang-stream":
            chunks = _silent()
        elif self.mode == "stall-stream":
            chunks = _stall(chunks)
        await stream_response(receive, send, [(b"content-type", b"text/event-stream")], chunks, resp.aclose)
